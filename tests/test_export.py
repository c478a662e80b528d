"""Export to ONNX and the torch-free runtime: graphs pass the checker and carry their metadata, ONNX Runtime
reads exactly what torch reads (tokens, probabilities, attention; greedy with dropped rows, beam, another
width), the runtime never imports torch, int8 exports read, and bad folders or inputs fail naming the file.

One fp32 and one int8 export of the tiny model trained in conftest.py are made per module (a few seconds each
on a quiet machine); the tests share them.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from wordimages import render_word

from conftest import WORDS

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

OTHER_WORDS = ["sun", "cab", "tre", "opendog", "x"]  # unseen or odd words: the model reads something else


def _cli(*argv: str) -> int:
    from masterocr.cli.main import main

    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def export_dir(tiny_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny"
    assert _cli("export", tiny_weights, "-o", out) == 0
    return out


@pytest.fixture(scope="module")
def train_images(tmp_path_factory):
    """A labels.tsv folder of rendered words, standing in for a training split."""
    root = tmp_path_factory.mktemp("data") / "train"
    (root / "images").mkdir(parents=True)
    lines = []
    for i, word in enumerate(WORDS + OTHER_WORDS):
        render_word(word).save(root / "images" / f"{i}.png")
        lines.append(f"images/{i}.png\t{word}")
    (root / "labels.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def int8_dir(export_dir, train_images, tmp_path_factory):
    """The fp32 export quantized (`masterocr export` of weights with --int8 quantizes the same way after
    exporting; starting from the folder skips a second torch export)."""
    out = tmp_path_factory.mktemp("export") / "tiny-int8"
    assert _cli("export", export_dir, "-o", out, "--int8", "--calibration", train_images,
                "--calibration-count", 16) == 0
    return out


def _metadata(path: Path) -> dict:
    model = onnx.load(str(path))
    return json.loads({p.key: p.value for p in model.metadata_props}["masterocr"])


def _set_metadata(path: Path, **changes) -> None:
    from masterocr.export import write_metadata

    write_metadata(path, {**_metadata(path), **changes})


def _images(words, size=(32, 64)) -> torch.Tensor:
    from masterocr.data.image import ImageTransform

    transform = ImageTransform(*size)
    return torch.stack([transform(render_word(w)) for w in words])  # (B, 3, H, W)


# ---- export ---------------------------------------------------------------------------------------------

def test_export_writes_checked_graphs_with_metadata(export_dir, tiny_weights):
    from masterocr.weights import read_model_config

    cfg = read_model_config(tiny_weights)
    encoder, step = export_dir / "encoder.onnx", export_dir / "decoder_step.onnx"
    for path in (encoder, step):
        onnx.checker.check_model(str(path), full_check=True)
    meta = _metadata(encoder)
    assert meta["role"] == "encoder" and _metadata(step)["role"] == "decoder_step"
    assert meta["graphs"] == {"encoder": "encoder.onnx", "decoder_step": "decoder_step.onnx"}
    assert meta["model_name"] == "tiny" and meta["family"] == "master" and meta["decoding"] == "autoregressive"
    assert meta["charset"] == "0123456789abcdefghijklmnopqrstuvwxyz" and meta["max_label_length"] == 8
    assert meta["img_size"] == [32, 64] and meta["keep_aspect"] is False and meta["in_channels"] == 3
    assert (meta["mean"], meta["std"], meta["pad"], meta["width_step"]) == (0.5, 0.5, "zero", 0)
    assert meta["max_steps"] == 9 and meta["num_classes"] == 37
    assert meta["decoding_defaults"] == {"method": "greedy", "beam_width": 5, "refine_iters": 0}
    assert meta["decoder"]["kind"] == "transformer" and meta["cache"] == "concat"
    assert meta["precision"] == "fp32" and meta["opset"] == 18 and meta["model_config"]["d_model"] == cfg["d_model"]
    assert meta["width_range"][0] <= 64 <= meta["width_range"][1] and meta["feature_height"] == 4
    # Dynamic batch and width in the graphs themselves.
    images = onnx.load(str(encoder)).graph.input[0].type.tensor_type.shape.dim
    assert images[0].dim_param and images[3].dim_param and images[2].dim_value == 32


def test_export_refusals(tiny_weights, tmp_path, capsys):
    from masterocr.export import ExportError, exporter_for

    with pytest.raises(ExportError, match="'nosuch' cannot be exported.*exportable models: crnn, master, parseq, "
                                          "seq2seq, trba, vitstr"):
        exporter_for("nosuch")
    assert _cli("export", tiny_weights, "-o", tmp_path / "x", "--opset", "9") == 2
    assert "opset 9 is not supported" in capsys.readouterr().err
    test_split = tmp_path / "IIIT5K" / "test"
    test_split.mkdir(parents=True)
    render_word("cat").save(test_split / "a.png")
    assert _cli("export", tiny_weights, "-o", tmp_path / "y", "--int8", "--calibration", test_split) == 2
    assert "looks like a test split" in capsys.readouterr().err


# ---- the runtime reads what torch reads ------------------------------------------------------------------

@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_runtime_matches_torch(export_dir, tiny_weights, method):
    import masterocr
    from masterocr.decoding import decode

    torch_rec = masterocr.load(tiny_weights, decode_method=method)
    rec = masterocr.load(export_dir, decode_method=method)
    assert type(rec).__name__ == "OnnxRecognizer"
    words = WORDS + OTHER_WORDS  # ends at different steps: greedy drops the finished rows on the way
    images = _images(words)
    ids, probs, _, attention = rec.decode(images.numpy())
    with torch.inference_mode():
        ref = decode(torch_rec.model, images, method=method)
    np.testing.assert_array_equal(ids, ref.token_ids.numpy())
    np.testing.assert_allclose(probs, ref.probs.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(attention, ref.attention.numpy(), atol=1e-4, rtol=0)
    got, want = rec.read([render_word(w) for w in words]), torch_rec.read([render_word(w) for w in words])
    assert [r.text for r in got] == [r.text for r in want]
    assert [r.text for r in got][: len(WORDS)] == WORDS
    for g, w in zip(got, want):
        assert g.confidence == pytest.approx(w.confidence, abs=1e-4)
        np.testing.assert_allclose(g.char_probs, w.char_probs, atol=1e-4)
        assert g.attention.shape == w.attention.shape


def test_runtime_other_width(export_dir, tiny_weights):
    import masterocr
    from masterocr.decoding import decode

    rec = masterocr.load(export_dir, width=96)
    assert rec.img_size == (32, 96)
    images = _images(WORDS, (32, 96))
    ids, probs, _, attention = rec.decode(images.numpy())
    with torch.inference_mode():
        ref = decode(masterocr.load(tiny_weights).model, images)
    np.testing.assert_array_equal(ids, ref.token_ids.numpy())
    np.testing.assert_allclose(probs, ref.probs.numpy(), atol=1e-4, rtol=0)
    assert attention.shape[2:] == (4, 24)
    with pytest.raises(ValueError, match="width 100000: this export accepts widths"):
        masterocr.load(export_dir, width=100000)


def test_runtime_bad_inputs_like_torch(export_dir, tiny_weights, tmp_path):
    import masterocr
    from masterocr.data.image import ImageError

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"this is not a png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    inputs = [render_word("cat"), str(bad), str(tmp_path / "missing.png"), render_word("dog"), str(empty),
              b"words/cat.png"]  # bytes that look like a path get the same hint
    results = []
    for rec in (masterocr.load(export_dir), masterocr.load(tiny_weights)):
        with pytest.raises(ImageError, match="broken.png") as single:
            rec.read(str(bad))
        with pytest.warns(UserWarning):
            many = rec.read(inputs, batch_size=2)
        results.append(([(r.text, r.error) for r in many], str(single.value)))
        with pytest.raises(ImageError, match="broken.png"):
            rec.read(inputs, on_error="raise")
        assert rec.predict_batch([rec.preprocess(render_word("home"))])[0].text == "home"
    assert results[0] == results[1]
    assert [t for t, _ in results[0][0]] == ["cat", "", "", "dog", "", ""]
    assert "pass its path as str" in results[0][0][-1][1]


def test_runtime_orientation_auto_like_torch(export_dir, tiny_weights, tmp_path, capsys):
    """orientation="auto" on an export folder: each image read in its four turns, the most confident kept, as
    the torch Recognizer with the same weights does (same readings, turns, confidences)."""
    import masterocr
    from masterocr.data.image import rotate_image

    turns = [0, 90, 180, 270]
    sources = [rotate_image(render_word(w), t) for w, t in zip(WORDS[:4], turns)]  # photos turned by t
    rec, torch_rec = (masterocr.load(m, orientation="auto") for m in (export_dir, tiny_weights))
    assert "orientation=auto" in repr(rec)
    with pytest.warns(UserWarning, match="not an image"):
        got = rec.read(sources + [b"not an image"], batch_size=3)
    want = torch_rec.read(sources, batch_size=3)
    assert [(r.text, r.orientation) for r in got[:4]] == [(r.text, r.orientation) for r in want]
    assert [(r.text, r.orientation) for r in got[:4]] == [(w, (360 - t) % 360) for w, t in zip(WORDS, turns)]
    assert [r.confidence for r in got[:4]] == pytest.approx([r.confidence for r in want], abs=1e-4)
    assert not got[4].ok  # a bad input among turned ones still fails alone
    assert masterocr.load(export_dir).read(sources[1]).text != WORDS[1]  # upright reading misses the turn
    with pytest.raises(ValueError, match="orientation 'sideways'"):
        masterocr.load(export_dir, orientation="sideways")
    turned = tmp_path / "turned.png"
    sources[3].save(turned)
    assert _cli("read", turned, "--model", export_dir, "--orientation", "auto", "--json") == 0
    record = json.loads(capsys.readouterr().out.strip())
    assert (record["text"], record["orientation"]) == (WORDS[3], 90)


def test_serve_onnx_backend(export_dir, tiny_weights):
    from masterocr.serve.backends import BACKENDS, load_recognizer, model_display_name

    assert "onnx" in BACKENDS
    rec = load_recognizer(str(export_dir), "onnx")
    assert rec.predict_batch([rec.preprocess(render_word("tree"))])[0].text == "tree"
    assert model_display_name(str(export_dir)) == "tiny"
    with pytest.raises(ValueError, match="the onnx backend serves an export folder"):
        load_recognizer(str(tiny_weights), "onnx")


def test_load_options(export_dir):
    import masterocr

    rec = masterocr.load(export_dir, decode_method="beam", beam_width=3, batch_size=4, threads=1)
    assert (rec.decode_method, rec.beam_width, rec.batch_size) == ("beam", 3, 4)
    with pytest.raises(ValueError, match="precision 'int8' cannot be chosen at load time"):
        masterocr.load(export_dir, precision="int8")


# ---- the command line ------------------------------------------------------------------------------------

def test_cli_read_and_eval_with_an_export(export_dir, train_images, tmp_path, capsys):
    paths = []
    for w in WORDS[:3]:
        paths.append(tmp_path / f"{w}.png")
        render_word(w).save(paths[-1])
    assert _cli("read", *paths, "--model", export_dir) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[1] for line in lines] == WORDS[:3]
    assert _cli("read", paths[0], "--model", export_dir, "--backend", "torch") == 2
    assert "runs on the onnx backend" in capsys.readouterr().err
    assert _cli("eval", export_dir, "--data", train_images, "--no-progress", "--output", tmp_path / "ev") == 0
    assert "| data" in capsys.readouterr().out  # the table's row, named after the folder above train/
    row = json.loads((tmp_path / "ev" / "results.json").read_text())["results"][0]
    assert row["num_samples"] == len(WORDS) + len(OTHER_WORDS) and row["failed"] == 0
    assert row["accuracy"] >= len(WORDS) / row["num_samples"]  # the trained words at least


# ---- int8 ------------------------------------------------------------------------------------------------

def test_int8_export_quantizes_and_reads(int8_dir, export_dir):
    import masterocr

    meta = _metadata(int8_dir / "encoder.onnx")
    assert meta["precision"] == "int8" and meta["quantization"]["conv"].startswith("static int8")
    ops = {n.op_type for n in onnx.load(str(int8_dir / "encoder.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # the convolutions, statically
    step_ops = {n.op_type for n in onnx.load(str(int8_dir / "decoder_step.onnx")).graph.node}
    assert "MatMulInteger" in step_ops or "DynamicQuantizeMatMul" in step_ops
    assert (int8_dir / "encoder.onnx").stat().st_size < 0.6 * (export_dir / "encoder.onnx").stat().st_size
    rec = masterocr.load(int8_dir)
    texts = [r.text for r in rec.read([render_word(w) for w in WORDS])]
    assert sum(t == w for t, w in zip(texts, WORDS)) >= len(WORDS) - 1, texts


def test_int8_convolutions_only(export_dir, train_images, tmp_path, capsys):
    """--int8-ops conv: the calibrated convolutions int8, the attention projections and the step fp32."""
    import masterocr

    out = tmp_path / "conv-int8"
    assert _cli("export", export_dir, "-o", out, "--int8", "--int8-ops", "conv", "--calibration", train_images,
                "--calibration-count", 16) == 0
    meta = _metadata(out / "encoder.onnx")
    assert meta["quantization"]["summary"] == "fp32 MatMul, int8 Conv"
    encoder_ops = {n.op_type for n in onnx.load(str(out / "encoder.onnx")).graph.node}
    step_ops = {n.op_type for n in onnx.load(str(out / "decoder_step.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "MatMul"} <= encoder_ops
    assert not (encoder_ops | step_ops) & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}
    texts = [r.text for r in masterocr.load(out).read([render_word(w) for w in WORDS])]
    assert sum(t == w for t, w in zip(texts, WORDS)) >= len(WORDS) - 1, texts
    capsys.readouterr()
    assert _cli("export", export_dir, "-o", tmp_path / "x", "--int8", "--int8-ops", "conv") == 2
    assert "--int8-ops conv quantizes only the convolutions" in capsys.readouterr().err


# ---- no torch --------------------------------------------------------------------------------------------

BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        top = name.split(".")[0]
        if top in ("torch", "lightning", "pytorch_lightning", "onnx") or name.startswith("masterocr.models") \\
                or name.startswith("masterocr.export"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
sys.meta_path.insert(0, Block())
"""


