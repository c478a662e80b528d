"""FSNS TFRecords: record framing, tf.train.Example, the FSNS charset, the dataset, bad records, CLI round trips.

Every shard is written here on the fly (no binary fixtures): small images, FSNS's features."""

import io
import json
import logging
import os
import struct
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masterocr.charset import (CHARSET_DIR, charset_names, load_charset, normalize_label, read_id_charset)
from masterocr.cli.main import main
from masterocr.data.datasets import build_dataset, open_dataset
from masterocr.data.fsns import FsnsDataset, fsns_example, strip_null, write_fsns_shard
from masterocr.data.image import load_image
from masterocr.data.tfrecord import (Example, frame_record, is_tfrecord, iter_records, make_example,
                                     masked_crc32c, write_tfrecord)

TEXTS = ["Rue de la Paix", "Avenue des Sapins", "Place de l’Église", "Boulevard Saint-Michel", "Impasse Æ 12"]


def png(seed: int, size=(60, 15)) -> bytes:
    """A small random RGB PNG (width, height); FSNS's are 600x150, the size does not matter to the reader."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


# ---- record framing and Example ---------------------------------------------------------------------------

def test_masked_crc_matches_tensorboards_independent_implementation():
    pywrap = pytest.importorskip("tensorboard.compat.tensorflow_stub.pywrap_tensorflow")
    for data in (b"", b"123456789", bytes(range(256)) * 3):
        assert masked_crc32c(data) == pywrap.masked_crc32c(data)
    assert masked_crc32c(b"") == 0xA282EAD8  # CRC-32C of nothing is 0: only the mask delta remains


def test_frame_layout_and_round_trip(tmp_path):
    framed = frame_record(b"abc")
    length, length_crc = struct.unpack("<QI", framed[:12])
    assert length == 3 and length_crc == masked_crc32c(framed[:8])
    assert framed[12:15] == b"abc" and struct.unpack("<I", framed[15:])[0] == masked_crc32c(b"abc")

    records = [b"", b"x" * 1000, b"last"]
    path = tmp_path / "shard"
    assert write_tfrecord(path, records) == 3
    read = list(iter_records(path))
    assert [r.data for r in read] == records and [r.index for r in read] == [0, 1, 2]
    assert not any(r.problem for r in read)
    assert is_tfrecord(path)
    (tmp_path / "labels.tsv").write_text("a.png\tword\n", encoding="utf-8")
    assert not is_tfrecord(tmp_path / "labels.tsv") and not is_tfrecord(tmp_path / "missing")
    with pytest.raises(FileExistsError):
        write_tfrecord(path, records)


def test_example_wire_format_is_tensorflows():
    # Example{features{feature{key: "a" value{int64_list{value: [1, 2]}}}}}, encoded by hand from
    # example.proto / feature.proto field numbers (int64 lists packed, as TensorFlow writes them).
    assert make_example({"a": [1, 2]}) == bytes.fromhex("0a0d0a0b0a016112061a040a020102")
    example = Example()
    example.ParseFromString(make_example({"t": "é", "f": 0.5, "b": [b"\x00\xff"]}))
    feature = example.features.feature
    assert feature["t"].bytes_list.value == ["é".encode()] and feature["b"].bytes_list.value == [b"\x00\xff"]
    assert feature["f"].float_list.value == [0.5] and feature["t"].WhichOneof("kind") == "bytes_list"


# ---- the FSNS charset -------------------------------------------------------------------------------------

def test_fsns_charset_is_a_builtin_name_with_fsns_ids():
    assert "fsns" in charset_names()
    table = read_id_charset("fsns")
    assert table.null_id == 133 and len(table.id_to_char) == 133      # ids 0..132, 133 is the padding
    chars = load_charset("fsns")
    assert len(chars) == 133 and chars[0] == " " and chars[1] == "l" and "<" in chars
    # Several spellings share an id; the first line of an id is the character it decodes to.
    assert table.char_to_id["'"] == table.char_to_id["‘"] == table.char_to_id["’"] == 2
    assert table.id_to_char[2] == "’" and table.id_to_char[51] == '"' and table.id_to_char[17] == "-"
    assert table.char_to_id["—"] == 17 and "'" not in chars and "—" not in chars
    assert table.encode("l'É") == [1, 2, 36] and table.decode([1, 2, 36]) == "l’É"
    with pytest.raises(ValueError, match="'ß'"):
        table.encode("Straße")
    assert normalize_label(" Rue de l’Île ", "fsns") == "Rue de l’Île"    # case-sensitive charset: kept


def test_charset_file_ships_with_the_package():
    assert (CHARSET_DIR / "fsns.txt").is_file()
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "configs/charsets/*.txt" in pyproject["tool"]["setuptools"]["package-data"]["masterocr"]


def test_id_table_files_and_their_errors(tmp_path):
    table = tmp_path / "charset_size=4.txt"
    table.write_text("0\t \n3\t<nul>\n1\ta\n2\tb\n1\tA\n", encoding="utf-8")
    assert load_charset(str(table)) == " ab"
    assert read_id_charset(str(table)).char_to_id["A"] == 1
    bad = tmp_path / "bad.txt"
    bad.write_text("0\t \n1\tab\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"line 2 maps id 1 to 'ab'"):
        read_id_charset(str(bad))
    clash = tmp_path / "clash.txt"
    clash.write_text("0\ta\n1\ta\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: 'a' has id 1 and 0"):
        read_id_charset(str(clash))
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("0\ta\nb\n", encoding="utf-8")  # neither format throughout: one-per-line check names it
    with pytest.raises(ValueError, match="line 1 holds"):
        load_charset(str(mixed))


def test_strip_null():
    assert strip_null([5, 6, 133, 133], 133) == [5, 6]
    assert strip_null([5, 6], 133) == [5, 6] and strip_null([133] * 3, 133) == []
    with pytest.raises(ValueError, match="id 7 after the null padding"):
        strip_null([5, 133, 7, 133], 133)


# ---- the dataset ----------------------------------------------------------------------------------------

@pytest.fixture
def fsns_dir(tmp_path):
    """FSNS's layout: test/test-0000N-of-00002 shards (no charset file: the shipped one is used)."""
    folder = tmp_path / "fsns" / "test"
    write_fsns_shard(folder / "test-00000-of-00002", [(png(i), t) for i, t in enumerate(TEXTS[:3])])
    write_fsns_shard(folder / "test-00001-of-00002", [(png(10 + i), t) for i, t in enumerate(TEXTS[3:])],
                     views=3)
    return folder


