"""CRNN, TRBA and seq2seq through the same commands as MASTER: train (CTC or teacher forcing, validation,
checkpoints, weights), eval, read and info."""

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from wordimages import render_words

import masterocr
from masterocr.cli.main import main as cli_main
from masterocr.weights import load_model

WORDS = ["cat", "dog", "sun", "red", "map", "box"]


@pytest.fixture(scope="module")
def words_dir(tmp_path_factory):
    return render_words(tmp_path_factory.mktemp("words"), WORDS)


def train(tmp: Path, data: Path, base: str, model: dict, **t) -> tuple[Path, dict]:
    train_cfg = {"batch_size": 6, "max_steps": 6, "lr": 3e-3, "lr_scaling": "none", "warmup": 1, "val_every_steps": 3,
                 "checkpoint_every_steps": 3, "log_every_steps": 1, "progress_refresh": 0, "num_sanity_val_steps": 0,
                 "num_threads": 1}
    train_cfg.update(t)
    cfg = {"base": base, "model": dict({"charset": "36", "max_label_length": 8}, **model),
           "data": {"train": [{"path": str(data)}], "val": [{"name": "words", "path": str(data)}], "augment": "none",
                    "num_workers": 0},
           "train": train_cfg}
    (tmp / "cfg.yaml").write_text(json.dumps(cfg))
    out = tmp / "run"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cli_main(["train", "--config", str(tmp / "cfg.yaml"), "--output", str(out), "--quiet"]) == 0
    summary = json.loads([line for line in stdout.getvalue().splitlines() if line.startswith("{")][-1])
    return out, summary


def test_crnn_trains_validates_evaluates_and_reads_through_the_cli(words_dir, tmp_path, capsys):
    out, summary = train(tmp_path, words_dir, "crnn-tiny", {"img_size": [32, 96]})
    assert summary["global_step"] == 6 and summary["best_score"] is not None  # validated through CTC decoding
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["masterocr_config"]["model"]["name"] == "crnn"
    weights = out / "weights" / "final.safetensors"
    model, cfg = load_model(weights)
    assert type(model).__name__ == "CRNN" and model.in_channels == 1

    rec = masterocr.load(weights)
    expected = [r.text for r in rec.read(sorted(str(p) for p in (words_dir / "images").iterdir()))]
    capsys.readouterr()
    assert cli_main(["read", str(words_dir / "images"), "--model", str(weights), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == expected
    for line in lines:  # CTC readings have per-character probabilities and a sequence probability
        assert len(line["char_probs"]) == len(line["text"]) and 0.0 <= line["confidence"] <= 1.0

    assert cli_main(["eval", str(weights), "--data", str(words_dir), "--no-progress", "--output",
                     str(tmp_path / "eval")]) == 0
    table = capsys.readouterr().out
    assert "| words" in table
    result = json.loads((tmp_path / "eval" / "results.json").read_text())
    predictions = (tmp_path / "eval" / "predictions.tsv").read_text().splitlines()[1:]
    row = result["results"][0]
    assert row["num_samples"] == 6 and len(predictions) == 6
    assert row["accuracy"] == pytest.approx(sum(e == w for e, w in zip(expected, WORDS)) / 6)  # a fraction


@pytest.mark.parametrize("base,extra", [("seq2seq-tiny", {"aux_ctc_weight": 0.3}), ("trba-tiny", {})])
def test_attention_rnn_models_train_through_the_cli(words_dir, tmp_path, base, extra):
    out, summary = train(tmp_path, words_dir, base, {}, max_steps=2, val_every_steps=2, checkpoint_every_steps=2,
                         **extra)
    assert summary["global_step"] == 2 and summary["best_score"] is not None
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(k.startswith("objective.aux_ctc.") for k in ckpt["state_dict"]) == bool(extra)
    model, _ = load_model(out / "weights" / "final.safetensors")  # strict: the aux head stays out
    assert type(model).__name__ == {"seq2seq-tiny": "Seq2Seq", "trba-tiny": "TRBA"}[base]


@pytest.mark.parametrize("name,parameters,part", [("crnn", 8_466_527, "sequence"), ("trba-tiny", None, "tps"),
                                                  ("seq2seq-tiny", None, "decoder")])
def test_info(name, parameters, part, capsys):
    assert cli_main(["info", name, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    if parameters:
        assert summary["parameters"] == parameters
    assert part in summary["parameters_per_part"] and summary["gflops_per_image"]


def test_bundled_crnn_reads_the_examples_and_is_not_the_default():
    """The shipped crnn-small (masterocr/weights/crnn-small.safetensors) loads by name and reads the README's
    example images; master-small stays the default model."""
    from masterocr.charset import protocol_36
    from masterocr.recognizer import default_model_name
    from masterocr.weights import bundled_names

    if "crnn-small" not in bundled_names():
        pytest.skip("no bundled crnn-small")
    examples = Path(__file__).resolve().parents[1] / "examples"
    rows = [line.split("\t") for line in (examples / "labels.tsv").read_text().splitlines()]
    rec = masterocr.load("crnn-small")
    assert type(rec.model).__name__ == "CRNN" and rec.transform.grayscale and not rec.keep_aspect
    results = rec.read([str(examples / name) for name, _ in rows])
    correct = sum(protocol_36(r.text) == protocol_36(label) for r, (_, label) in zip(results, rows))
    assert correct >= len(rows) - 2, [r.text for r in results]
    assert default_model_name() != "crnn-small"
