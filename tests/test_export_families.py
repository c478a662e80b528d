"""Export of every model family besides MASTER (tests/test_export.py covers MASTER and what the runtime shares):
PARSeq, ViTSTR, CRNN, TRBA and seq2seq. Their graphs pass the ONNX checker and carry their metadata; ONNX
Runtime reads exactly what torch reads in every decode mode the family has (tokens identical, probabilities,
confidences and attention within 1e-4); int8 exports read; the runtime reads them without torch; options a
family lacks are refused as torch refuses them; the CTC confidence equals torch's ctc_loss.

One tiny model per family, exported once per module: random weights whose last layers are fitted to a few
rendered words in about a second (PARSeq and ViTSTR: the head; CRNN, TRBA, seq2seq: the BiLSTMs and the
decoder or head), so readings differ in length and greedy decoding stops and drops rows on the way.
"""

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from wordimages import render_word

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

WORDS = ["cat", "dog", "sun", "tree", "home", "open", "road", "blue", "x", "opendoor"]
OTHER_WORDS = ["cab", "sunroof", "hi"]

# family -> (config, overrides, preprocessing kept in the weights' metadata)
FAMILIES = {
    "parseq": ("parseq-tiny", ["model.encoder_depth=1", "model.charset=36", "model.max_label_length=8",
                               "model.img_size=[32,64]", "model.dropout=0.0"], {}),
    "vitstr": ("vitstr-tiny", ["model.depth=1", "model.charset=36", "model.max_label_length=8",
                               "model.img_size=[32,64]"], {}),
    # EasyOCR's preprocessing: aspect kept, padded with the last column, canvases in steps of 32 pixels.
    "crnn": ("crnn-tiny", ["model.charset=36", "model.img_size=[32,128]"],
             {"keep_aspect": True, "pad": "edge", "width_step": 32}),
    "trba": ("trba-tiny", ["model.charset=36", "model.max_label_length=8", "model.img_size=[32,64]"], {}),
    "seq2seq": ("seq2seq-tiny", ["model.max_label_length=8"], {}),
}


def _cli(*argv) -> int:
    from masterocr.cli.main import main

    return main([str(a) for a in argv])


def fit(model, images: torch.Tensor, words: list[str], steps: int = 150) -> None:
    """Fit the last layers of a random model to read `words` from `images` (the rest stays random): the
    BiLSTMs and the decoder or head of a recurrent model, on the CNN's columns; the head of the others, on the
    features it sees under teacher forcing."""
    from masterocr.charset import CTCTokenizer

    tok = model.tokenizer
    ctc = isinstance(tok, CTCTokenizer)
    seen = []
    recurrent = hasattr(model, "sequence")
    fitted = (model.sequence, model.head if ctc else model.decoder) if recurrent else (model.head,)
    hook = (model.sequence if recurrent else model.head).register_forward_pre_hook(
        lambda module, args: seen.append(args[0].detach()))
    with torch.no_grad():
        if recurrent:
            model.encode(images)
        elif getattr(model, "decoding", "") == "parallel":
            model(images)
        else:
            model(images, tok.encode(words)[:, :-1])
    hook.remove()
    features = seen[0]  # (B, T, D)
    params = [p for module in fitted for p in module.parameters()]
    optimizer = torch.optim.Adam(params, lr=0.01 if recurrent else 0.05)
    targets = tok.encode(words)
    # CTC heads fit fastest; the attention decoders (and TRBA's BiLSTMs over a random CNN's columns) need
    # twice the steps to read words of different lengths.
    for _ in range(steps if ctc else 2 * steps):
        if recurrent and ctc:
            logits = model.head(model.sequence(features))
        elif recurrent:
            logits = model.decode_full(model.sequence(features), targets[:, :-1])[0]
        else:
            logits = model.head(features)
        if ctc:
            labels, lengths = targets
            log_probs = logits.log_softmax(-1).transpose(0, 1)  # (T, B, C)
            loss = F.ctc_loss(log_probs, labels, torch.full((len(words),), log_probs.shape[0]), lengths)
        else:
            out = F.pad(targets[:, 1:], (0, max(0, logits.shape[1] - targets.shape[1] + 1)), value=tok.pad_id)
            out = out[:, : logits.shape[1]]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), out.reshape(-1), ignore_index=tok.pad_id)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@dataclass
class Family:
    name: str
    weights: Path
    folder: Path

    def torch_rec(self, **options):
        import masterocr

        return masterocr.load(self.weights, **options)

    def onnx_rec(self, **options):
        import masterocr

        return masterocr.load(self.folder, **options)


_BUILT: dict[str, Family] = {}


def build_family(name: str, tmp_path_factory) -> Family:
    """A tiny model of the family, fitted to WORDS, saved and exported (fp32); once per session."""
    if name not in _BUILT:
        _BUILT[name] = _build(name, tmp_path_factory)
    return _BUILT[name]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory) -> Family:
    return build_family(request.param, tmp_path_factory)


