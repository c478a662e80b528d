"""Protocols, metrics, the benchmark table and prediction-file scoring (no model needed)."""

import csv
import json
import math

import pytest

from masterocr.evaluation import (Metrics, SamplePrediction, apply_protocol, combine, format_csv,
                                  format_markdown, normalized_edit_distance, read_labels_file,
                                  read_predictions_file, score, score_files, to_json, write_predictions)


# ---- protocols ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("label, protocol, expected", [
    ("Hello, World!", "36", "helloworld"),
    ("Hello, World!", "62", "HelloWorld"),
    ("Hello, World!", "94", "Hello,World!"),
    ("Hello, World!", "raw", "Hello, World!"),
    ("  café  ", "raw", "café"),
    ("Straße-42", "36", "strae42"),
    ("中文标签", "raw", "中文标签"),
    ("中文 ABC", "36", "abc"),
])
def test_protocol_normalises_labels(label, protocol, expected):
    assert apply_protocol(label, protocol) == expected


def test_protocol_drops_empty_and_long_labels():
    assert apply_protocol("!!!", "36") is None          # nothing left of [0-9a-z]
    assert apply_protocol("中文", "36") is None           # a Chinese label is empty under 36 ...
    assert apply_protocol("中文", "raw") == "中文"         # ... but kept under raw
    assert apply_protocol("   ", "raw") is None
    assert apply_protocol("a" * 25, "36") == "a" * 25
    assert apply_protocol("a" * 26, "36") is None
    assert apply_protocol("a" * 26, "36", max_length=None) == "a" * 26
    with pytest.raises(ValueError, match="unknown protocol"):
        apply_protocol("abc", "37")


def test_score_applies_protocol_to_both_sides():
    pairs = [("HELLO", "hello"), ("Wor1d", "WORLD"), ("x", "?!"), ("中文", "中文")]
    m36 = score(pairs, "36")
    # "?!" and "中文" become empty under 36 and are dropped.
    assert (m36.num_samples, m36.correct, m36.dropped) == (2, 1, 2)
    mraw = score(pairs, "raw")
    assert (mraw.num_samples, mraw.correct, mraw.dropped) == (4, 1, 0)  # only the Chinese pair matches
    assert mraw.accuracy_case_insensitive == pytest.approx(2 / 4)
    m62 = score([("Hello", "hello")], "62")
    assert m62.correct == 0


def test_chinese_labels_under_raw_use_characters_not_bytes():
    m = score([("中文识别", "中文识字"), ("你好", "你好")], "raw")
    assert m.accuracy == 0.5
    assert m.ned_sum == pytest.approx(1 / 4)           # one substitution over 4 characters
    assert m.label_chars == 6


# ---- NED edge cases -------------------------------------------------------------------------------------

def test_ned_edge_cases():
    assert normalized_edit_distance("", "") == 0.0
    assert normalized_edit_distance("", "abc") == 1.0      # empty prediction
    assert normalized_edit_distance("abc", "") == 1.0      # empty label (only reachable without a protocol)
    assert normalized_edit_distance("abc", "abc") == 0.0
    # ICDAR 2019 divides by the longer string, so NED never exceeds 1.
    assert normalized_edit_distance("abcdef", "ab") == pytest.approx(4 / 6)
    assert normalized_edit_distance("ab", "abcdef") == pytest.approx(4 / 6)


def test_per_word_and_corpus_ned_differ():
    m = Metrics()
    m.add("", "abcd")           # ED 4, NED 1
    m.add("abc", "abc")         # ED 0
    m.add("xxxxxx", "ab")       # ED 6, NED 1 (over max length 6), but 6 edits against 2 label characters
    assert m.one_minus_ned == pytest.approx(1 - 2 / 3)
    assert m.corpus_one_minus_ned == pytest.approx(1 - 10 / 9)   # can fall below zero, as MASTER's can
    assert m.accuracy == pytest.approx(1 / 3)


def test_char_precision_recall():
    m = Metrics()
    m.add("hel", "hello")       # LCS 3
    m.add("worlds", "world")    # LCS 5
    assert m.char_precision == pytest.approx(8 / 9)
    assert m.char_recall == pytest.approx(8 / 10)
    assert m.char_f1 == pytest.approx(16 / 19)


def test_empty_metrics_are_nan_not_errors():
    m = Metrics(name="empty")
    assert math.isnan(m.accuracy) and math.isnan(m.one_minus_ned) and math.isnan(m.confidence)
    assert m.summary()["accuracy"] is None
    assert "n/a" in format_markdown([m])


# ---- the table ------------------------------------------------------------------------------------------

def _set(name, results):
    m = Metrics(name=name)
    for pred, gt, conf in results:
        m.add(pred, gt, conf)
    return m