def test_runtime_never_imports_torch(export_dir, tmp_path):
    paths = []
    for w in WORDS[:3]:
        paths.append(str(tmp_path / f"{w}.png"))
        render_word(w).save(paths[-1])
    code = BLOCK_TORCH + f"""
import masterocr
rec = masterocr.load({str(export_dir)!r})
print(",".join(r.text for r in rec.read({paths!r})))
import importlib.util
if importlib.util.find_spec("openvino"):  # the bf16 engine is torch-free too
    rec = masterocr.load({str(export_dir)!r}, precision="bf16-checked", check_margin=1.0)
print(",".join(r.text for r in rec.read({paths!r})))
from masterocr.data.image import load_image, rotate_image
turned = masterocr.load({str(export_dir)!r}, orientation="auto").read(rotate_image(load_image({paths[0]!r}), 90))
print(turned.text, turned.orientation)
from masterocr.cli.main import main
code = main(["read", *{paths!r}, "--model", {str(export_dir)!r}, "--json"])
assert code == 0, code
code = main(["data", "inspect", "x"])
assert code == 2, code
bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "onnx") or m.startswith("masterocr.models")]
assert not bad, bad
print("clean")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == lines[1] == ",".join(WORDS[:3])
    assert lines[2] == f"{WORDS[0]} 270"  # orientation search, torch-free too
    assert [json.loads(line)["text"] for line in lines[3:6]] == WORDS[:3]
    assert lines[-1] == "clean"


# ---- bad export folders ----------------------------------------------------------------------------------

@pytest.fixture
def broken(export_dir, tmp_path):
    """A fresh copy of the export to damage."""
    copy = tmp_path / "copy"
    shutil.copytree(export_dir, copy)
    return copy


def _load_error(folder) -> str:
    from masterocr.runtime import ExportFolderError, load

    with pytest.raises(ExportFolderError) as e:
        load(folder)
    return str(e.value)


def test_missing_graph(broken):
    (broken / "decoder_step.onnx").unlink()
    assert "decoder_step.onnx: missing" in _load_error(broken)
    (broken / "encoder.onnx").unlink()
    assert "no encoder.onnx or model.onnx" in _load_error(broken)


def test_mismatched_graph(broken, int8_dir):
    shutil.copy(int8_dir / "decoder_step.onnx", broken / "decoder_step.onnx")
    message = _load_error(broken)
    assert "decoder_step.onnx: does not belong with encoder.onnx" in message and "export_id" in message
    shutil.copy(broken / "encoder.onnx", broken / "decoder_step.onnx")  # the wrong graph under the right name
    assert "decoder_step.onnx: holds the 'encoder' graph" in _load_error(broken)


def test_wrong_metadata(broken):
    encoder = broken / "encoder.onnx"
    _set_metadata(encoder, format_version=99)
    assert "encoder.onnx: format version 99" in _load_error(broken)
    _set_metadata(encoder, format_version=1, opset=5)
    assert "encoder.onnx: opset 5 is not supported" in _load_error(broken)
    _set_metadata(encoder, opset=18, decoding="ctc-beam")
    assert "encoder.onnx: decoding 'ctc-beam'" in _load_error(broken)
    model = onnx.load(str(encoder))
    del model.metadata_props[:]
    onnx.save(model, str(encoder))
    assert "encoder.onnx: not a masterocr export" in _load_error(broken)
    encoder.write_bytes(b"not a graph")
    assert "encoder.onnx: ONNX Runtime cannot load this graph" in _load_error(broken)


# ---- bf16 through OpenVINO, and bf16-checked -------------------------------------------------------------

def test_cli_precision_choices_follow_the_runtime():
    """cli/read.py spells the choices out so that --help imports nothing: they must stay the runtime's (int8 is a
    property of an export, not a choice)."""
    from masterocr.cli.read import PRECISIONS as CLI
    from masterocr.runtime.recognizer import PRECISIONS as RUNTIME

    assert set(CLI) == set(RUNTIME) - {"int8"}


def test_bf16_checked_reads_fp32s_words(export_dir, tmp_path, capsys):
    pytest.importorskip("openvino")
    import masterocr

    words = WORDS + OTHER_WORDS
    sources = [render_word(w) for w in words]
    want = [r.text for r in masterocr.load(export_dir).read(sources)]
    fast = masterocr.load(export_dir, precision="bf16")
    assert "bf16" in repr(fast) and [r.text for r in fast.read(sources)][: len(WORDS)] == WORDS
    checked = masterocr.load(export_dir, precision="bf16-checked", check_margin=1.0)
    assert [r.text for r in checked.read(sources)] == want
    assert checked.rows_read >= len(words) and checked.rows_reread > 0
    paths = []
    for i, image in enumerate(sources[:3]):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    capsys.readouterr()
    assert _cli("read", *paths, "--model", export_dir, "--precision", "bf16-checked") == 0
    assert [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()] == words[:3]


def test_bf16_refusals(export_dir, int8_dir, tiny_weights, monkeypatch, tmp_path, capsys):
    import masterocr

    pytest.importorskip("openvino")
    with pytest.raises(ValueError, match="reads an fp32 export; this one holds int8"):
        masterocr.load(int8_dir, precision="bf16")
    with pytest.raises(ValueError, match="beam search ranks whole hypotheses"):
        masterocr.load(export_dir, precision="bf16-checked", decode_method="beam")
    with pytest.raises(ValueError, match="check_margin 1.5"):
        masterocr.load(export_dir, precision="bf16-checked", check_margin=1.5)
    with pytest.raises(ValueError, match="precision 'fp16': choose one of"):
        masterocr.load(export_dir, precision="fp16")
    with pytest.raises(ValueError, match="runs on the ONNX runtime"):
        masterocr.load(tiny_weights, precision="bf16-checked")
    render_word(WORDS[0]).save(tmp_path / "word.png")
    assert _cli("read", tmp_path / "word.png", "--model", tiny_weights, "--backend", "torch",
                "--precision", "bf16-checked") == 2
    assert "runs on the onnx backend, not torch" in capsys.readouterr().err
    import masterocr.runtime.openvino as engine

    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    monkeypatch.setattr(engine, "_CORE", [])
    with pytest.raises(ImportError, match="needs OpenVINO, which is not installed: pip install openvino"):
        masterocr.load(export_dir, precision="bf16")
    capsys.readouterr()
    assert _cli("read", tmp_path / "word.png", "--model", export_dir, "--precision", "bf16") == 2
    assert "error: bf16 reading on the runtime needs OpenVINO" in capsys.readouterr().err