def _build(name: str, tmp_path_factory) -> Family:
    import masterocr
    from masterocr.config import load_config
    from masterocr.models import build_model
    from masterocr.weights import save_weights

    config, overrides, preprocessing = FAMILIES[name]
    torch.manual_seed(0)
    cfg = load_config(config, overrides).model
    model = build_model(cfg).eval()
    root = tmp_path_factory.mktemp(name)
    weights = root / f"{name}-tiny.safetensors"
    save_weights(model, cfg, weights, extra=preprocessing)
    rec = masterocr.load(weights)  # the pipeline the weights ask for
    images = rec.collate([rec.preprocess(render_word(w)) for w in WORDS])
    fit(model, images, WORDS)
    save_weights(model, cfg, weights, extra=preprocessing)
    assert _cli("export", weights, "-o", root / "export") == 0
    return Family(name, weights, root / "export")


def _metadata(path: Path) -> dict:
    return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["masterocr"])


# ---- the export ------------------------------------------------------------------------------------------

GRAPHS = {"parseq": {"encoder", "decoder_step", "refine"}, "vitstr": {"model"}, "crnn": {"model"},
          "trba": {"encoder", "decoder_step"}, "seq2seq": {"encoder", "decoder_step"}}
DECODING = {"parseq": "autoregressive", "vitstr": "parallel", "crnn": "ctc", "trba": "autoregressive",
            "seq2seq": "autoregressive"}


def test_export_writes_checked_graphs_with_metadata(family):
    files = sorted(p.name for p in family.folder.glob("*.onnx"))
    assert files == sorted(f"{role}.onnx" for role in GRAPHS[family.name])
    metas = []
    for path in family.folder.glob("*.onnx"):
        onnx.checker.check_model(str(path), full_check=True)
        metas.append(_metadata(path))
        assert metas[-1]["role"] == path.stem
    meta = metas[0]
    assert len({m["export_id"] for m in metas}) == 1
    assert meta["family"] == family.name and meta["decoding"] == DECODING[family.name]
    assert meta["model_name"] == f"{family.name}-tiny" and meta["precision"] == "fp32"
    assert meta["decoding_defaults"]["refine_iters"] == (1 if family.name == "parseq" else 0)
    entry = family.folder / ("encoder.onnx" if "encoder" in GRAPHS[family.name] else "model.onnx")
    dims = onnx.load(str(entry)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param  # dynamic batch
    if family.name == "crnn":  # frames follow the width; EasyOCR's preprocessing travels with the graph
        assert dims[3].dim_param and meta["width_range"][0] <= 32 and meta["width_range"][1] >= 4096
        assert (meta["keep_aspect"], meta["pad"], meta["width_step"]) == (True, "edge", 32)
        assert meta["tokens"] == {"blank": 0} and meta["num_classes"] == 37
    else:
        assert dims[3].dim_value == meta["img_size"][1] and meta["width_range"] is None
    if family.name in ("trba", "seq2seq"):
        cell = "lstm" if family.name == "trba" else "gru"
        assert meta["decoder"] == {"kind": "rnn", "cell": cell, "hidden_size": 32 if cell == "lstm" else 64,
                                   "num_classes": 37}
    if family.name == "trba":  # the TPS's sampling and the BiLSTMs are single ONNX operators
        ops = {n.op_type for n in onnx.load(str(entry)).graph.node}
        assert {"GridSample", "LSTM"} <= ops


# ---- the runtime reads what torch reads, in every decode mode ------------------------------------------------

CASES = [("parseq", "greedy", 0), ("parseq", "greedy", 2), ("parseq", "beam", 1), ("parseq", "nar", 0),
         ("parseq", "nar", 1), ("vitstr", "greedy", None), ("vitstr", "nar", None), ("crnn", "greedy", None),
         ("trba", "greedy", None), ("trba", "beam", None), ("seq2seq", "greedy", None), ("seq2seq", "beam", None)]


@pytest.mark.parametrize("family,method,refine", CASES, indirect=["family"])
def test_runtime_matches_torch(family, method, refine):
    from masterocr.decoding import decode

    torch_rec = family.torch_rec(decode_method=method, refine_iters=refine)
    rec = family.onnx_rec(decode_method=method, refine_iters=refine)
    sources = [render_word(w) for w in WORDS + OTHER_WORDS]
    images = torch_rec.collate([torch_rec.preprocess(s) for s in sources])
    ids, probs, _, attention = rec.decode(images.numpy())
    with torch.inference_mode():
        ref = decode(torch_rec.model, images, method=method, refine_iters=refine)
    np.testing.assert_array_equal(ids, ref.token_ids.numpy())
    np.testing.assert_allclose(probs, ref.probs.numpy(), atol=1e-4, rtol=0)
    if ref.attention is None:
        assert attention is None
    else:
        np.testing.assert_allclose(attention, ref.attention.numpy(), atol=1e-4, rtol=0)
    got, want = rec.read(sources, batch_size=5), torch_rec.read(sources, batch_size=5)
    assert [r.text for r in got] == [r.text for r in want]
    for g, w in zip(got, want):
        assert g.confidence == pytest.approx(w.confidence, abs=1e-4)
        np.testing.assert_allclose(g.char_probs, w.char_probs, atol=1e-4)
        assert (g.attention is None) == (w.attention is None)
        if w.attention is not None:
            np.testing.assert_allclose(g.attention, w.attention, atol=1e-4)
    if method == "greedy" and DECODING[family.name] == "autoregressive":  # rows end at different steps
        assert len({len(r.text) for r in want}) > 1


def test_ctc_confidence_is_torchs_ctc_loss():
    """The CTC forward algorithm in NumPy (shared by both paths) gives exp(-ctc_loss), impossible labels 0."""
    from masterocr.charset import CTCTokenizer

    tok = CTCTokenizer("ab")
    torch.manual_seed(0)
    probs = torch.softmax(3 * torch.randn(6, 7, 3), -1)
    labels = [[1], [1, 1], [], [2, 1, 2], [1, 1, 1, 1], [2, 2, 2, 2, 2]]  # the last needs 9 frames: impossible
    width = max(len(x) for x in labels)
    targets = torch.tensor([x + [0] * (width - len(x)) for x in labels])
    nll = F.ctc_loss(probs.log().transpose(0, 1), targets, torch.full((6,), 7), torch.tensor([len(x) for x in labels]),
                     reduction="none")
    want = torch.exp(-nll.double()).numpy()
    got = tok.text_probability(probs.numpy(), labels)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)
    assert got[-1] == 0 and got.dtype == np.float32


