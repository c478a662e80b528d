"""The Python API: load a small model trained here, read paths / PIL / NumPy / lists, attention, threads.

The tests train master-tiny for a few seconds on rendered words (`trained_tiny` in conftest.py, cached for
the session), so they control exactly what the model can read; the bundled model has its own test below.
"""

import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from wordimages import render_word

from conftest import WORDS, trained_tiny


@pytest.fixture
def rec(tiny_weights):
    import masterocr

    return masterocr.load(tiny_weights)


# ---- tests ----------------------------------------------------------------------------------------------

def test_import_masterocr_is_cheap():
    code = ("import sys, masterocr; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert callable(masterocr.load) and 'torch' not in sys.modules; "  # export folders need no torch
            "print(masterocr.Recognizer.__name__); assert 'torch' in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Recognizer"


def test_read_path_pil_numpy_and_lists(rec, tmp_path):
    paths = []
    for w in WORDS:
        paths.append(tmp_path / f"{w}.png")
        render_word(w).save(paths[-1])
    single = rec.read(str(paths[0]))
    assert single.text == WORDS[0]
    assert 0 < single.confidence <= 1
    assert len(single.char_probs) == len(single.text)
    # The sequence confidence includes the EOS step, so it is at most the product of the characters'.
    assert single.confidence <= np.prod(single.char_probs) + 1e-6
    assert rec.read(render_word("sun")).text == "sun"                    # PIL
    assert rec.read(np.asarray(render_word("road"))).text == "road"       # NumPy HxWx3 uint8
    assert rec.read(np.asarray(render_word("road").convert("L"))).text == "road"  # NumPy HxW
    many = rec.read([str(p) for p in paths], batch_size=3)
    assert [r.text for r in many] == WORDS
    # Batching does not change a reading.
    for r, p in zip(many, paths):
        one = rec.read(p)
        assert one.text == r.text and one.confidence == pytest.approx(r.confidence, rel=1e-4, abs=1e-6)


def test_attention_per_character(rec):
    r = rec.read(render_word("home"))
    hf, wf = rec.model.feature_size(*rec.img_size)
    assert r.attention.shape == (4, hf, wf)
    # Cross-attention rows are softmax distributions over the memory.
    np.testing.assert_allclose(r.attention.reshape(4, -1).sum(1), 1.0, atol=1e-4)
    # Reading left to right: the attention's centre of mass moves right from the first to the last char.
    cols = np.arange(wf)
    centres = [(a.sum(0) * cols).sum() / a.sum() for a in r.attention]
    assert centres[-1] > centres[0]


def test_bad_inputs(rec, tmp_path):
    from masterocr.data.image import ImageError

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(ImageError, match="broken.png"):
        rec.read(str(bad))
    with pytest.warns(UserWarning, match="broken.png"):
        out = rec.read([render_word("cat"), str(bad), render_word("dog")])
    assert [out[0].text, out[2].text] == ["cat", "dog"] and out[0].ok and out[2].ok
    assert not out[1].ok and "broken.png" in out[1].error and out[1].text == "" and out[1].confidence == 0.0
    with pytest.raises(ImageError, match="broken.png"):
        rec.read([str(bad)], on_error="raise")
    with pytest.raises(ValueError, match="on_error"):
        rec.read(str(bad), on_error="ignore")


def test_reads_from_threads_match_sequential(rec):
    images = [render_word(w) for w in WORDS]
    expected = [r.text for r in rec.read(images)]
    results: dict[int, list[str]] = {}
    errors = []

    def work(k):
        try:
            order = images[k:] + images[:k]
            results[k] = [r.text for r in rec.read(order, batch_size=2)]
        except Exception as e:  # surfaced below; a thread's exception would otherwise be lost
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k, texts in results.items():
        assert texts == expected[k:] + expected[:k]


def test_beam_and_to(tiny_weights):
    import masterocr

    rec = masterocr.load(tiny_weights, decode_method="beam", beam_width=3)
    assert rec.to("cpu") is rec and rec.device.type == "cpu"
    assert [r.text for r in rec.read([render_word(w) for w in WORDS])] == WORDS
    if torch.cuda.is_available():
        rec.to("cuda")
        assert rec.read(render_word("blue")).text == "blue"


def test_bf16_autocast_option(tiny_weights):
    import masterocr

    fp32 = masterocr.load(tiny_weights)
    bf16 = masterocr.load(tiny_weights, precision="bf16")
    images = [render_word(w) for w in WORDS]
    a, b = fp32.read(images), bf16.read(images)
    assert [r.text for r in b] == [r.text for r in a] == WORDS
    for x, y in zip(a, b):
        assert y.confidence == pytest.approx(x.confidence, abs=0.05)
    with pytest.raises(ValueError, match="precision"):
        masterocr.load(tiny_weights, precision="int4")


def test_default_model_and_missing_bundle(tiny_weights, tmp_path, monkeypatch):
    import masterocr
    from masterocr import weights

    monkeypatch.setattr(weights, "BUNDLED_DIR", tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="no model is bundled.*path"):
        masterocr.load()
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "master-small.safetensors").write_bytes(tiny_weights.read_bytes())
    monkeypatch.setattr(weights, "BUNDLED_DIR", bundle)
    assert masterocr.load().read(render_word("open")).text == "open"
    assert masterocr.load("master-small").read(render_word("tree")).text == "tree"