def test_records_have_fsns_features(fsns_dir):
    data = next(iter_records(fsns_dir / "test-00000-of-00002")).data
    example = Example()
    example.ParseFromString(data)
    feature = example.features.feature
    ids = list(feature["image/class"].int64_list.value)
    assert len(ids) == 37 and ids[len(TEXTS[0]):] == [133] * (37 - len(TEXTS[0]))
    assert list(feature["image/unpadded_class"].int64_list.value) == ids[:len(TEXTS[0])]
    assert feature["image/text"].bytes_list.value == [TEXTS[0].encode()]
    assert feature["image/format"].bytes_list.value == [b"PNG"]
    assert [feature[k].int64_list.value[0] for k in ("image/width", "image/orig_width", "image/height")] == \
        [60, 60, 15]


def test_dataset_reads_labels_images_and_names(fsns_dir):
    shards = sorted(str(p) for p in fsns_dir.iterdir())
    ds = FsnsDataset(shards)
    assert ds.labels == TEXTS and len(ds) == 5
    assert ds.name(3) == f"{shards[1]}:0" and ds.sample_id(1) == "test-00000-of-00002:1"
    assert ds.views == {4: 3, 3: 2}                                  # 4 x orig_width / width
    image, label, name = ds[2]
    assert label == "Place de l’Église" and name == f"{shards[0]}:2"
    assert np.array_equal(np.asarray(image), np.asarray(load_image(png(2))))
    assert ds.image_size(4) == (60, 15)
    assert ds.raw(0)[0] == png(0)
    assert not ds.report.dropped and not ds.text_mismatches