# ---- int8 -------------------------------------------------------------------------------------------------

def test_int8_export_reads(family, tmp_path):
    from masterocr.export import export_model

    calibration = None
    if family.name == "crnn":  # static int8 convolutions over canvases of several widths
        calibration = tmp_path / "train"
        calibration.mkdir()
        for i, word in enumerate(WORDS):
            render_word(word).save(calibration / f"{i}.png")
    result = export_model(family.folder, tmp_path / "int8", int8=True, calibration=calibration and [calibration],
                          calibration_count=10)
    assert result.metadata["precision"] == "int8"
    ops = {n.op_type for path in result.graphs.values() for n in onnx.load(str(path)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"}
    if family.name in ("crnn", "trba", "seq2seq"):  # the BiLSTMs too
        assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops
    if calibration:
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    import masterocr

    rec = masterocr.load(tmp_path / "int8")
    got = rec.read([render_word(w) for w in WORDS])
    # The fitted models' margins are a random network's, too thin for int8 to keep every reading: they read.
    assert all(r.ok and 0.0 <= r.confidence <= 1.0 for r in got) and rec.metadata["precision"] == "int8"
    assert rec.metadata["quantization"]["conv"].startswith("static" if calibration else "fp32")


# ---- refusals ---------------------------------------------------------------------------------------------

REFUSED = {"vitstr": ({"decode_method": "beam"}, "reads every position at once; beam search needs"),
           "trba": ({"decode_method": "nar"}, "has no non-autoregressive decoder"),
           "seq2seq": ({"refine_iters": 1}, "has no cloze refinement: refine_iters=1 is not available"),
           "parseq": ({"refine_iters": -1}, "refine_iters=-1 must be >= 0"),
           "crnn": ({"refine_iters": 2}, "has no cloze refinement: refine_iters=2 is not available")}


def test_options_a_family_lacks_are_refused_as_torch_refuses_them(family, tmp_path):
    from masterocr.export import ExportError, export_model

    options, message = REFUSED[family.name]
    for load in (family.torch_rec, family.onnx_rec):
        with pytest.raises(ValueError, match=message):
            load(**options)
    if family.name != "parseq":  # a key/value cache layout means nothing to these decoders
        with pytest.raises(ExportError, match="cache layout 'fixed'"):
            export_model(family.weights, tmp_path / "x", cache="fixed")


def test_bad_folders_name_the_file(family, tmp_path):
    import shutil

    from masterocr.export import write_metadata
    from masterocr.runtime import ExportFolderError, load

    copy = tmp_path / "copy"
    shutil.copytree(family.folder, copy)
    if family.name == "parseq":  # the optional graph, once listed, must be there
        (copy / "refine.onnx").unlink()
        with pytest.raises(ExportFolderError, match="refine.onnx: missing"):
            load(copy)
        return
    if DECODING[family.name] == "autoregressive":  # the step of a transformer under an RNN's encoder
        (copy / "decoder_step.onnx").unlink()
        with pytest.raises(ExportFolderError, match="decoder_step.onnx: missing"):
            load(copy)
        return
    path = copy / "model.onnx"
    meta = _metadata(path)
    del meta["num_classes"]
    write_metadata(path, meta)
    with pytest.raises(ExportFolderError, match="model.onnx: metadata lacks num_classes"):
        load(copy)


# ---- the command line and no torch -------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["parseq"], indirect=True)
def test_cli_read_decode_options(family, tmp_path, capsys):
    paths = []
    for w in WORDS[:4]:
        paths.append(tmp_path / f"{w}.png")
        render_word(w).save(paths[-1])
    outputs = []
    for model in (family.weights, family.folder):
        assert _cli("read", *paths, "--model", model, "--decode", "nar", "--refine", 2) == 0
        outputs.append([line.split("\t")[1] for line in capsys.readouterr().out.strip().splitlines()])
    assert outputs[0] == outputs[1]


def test_runtime_never_imports_torch(tmp_path_factory, tmp_path):
    """PARSeq (greedy + refinement graph, NAR) and CRNN (CTC confidence in NumPy) read with torch blocked."""
    from test_export import BLOCK_TORCH

    paths = []
    for w in WORDS[:5]:
        paths.append(str(tmp_path / f"{w}.png"))
        render_word(w).save(paths[-1])
    exports = {name: build_family(name, tmp_path_factory) for name in ("parseq", "crnn")}
    code = BLOCK_TORCH + f"""
import json, masterocr
out = {{}}
for name, folder, options in [("parseq", {str(exports["parseq"].folder)!r}, {{}}),
                              ("parseq-nar", {str(exports["parseq"].folder)!r}, {{"decode_method": "nar"}}),
                              ("crnn", {str(exports["crnn"].folder)!r}, {{}})]:
    rec = masterocr.load(folder, **options)
    out[name] = [(r.text, r.confidence) for r in rec.read({paths!r})]
bad = [m for m in sys.modules if m.split(".")[0] in ("torch", "onnx") or m.startswith("masterocr.models")]
assert not bad, bad
print(json.dumps(out))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    for name, family, options in [("parseq", exports["parseq"], {}), ("parseq-nar", exports["parseq"],
                                                                      {"decode_method": "nar"}),
                                  ("crnn", exports["crnn"], {})]:
        want = family.torch_rec(**options).read(paths)
        assert [t for t, _ in got[name]] == [r.text for r in want]
        assert [c for _, c in got[name]] == pytest.approx([r.confidence for r in want], abs=1e-4)


# ---- bf16 through OpenVINO, and the fp32 re-read of close calls ----------------------------------------------

@pytest.mark.parametrize("family,method,refine", [c for c in CASES if c[1] != "beam"], indirect=["family"])
def test_bf16_checked_takes_fp32_rows_exactly_where_a_call_was_close(family, method, refine):
    pytest.importorskip("openvino")
    from masterocr.runtime import decoding

    fp32 = family.onnx_rec(decode_method=method, refine_iters=refine)
    images = fp32.collate([fp32.preprocess(render_word(w)) for w in WORDS + OTHER_WORDS])
    want = fp32.decode(images)
    bf16 = family.onnx_rec(decode_method=method, refine_iters=refine, precision="bf16")
    fast = bf16.decode(images)
    margins = bf16._decode_with(bf16.bf16_graph, images, True, margins=True)[-1]
    if method == "greedy" and refine == 0 or DECODING[family.name] != "autoregressive":  # one pass: its gaps
        eos = None if DECODING[family.name] == "ctc" else bf16.spec.eos
        np.testing.assert_allclose(margins, decoding.decision_margins(fast[0], fast[1], eos), atol=1e-6)
    cut = float(np.median(margins)) + 1e-6  # about half the rows go back to fp32
    checked = family.onnx_rec(decode_method=method, refine_iters=refine, precision="bf16-checked",
                              check_margin=min(cut, 1.0))
    got = checked.decode(images)
    redo = margins < checked.check_margin
    assert 0 < redo.sum() < len(redo) or len(set(margins)) == 1
    assert (checked.rows_read, checked.rows_reread) == (len(images), int(redo.sum()))
    for i in range(len(images)):
        source = want if redo[i] else fast
        n = min(got[0].shape[1], source[0].shape[1])
        np.testing.assert_array_equal(got[0][i, :n], source[0][i, :n])
        np.testing.assert_allclose(got[2][i, :n], source[2][i, :n], atol=1e-6)
    everything = family.onnx_rec(decode_method=method, refine_iters=refine, precision="bf16-checked",
                                 check_margin=1.0)
    everything.check_margin = np.inf  # every row back to fp32: fp32's arrays
    got = everything.decode(images)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], atol=1e-6)