def test_attention_figure(rec):
    from masterocr.recognizer import attention_figure, heat_colors

    img = render_word("road", margin=12)  # wide enough that the picture reaches past the label column
    r = rec.read(img)
    fig = attention_figure(img, r, rec.img_size, rec.keep_aspect, row_height=48)
    assert fig.mode == "RGB"
    assert fig.height == (48 + 2) * (len(r.text) + 1)
    # Each character row differs from the plain image: the heat map is drawn over it.
    arr = np.asarray(fig)
    top, row1 = arr[:48, 110:], arr[50:98, 110:]
    assert np.abs(top.astype(int) - row1.astype(int)).mean() > 5
    colors = heat_colors(np.array([[0.0, 1.0]]))
    assert colors[0, 0, 2] > colors[0, 0, 0] and colors[0, 1, 0] > colors[0, 1, 2]  # cold blue, hot red


def test_rotation_transform():
    from masterocr.recognizer import rotate_image

    img = Image.new("RGB", (30, 10))
    assert rotate_image(img, 90).size == (10, 30)
    assert rotate_image(img, 180).size == (30, 10)
    assert rotate_image(img, 0) is img
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    rotated = np.asarray(rotate_image(Image.fromarray(arr), 90))
    np.testing.assert_array_equal(rotated, np.rot90(arr))          # counter-clockwise, as PARSeq's test
    with pytest.raises(ValueError, match="rotation"):
        rotate_image(img, 45)


def test_keep_aspect_from_weights_metadata(tmp_path):
    import masterocr
    from masterocr.weights import save_weights

    model_cfg, state = trained_tiny()
    plain, marked = tmp_path / "plain.safetensors", tmp_path / "marked.safetensors"
    save_weights(state, model_cfg, plain)
    save_weights(state, model_cfg, marked, extra={"keep_aspect": True})
    assert masterocr.load(plain).keep_aspect is False                   # MASTER stretches by default
    assert masterocr.load(marked).keep_aspect is True
    assert masterocr.load(marked, keep_aspect=False).keep_aspect is False  # an explicit choice wins


@pytest.mark.parametrize("name", ["master-small", "parseq", "crnn-small"])
def test_bundled_model_reads_the_examples(name):
    """Each shipped model reads the README's example images (rendered by our engine, never trained on); the
    model cards say 7, 7 and 8 of the 8."""
    from pathlib import Path

    import masterocr
    from masterocr.charset import protocol_36
    from masterocr.weights import bundled_names

    if name not in bundled_names():
        pytest.skip(f"no bundled {name}")
    examples = Path(__file__).resolve().parents[1] / "examples"
    rows = [line.split("\t") for line in (examples / "labels.tsv").read_text().splitlines()]
    results = masterocr.load(name).read([str(examples / file) for file, _ in rows])
    correct = sum(protocol_36(r.text) == protocol_36(label) for r, (_, label) in zip(results, rows))
    assert correct >= len(rows) - 1, [r.text for r in results]