def test_path_sources_shard_folder_glob_and_lists(fsns_dir):
    one = open_dataset(fsns_dir / "test-00001-of-00002")
    assert isinstance(one, FsnsDataset) and one.labels == TEXTS[3:]
    folder = open_dataset(fsns_dir)                                   # a folder of shards: one source
    assert isinstance(folder, FsnsDataset) and folder.labels == TEXTS and folder.source == str(fsns_dir)
    pattern = str(fsns_dir / "test-*")
    globbed = build_dataset(pattern, charset="fsns", max_length=37)   # what training configs call
    assert globbed.names == [pattern] and globbed.labels == TEXTS
    listed = build_dataset(sorted(str(p) for p in fsns_dir.iterdir()), charset="fsns", max_length=37)
    assert len(listed.names) == 2 and listed.labels == TEXTS
    short = build_dataset(pattern, charset="fsns", max_length=16)     # training filters apply as anywhere
    assert short.labels == ["Rue de la Paix", "Impasse Æ 12"] and short.report.dropped["too_long"] == 3
    lower = build_dataset(pattern, charset="36")
    assert lower.report.kept == 0 and lower.report.dropped["out_of_charset"] == 5
    with pytest.raises(FileNotFoundError, match="no file matches"):
        open_dataset(str(fsns_dir / "nothing-*"))


def test_the_datasets_own_charset_file_is_used(tmp_path):
    """attention_ocr-style data: its own charset_size=N.txt beside the split folders gives other ids."""
    root = tmp_path / "mine"
    (root / "train").mkdir(parents=True)
    (root / "charset_size=4.txt").write_text("0\tz\n1\ty\n2\t \n3\t<nul>\n", encoding="utf-8")
    record = make_example({"image/encoded": png(0), "image/class": [1, 0, 2, 0, 3, 3], "image/text": "yz z"})
    write_tfrecord(root / "train" / "train-00000-of-00001", [record])
    ds = open_dataset(root / "train")
    assert ds.labels == ["yz z"] and ds.charset.path.endswith("charset_size=4.txt")
    assert FsnsDataset(root / "train" / "train-00000-of-00001", charset="fsns").labels == ["l ’ éé"]


def test_held_out_split_of_shards(fsns_dir):
    from masterocr.data.datasets import split_held_out

    held = split_held_out(open_dataset(fsns_dir), 0.5, seed=3, held_out=True)
    rest = split_held_out(open_dataset(fsns_dir), 0.5, seed=3, held_out=False)
    assert sorted(held.labels + rest.labels) == sorted(TEXTS) and 0 < len(held) < 5


# ---- bad input ------------------------------------------------------------------------------------------

def _damaged_shard(path: Path) -> None:
    """Records 0..8: good, no image, not an image, id 150, broken padding, good, data CRC broken, good with
    image/text spelled with ' (same ids as ’), good whose image/text disagrees; then a truncated record."""
    good = fsns_example(png(0), "Rue A")
    no_image = make_example({"image/class": [20, 133], "image/text": "a"})
    not_png = make_example({"image/encoded": b"\x89PNG\r\n\x1a\n garbage", "image/class": [20, 133]})
    outside = make_example({"image/encoded": png(1), "image/class": [20, 150, 133]})
    padding = make_example({"image/encoded": png(2), "image/class": [20, 133, 21, 133]})
    crc_broken = bytearray(frame_record(fsns_example(png(3), "Rue C")))
    crc_broken[20] ^= 0xFF                                        # a data byte: the data CRC fails
    apostrophe = make_example({"image/encoded": png(4), "image/class": [1, 2, 20, 133], "image/text": "l'a"})
    mismatch = make_example({"image/encoded": png(5), "image/class": [20, 133], "image/text": "Rue B"})
    truncated = frame_record(fsns_example(png(6), "Rue D"))[:-30]
    with open(path, "wb") as f:
        for record in (good, no_image, not_png, outside, padding):
            f.write(frame_record(record))
        f.write(frame_record(fsns_example(png(7), "Rue E")))
        f.write(bytes(crc_broken))
        f.write(frame_record(apostrophe))
        f.write(frame_record(mismatch))
        f.write(truncated)