def test_combined_row_is_sample_weighted():
    a = _set("A", [("abc", "abc", 0.9)])                                           # 1 sample, 100%
    b = _set("B", [("ab", "abc", 0.5), ("x", "yz", 0.1), ("ok", "ok", 0.3)])       # 3 samples, 33.3%
    c = combine([a, b])
    assert c.name == "Combined" and c.num_samples == 4
    assert c.accuracy == pytest.approx(2 / 4)                 # not the mean of 100% and 33.3%
    assert c.confidence == pytest.approx((0.9 + 0.5 + 0.1 + 0.3) / 4)
    assert c.one_minus_ned == pytest.approx(1 - (0 + 1 / 3 + 1 + 0) / 4)
    assert c.label_length == pytest.approx((3 + 2 + 1 + 2) / 4)
    weighted = (a.num_samples * a.one_minus_ned + b.num_samples * b.one_minus_ned) / 4
    assert c.one_minus_ned == pytest.approx(weighted)


def test_markdown_csv_json_tables():
    a = _set("IIIT5K", [("abc", "abc", 0.9), ("ab", "abc", 0.6)])
    b = _set("SVT", [("ok", "ok", 0.8)])
    md = format_markdown([a, b]).splitlines()
    assert [c.strip() for c in md[0].strip("|").split("|")] == [
        "Dataset", "# samples", "Accuracy", "1 - NED", "Char F1", "Confidence", "Label length"]
    assert md[2].split("|")[1].strip() == "IIIT5K" and md[4].split("|")[1].strip() == "Combined"
    combined_cells = [c.strip() for c in md[4].strip("|").split("|")]
    assert combined_cells[1:4] == ["3", "66.67", f"{100 * (1 - (1 / 3) / 3):.2f}"]
    assert len(md) == 5
    assert len(format_markdown([a]).splitlines()) == 3     # one set: no Combined row

    rows = list(csv.DictReader(format_csv([a, b]).splitlines()))
    assert [r["dataset"] for r in rows] == ["IIIT5K", "SVT", "Combined"]
    assert float(rows[2]["accuracy"]) == pytest.approx(2 / 3)

    js = to_json([a, b], protocol="36")
    assert js["meta"]["protocol"] == "36"
    assert js["results"][-1]["num_samples"] == 3
    json.dumps(js)


def test_write_predictions_round_trip(tmp_path):
    samples = [SamplePrediction("SVT", "images/a.png", "abc", "abd", 0.5, False),
               SamplePrediction("SVT", "images/b.png", "tab\tin", "x", None, False, error="cannot decode")]
    path = tmp_path / "predictions.tsv"
    write_predictions(samples, path)
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert rows[0]["prediction"] == "abd" and rows[0]["confidence"] == "0.500000"
    assert rows[1]["label"] == "tab\tin" and rows[1]["error"] == "cannot decode"


# ---- offline prediction files ---------------------------------------------------------------------------

def test_master_pytorch_format(tmp_path):
    # test.py writes a JSON list with base names; label.txt has one {"ImageFile", "Label"} object a line.
    preds = [{"filename": "001.jpg", "result": "Hello", "pred_score": 0.9},
             {"filename": "002.jpg", "result": "wrld", "pred_score": 0.4},
             {"filename": "999.jpg", "result": "extra", "pred_score": 0.1}]
    (tmp_path / "predict_result.json").write_text(json.dumps(preds), encoding="utf-8")
    labels = [{"ImageFile": "imgs/001.jpg", "Label": "Hello"},
              {"ImageFile": "imgs/002.jpg", "Label": "world"},
              {"ImageFile": "imgs/003.jpg", "Label": "abc"}]
    (tmp_path / "label.txt").write_text("\n".join(json.dumps(x) for x in labels) + "\n", encoding="utf-8")

    assert read_predictions_file(tmp_path / "predict_result.json")["002.jpg"] == ("wrld", 0.4)
    assert read_labels_file(tmp_path / "label.txt")["imgs/003.jpg"] == "abc"
    result = score_files(tmp_path / "predict_result.json", tmp_path / "label.txt")
    m = result.metrics
    assert result.missing == ["imgs/003.jpg"] and result.unmatched == ["999.jpg"]
    assert m.num_samples == 3 and m.correct == 1
    # MASTER-pytorch's edit-distance accuracy: 1 - (0 + 1 + 3) / (5 + 5 + 3)
    assert m.corpus_one_minus_ned == pytest.approx(1 - 4 / 13)
    assert m.one_minus_ned == pytest.approx(1 - (0 + 1 / 5 + 1) / 3)


def test_tsv_format_and_bad_lines(tmp_path):
    (tmp_path / "labels.tsv").write_text("images/a.png\tABC\nimages/b.png\tdef\n", encoding="utf-8")
    (tmp_path / "preds.tsv").write_text("images/a.png\tabc\t0.8\nimages/b.png\tdef\n", encoding="utf-8")
    assert score_files(tmp_path / "preds.tsv", tmp_path / "labels.tsv").metrics.correct == 1
    assert score_files(tmp_path / "preds.tsv", tmp_path / "labels.tsv", protocol="36").metrics.correct == 2
    (tmp_path / "bad.tsv").write_text("no tab here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.tsv:1"):
        read_labels_file(tmp_path / "bad.tsv")
