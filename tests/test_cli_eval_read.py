"""`masterocr eval`, `read` and `metrics` end to end, and `evaluate()` with rotation and LMDB trees, on the
small model trained in test_recognizer.py (a folder of rendered words plus one broken image)."""

import csv
import io
import json

import pytest
from PIL import Image

from masterocr.cli.main import main
from conftest import WORDS
from wordimages import render_word


@pytest.fixture
def word_folder(tmp_path):
    """labels.tsv folder: the rendered WORDS plus images/broken.png, which is not an image."""
    root = tmp_path / "words" / "test"
    (root / "images").mkdir(parents=True)
    lines = []
    for w in WORDS:
        render_word(w).save(root / "images" / f"{w}.png")
        lines.append(f"images/{w}.png\t{w.upper()}")  # upper-case labels: protocol 36 lower-cases them
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    lines.append("images/broken.png\tbroken")
    lines.append("images/punct.png\t!?")            # empty under protocol 36: dropped before reading
    (root / "labels.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _table(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("|") and not line.startswith("|-"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


# ---- eval -----------------------------------------------------------------------------------------------

def test_eval_cli_table_files_and_broken_image(tiny_weights, word_folder, tmp_path, capsys):
    out_dir = tmp_path / "results"
    code = main(["eval", str(tiny_weights), "--data", str(word_folder), "--output", str(out_dir),
                 "--batch-size", "3", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0
    rows = _table(captured.out)
    assert rows["Dataset"] == ["# samples", "Accuracy", "1 - NED", "Char F1", "Confidence", "Label length"]
    # 8 words read + the broken image scored as an empty prediction; "!?" dropped by protocol 36.
    assert rows["words"][:2] == ["9", f"{100 * 8 / 9:.2f}"]
    assert "broken.png" in captured.err and "1 unreadable" in captured.err and "1 sample(s) dropped" in captured.err

    result = json.loads((out_dir / "results.json").read_text())
    assert result["meta"]["protocol"] == "36" and result["results"][0]["failed"] == 1
    assert result["results"][0]["accuracy"] == pytest.approx(8 / 9)
    with open(out_dir / "results.csv", encoding="utf-8") as f:
        assert next(csv.DictReader(f))["dataset"] == "words"
    with open(out_dir / "predictions.tsv", encoding="utf-8", newline="") as f:
        preds = {r["file"].split("/")[-1]: r for r in csv.DictReader(f, delimiter="\t")}
    assert preds["cat.png"]["label"] == "cat" and preds["cat.png"]["prediction"] == "cat"
    assert preds["broken.png"]["error"] and preds["broken.png"]["correct"] == "0"


def test_eval_cli_protocols_rotation_and_combined(tiny_weights, word_folder, tmp_path, capsys):
    code = main(["eval", str(tiny_weights), "--data", str(word_folder), str(word_folder), "--protocol", "94",
                 "--rotation", "0", "180", "--no-progress", "--output", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0
    assert "Rotation 180" in out
    first = _table(out.split("Rotation 180")[0])
    # Same folder twice: the rows get their paths as names, then the Combined row.
    combined = first["Combined"]
    # (8 words + broken + "!?", kept under 94 and missing on disk) x 2
    assert combined[0] == "20"
    assert combined[1] == "0.00"                                # case-sensitive: "CAT" != "cat"
    assert (tmp_path / "r" / "predictions_rot180.tsv").is_file()
    runs = json.loads((tmp_path / "r" / "results.json").read_text())
    assert [r["meta"]["rotation"] for r in runs] == [0, 180]


def test_eval_cli_scores_only_the_held_out_part(tiny_weights, word_folder, tmp_path, capsys):
    from masterocr.data.datasets import is_held_out

    out_dir = tmp_path / "held"
    assert main(["eval", str(tiny_weights), "--data", str(word_folder), "--holdout", "0.5", "--holdout-seed", "2",
                 "--no-progress", "--output", str(out_dir)]) == 0
    rows = _table(capsys.readouterr().out)
    with open(out_dir / "predictions.tsv", encoding="utf-8", newline="") as f:
        scored = {r["file"].split("/")[-1] for r in csv.DictReader(f, delimiter="\t")}
    files = [line.split("\t")[0] for line in (word_folder / "labels.tsv").read_text().splitlines()]
    expected = {f.split("/")[-1] for f in files if is_held_out(f, 0.5, 2)} - {"punct.png"}  # dropped by protocol
    assert scored == expected and 0 < len(scored) < 9
    assert rows["words held-out"][0] == str(len(expected))
    assert main(["eval", str(tiny_weights), "--data", str(word_folder), "--holdout", "1.5"]) == 2
    assert "--holdout" in capsys.readouterr().err


def test_evaluate_rotation_undoes_rotated_images(tiny_weights, word_folder, tmp_path):
    import masterocr
    from masterocr.evaluation import evaluate

    rec = masterocr.load(tiny_weights)
    # The same words stored rotated clockwise by 90 degrees: rotation=90 (counter-clockwise) restores them.
    rotated = tmp_path / "rotated"
    (rotated / "images").mkdir(parents=True)
    for w in WORDS:
        render_word(w).transpose(Image.Transpose.ROTATE_270).save(rotated / "images" / f"{w}.png")
    (rotated / "labels.tsv").write_text("".join(f"images/{w}.png\t{w}\n" for w in WORDS), encoding="utf-8")

    upright = evaluate(rec, [str(word_folder)], progress=False, log=lambda m: None)
    restored = evaluate(rec, [str(rotated)], rotation=90, progress=False)
    unrestored = evaluate(rec, [str(rotated)], rotation=0, progress=False)
    assert restored.rows[0].accuracy == 1.0
    read = {s.file.split("/")[-1]: (s.prediction, s.confidence) for s in restored.samples}
    for s in upright.samples:
        name = s.file.split("/")[-1]
        if s.error is None:
            assert read[name][0] == s.prediction and read[name][1] == pytest.approx(s.confidence, rel=1e-4)
    assert unrestored.rows[0].accuracy < 0.5           # the model never saw sideways text
    with pytest.raises(ValueError, match="rotation"):
        evaluate(rec, [str(rotated)], rotation=45, progress=False)


def test_evaluate_lmdb_tree_rows_and_aspect_sorting(tiny_weights, tmp_path):
    import masterocr
    from masterocr.data.datasets import write_lmdb
    from masterocr.evaluation import evaluate

    def png(word):
        buf = io.BytesIO()
        render_word(word).save(buf, format="PNG")
        return buf.getvalue()

    tree = tmp_path / "benchmarks"
    write_lmdb(tree / "setA", [(png(w), w) for w in WORDS[:5]])
    write_lmdb(tree / "setB", [(png(w), w) for w in WORDS[5:]] + [(b"junk", "road"), (png("cat"), "x" * 30)])
    rec = masterocr.load(tiny_weights, keep_aspect=True)  # keep-aspect resize: batches sorted by aspect
    result = evaluate(rec, str(tree), batch_size=2, progress=False, log=lambda m: None)
    assert [m.name for m in result.rows] == ["setA", "setB"]
    a, b = result.rows
    assert (a.num_samples, b.num_samples, b.failed, b.dropped) == (5, 4, 1, 1)  # 30 chars > 25: dropped
    assert result.combined.num_samples == 9
    assert result.combined.accuracy == pytest.approx((a.correct + b.correct) / 9)


# ---- read -----------------------------------------------------------------------------------------------

def test_read_cli_folder_with_broken_image(tiny_weights, word_folder, tmp_path, capsys):
    att = tmp_path / "att"
    code = main(["read", str(word_folder / "images"), "--model", str(tiny_weights), "--batch-size", "3",
                 "--attention", str(att)])
    captured = capsys.readouterr()
    assert code == 1                                           # one input failed
    lines = [line.split("\t") for line in captured.out.splitlines()]
    assert sorted(p.split("/")[-1][:-4] for p, _, _ in lines) == sorted(WORDS)
    assert all(p.split("/")[-1][:-4] == text and 0 < float(conf) <= 1 for p, text, conf in lines)
    assert "broken.png" in captured.err
    pngs = sorted(p.name for p in att.iterdir())
    assert pngs == sorted(f"{w}.png" for w in WORDS)
    fig = Image.open(att / "tree.png")
    assert fig.height > 4 * 64                                # a row for the image and one per character


def test_read_cli_json_glob_and_missing(tiny_weights, word_folder, capsys):
    pattern = str(word_folder / "images" / "c*.png")
    code = main(["read", pattern, str(word_folder / "images" / "sun.png"), "--model", str(tiny_weights),
                 "--json"])
    captured = capsys.readouterr()
    assert code == 0
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["text"] for r in records] == ["cat", "sun"]
    assert len(records[0]["char_probs"]) == 3 and records[0]["chars"] == ["c", "a", "t"]
    code = main(["read", str(word_folder / "nothing-*.png"), str(word_folder / "missing.png"),
                 str(word_folder / "images" / "dog.png"), "--model", str(tiny_weights)])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out.split("\t")[1] == "dog"
    assert "no file matches" in captured.err and "missing.png: no such file" in captured.err


def test_read_cli_without_bundled_model(word_folder, tmp_path, monkeypatch, capsys):
    from masterocr import weights

    monkeypatch.setattr(weights, "BUNDLED_DIR", tmp_path / "none")
    code = main(["read", str(word_folder / "images" / "cat.png")])
    assert code == 2
    assert "no model is bundled" in capsys.readouterr().err


# ---- metrics --------------------------------------------------------------------------------------------

def test_metrics_cli_master_pytorch_format(tmp_path, capsys):
    preds = [{"filename": "1.jpg", "result": "Hello", "pred_score": 0.9},
             {"filename": "2.jpg", "result": "wrld", "pred_score": 0.5}]
    (tmp_path / "predict_result.json").write_text(json.dumps(preds), encoding="utf-8")
    (tmp_path / "label.txt").write_text('{"ImageFile": "1.jpg", "Label": "hello"}\n'
                                        '{"ImageFile": "2.jpg", "Label": "world"}\n', encoding="utf-8")
    assert main(["metrics", str(tmp_path / "predict_result.json"), str(tmp_path / "label.txt")]) == 0
    out = capsys.readouterr().out
    figures = dict(line.rsplit(None, 1) for line in out.splitlines()[1:])
    assert figures["Accuracy (%)"] == "0.00"                     # raw: "Hello" != "hello"
    assert figures["Accuracy, case-insensitive (%)"] == "50.00"
    assert figures["1 - NED corpus (%)"] == f"{100 * (1 - 2 / 10):.2f}"
    assert figures["1 - NED per word (%)"] == f"{100 * (1 - (1 / 5 + 1 / 5) / 2):.2f}"
    assert figures["Char precision (%)"] == f"{100 * 8 / 9:.2f}"
    assert figures["Char recall (%)"] == f"{100 * 8 / 10:.2f}"
    assert main(["metrics", str(tmp_path / "predict_result.json"), str(tmp_path / "label.txt"),
                 "--protocol", "36", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["accuracy"] == 0.5 and summary["num_samples"] == 2


def test_metrics_cli_tsv_and_missing_predictions(tmp_path, capsys):
    (tmp_path / "labels.tsv").write_text("images/a.png\tabc\nimages/b.png\tdef\n", encoding="utf-8")
    (tmp_path / "preds.tsv").write_text("a.png\tabc\t0.9\n", encoding="utf-8")
    assert main(["metrics", str(tmp_path / "preds.tsv"), str(tmp_path / "labels.tsv"), "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["accuracy"] == 0.5 and summary["missing"] == 1
    assert "images/b.png" in captured.err
    assert main(["metrics", str(tmp_path / "nope.tsv"), str(tmp_path / "labels.tsv")]) == 2


def test_evaluate_plain_module_keeps_training_mode(tiny_weights, word_folder):
    from masterocr.evaluation import evaluate
    from masterocr.weights import load_model

    model, _ = load_model(tiny_weights)
    model.train()  # as during training, where validation may call evaluate()
    result = evaluate(model, [str(word_folder)], progress=False, log=lambda m: None)
    assert model.training
    assert result.rows[0].correct == len(WORDS)