def test_bad_records_are_skipped_counted_and_named(tmp_path, caplog):
    shard = tmp_path / "train-00000-of-00001"
    _damaged_shard(shard)
    with caplog.at_level(logging.WARNING):
        ds = FsnsDataset(shard)
    assert ds.labels == ["Rue A", "Rue E", "l’a", "a"]              # everything readable is kept
    assert [ds.name(i) for i in range(4)] == [f"{shard}:{i}" for i in (0, 5, 7, 8)]
    assert ds.report.dropped == {"missing feature": 1, "bad image": 1, "id outside charset": 1,
                                 "bad class ids": 1, "bad record": 1, "damaged shard": 1}
    assert ds.report.total == 10 and ds.report.kept == 4
    log = caplog.text
    for index, words in [(1, "no image/encoded"), (2, "not an image"), (3, "class id 150"),
                         (4, "id 21 after the null padding"), (6, "data CRC mismatch")]:
        assert f"{shard}:{index}: record skipped" in log and words in log
    assert f"{shard}: stops at record 9: truncated" in log and "the 9 record(s) before it are read" in log
    assert ds.text_mismatches == [f"{shard}:8: ids say 'a', image/text says 'Rue B'"]  # ' and ’ agreed
    assert "1 record(s) whose image/text differs" in log


def test_broken_framing_stops_the_shard_but_keeps_what_came_before(tmp_path, caplog):
    shard = tmp_path / "shard"
    good = frame_record(fsns_example(png(0), "Rue A"))
    bad_length = bytearray(frame_record(fsns_example(png(1), "Rue B")))
    bad_length[0] ^= 0x01                                          # the length no longer matches its CRC
    shard.write_bytes(good + bytes(bad_length) + good)
    with caplog.at_level(logging.WARNING):
        ds = FsnsDataset(shard)
    assert ds.labels == ["Rue A"] and ds.report.dropped == {"damaged shard": 1}
    assert "stops at record 1: length CRC mismatch" in caplog.text


def test_inspect_and_build_report_damage(tmp_path, capsys):
    shard = tmp_path / "shards" / "train-00000-of-00001"
    shard.parent.mkdir()
    _damaged_shard(shard)
    montage = tmp_path / "m.png"
    assert main(["data", "inspect", str(shard), "--montage", str(montage), "--samples", "4"]) == 0
    out = capsys.readouterr().out
    assert f"{shard}: 4 samples (FSNS TFRecord, 1 shard)" in out
    assert "not counted: 6 entries (1 bad class ids, 1 bad image, 1 bad record, 1 damaged shard" in out
    assert f"damaged shard: {shard}: stops at record 9" in out
    assert "1 record(s) of" in out and "image/text differs" in out
    assert "fsns:        4 (100.0%)" in out and montage.is_file()

    out_lmdb = tmp_path / "out.lmdb"
    assert main(["data", "build", str(shard.parent), str(out_lmdb)]) == 0
    out = capsys.readouterr().out
    assert "dropped 6 entries" in out and f"wrote 4 samples to {out_lmdb}" in out
    assert open_dataset(out_lmdb).labels == ["Rue A", "Rue E", "l’a", "a"]


def test_image_that_breaks_after_its_header_is_skipped_when_read(tmp_path, caplog):
    """The header check at open is cheap; a PNG cut short inside its data fails when decoded, named."""
    cut = png(0, size=(120, 40))
    shard = tmp_path / "shard"
    write_tfrecord(shard, [fsns_example(cut[: len(cut) // 2], "Rue A", size=(120, 40)),
                           fsns_example(png(1), "Rue B")])
    ds = FsnsDataset(shard)
    assert len(ds) == 2
    with caplog.at_level(logging.WARNING):
        assert ds[0] is None and ds[1][1] == "Rue B"
    assert f"{shard}:0" in caplog.text and ds.num_failed == 1


# ---- round trip through the CLI -----------------------------------------------------------------------

def test_round_trip_shards_to_lmdb_and_back(fsns_dir, tmp_path, capsys):
    out_lmdb = tmp_path / "fsns.lmdb"
    assert main(["data", "build", str(fsns_dir / "test-00000-of-00002"), str(fsns_dir / "test-00001-of-00002"),
                 str(out_lmdb), "--charset", "fsns", "--max-length", "37"]) == 0
    out = capsys.readouterr().out
    assert "read 5 entries" in out and f"wrote 5 samples to {out_lmdb}" in out
    lmdb_set = open_dataset(out_lmdb)
    shards = open_dataset(fsns_dir)
    assert lmdb_set.labels == shards.labels == TEXTS
    for i in range(5):
        assert lmdb_set.raw(i)[0] == shards.raw(i)[0]                 # the PNG bytes, untouched


def test_eval_scores_fsns_shards(tiny_weights, tmp_path, capsys):
    """masterocr eval on a folder of FSNS-format shards: one row, read by the tiny model of conftest."""
    from conftest import WORDS
    from wordimages import render_word

    def encoded(word):
        buf = io.BytesIO()
        render_word(word).save(buf, "PNG")
        return buf.getvalue()

    folder = tmp_path / "fsns" / "test"
    write_fsns_shard(folder / "test-00000-of-00001", [(encoded(w), w) for w in WORDS])
    out_dir = tmp_path / "results"
    assert main(["eval", str(tiny_weights), "--data", str(folder), "--protocol", "raw", "--max-length", "0",
                 "--no-progress", "--output", str(out_dir)]) == 0
    out = capsys.readouterr().out
    rows = {line.strip("|").split("|")[0].strip(): [c.strip() for c in line.strip("|").split("|")[1:]]
            for line in out.splitlines() if line.startswith("|") and not line.startswith("|-")}
    assert rows["fsns"][:4] == [str(len(WORDS)), "100.00", "100.00", "100.00"]   # samples, acc, 1-NED, char F1
    result = json.loads((out_dir / "results.json").read_text())["results"][0]
    assert result["accuracy"] == 1.0 and result["char_f1"] == 1.0


# ---- the seed model's metrics ---------------------------------------------------------------------------

def test_annotation_and_character_precision_are_accuracy_and_corpus_char_f1():
    """CRNN-Seq2Seq-OCR's eval.py: annotation precision = words right / words; character precision =
    sum(2 LCS(gt, pred)) / sum(len(gt) + len(pred)) over the whole set (not a mean of per-word ratios)."""
    from masterocr.evaluation import format_markdown, score

    pairs = [("Rue de la Paix", "Rue de la Paix"),     # right: LCS 14
             ("Rue de Ia Paix", "Rue de la Paix"),     # one substitution: LCS 13
             ("Place", "Place du Marché"),             # cut short: LCS 5
             ("", "Quai")]                             # nothing read: LCS 0
    m = score(pairs, protocol="raw", max_length=None)
    assert m.accuracy == pytest.approx(1 / 4)
    lcs, total = 14 + 13 + 5 + 0, (14 + 14) + (14 + 14) + (5 + 15) + (0 + 4)
    assert m.char_f1 == pytest.approx(2 * lcs / total)                       # 64 / 80 = 0.8
    per_word_mean = (1 + 26 / 28 + 10 / 20 + 0) / 4
    assert m.char_f1 != pytest.approx(per_word_mean)
    assert m.char_precision == pytest.approx(lcs / (14 + 14 + 5 + 0))        # over predicted characters
    assert m.char_recall == pytest.approx(lcs / (14 + 14 + 15 + 4))          # over label characters
    cells = [c.strip() for c in format_markdown([m]).splitlines()[2].strip("|").split("|")]
    assert cells[2] == "25.00" and cells[4] == "80.00"                       # Accuracy, Char F1


def test_metrics_cli_names_the_seed_metrics(tmp_path, capsys):
    (tmp_path / "labels.tsv").write_text("a.png\tRue A\nb.png\tRue B\n", encoding="utf-8")
    (tmp_path / "preds.tsv").write_text("a.png\tRue A\nb.png\tRue\n", encoding="utf-8")
    assert main(["metrics", str(tmp_path / "preds.tsv"), str(tmp_path / "labels.tsv")]) == 0
    out = capsys.readouterr().out
    assert "Accuracy (%)                    50.00" in out
    assert f"Char F1 (%)                     {100 * 2 * (5 + 3) / (10 + 8):.2f}" in out
    assert 'Accuracy "annotation precision" and Char F1 "character precision"' in out


def test_eval_row_name_of_a_glob_is_its_folder():
    from masterocr.evaluation import benchmark_name

    assert benchmark_name("data/FSNS/test/test-*") == "FSNS" and benchmark_name("data/FSNS/test") == "FSNS"
    assert benchmark_name("data/FSNS/test/test-00000-of-00064") == "test-00000-of-00064"
