"""`masterocr data build` and `masterocr data inspect` end to end."""

import json

import numpy as np
import pytest
from PIL import Image

from masterocr.cli.main import main
from masterocr.data.datasets import open_dataset


def make_folder(root, labels):
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, label in enumerate(labels):
        arr = rng.integers(0, 256, size=(20, 40 + 5 * i, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "images" / f"{i}.png")
        lines.append(f"images/{i}.png\t{label}")
    (root / "labels.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def test_help_lists_the_data_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "build" in out and "inspect" in out
    assert main(["data"]) == 2  # no action: help and a usage error code


def test_build_and_inspect_a_folder(tmp_path, capsys):
    labels = ["Hello", "world", "42", "Straße", "a b", "émigré"]
    folder = make_folder(tmp_path / "words", labels)
    (folder / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with open(folder / "labels.tsv", "a", encoding="utf-8") as f:
        f.write("images/broken.png\tbroken\nimages/gone.png\tgone\n")
    out_lmdb = tmp_path / "words.lmdb"

    assert main(["data", "build", str(folder), str(out_lmdb)]) == 0
    out = capsys.readouterr().out
    assert "read 8 entries" in out and "skipped 2 unreadable images" in out
    assert "broken.png" in out and "gone.png" in out
    assert f"wrote 6 samples to {out_lmdb}" in out
    assert open_dataset(out_lmdb).labels == labels

    assert main(["data", "build", str(folder), str(out_lmdb)]) == 2  # never overwrites by accident
    assert "already exists" in capsys.readouterr().err

    montage = tmp_path / "sheet.png"
    assert main(["data", "inspect", str(out_lmdb), "--montage", str(montage), "--samples", "4"]) == 0
    out = capsys.readouterr().out
    assert f"{out_lmdb}: 6 samples" in out
    assert "36:        3 (50.0%)" in out  # hello, world, 42
    assert "62:        3 (50.0%)" in out
    assert "94:        3 (50.0%)" in out
    assert "characters outside 94" in out and "'é' x2" in out and "'ß' x1" in out
    assert "label length histogram" in out
    with Image.open(montage) as sheet:
        assert sheet.width > 100 and sheet.height > 50


def test_build_from_master_label_files_in_both_layouts(tmp_path, capsys):
    folder = make_folder(tmp_path / "m", ["unused"] * 3)
    (folder / "gt.txt").write_text("0.png,BEACH\n1.png,RONALDO\n2.png,a,b\n", encoding="utf-8")
    jsonl = folder / "gt.jsonl"
    jsonl.write_text("".join(json.dumps({"ImageFile": f"images/{i}.png", "Label": w}) + "\n"
                             for i, w in enumerate(["one", "two"])), encoding="utf-8")

    out_txt = tmp_path / "txt.lmdb"
    assert main(["data", "build", str(folder / "gt.txt"), str(out_txt), "--image-root",
                 str(folder / "images"), "--layout", "master"]) == 0
    ds = open_dataset(out_txt)
    assert ds.layout == "master" and ds.labels == ["BEACH", "RONALDO", "a,b"]

    out_jsonl = tmp_path / "jsonl.lmdb"
    assert main(["data", "build", str(jsonl), str(out_jsonl), "--charset", "36"]) == 0
    assert open_dataset(out_jsonl).labels == ["one", "two"]
    assert "wrote 2 samples" in capsys.readouterr().out


def test_build_with_charset_filter_reports_drops(tmp_path, capsys):
    folder = make_folder(tmp_path / "f", ["ok", "NOT ok", "x" * 40])
    assert main(["data", "build", str(folder), str(tmp_path / "o.lmdb"), "--charset", "36",
                 "--max-length", "25"]) == 0
    out = capsys.readouterr().out
    assert "dropped 2 entries: 1 out_of_charset, 1 too_long" in out
    assert "wrote 1 samples" in out


def test_inspect_reads_a_folder_and_writes_a_default_montage(tmp_path, capsys, monkeypatch):
    folder = make_folder(tmp_path / "IIIT" / "test", ["a", "bb", "ccc"])
    monkeypatch.chdir(tmp_path)
    assert main(["data", "inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "3 samples" in out and "tsv label file" in out
    assert (tmp_path / "IIIT_test_montage.png").is_file()


def test_missing_source_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err


def test_iiit5k_build_and_inspect(shared_data, tmp_path, capsys):
    src = shared_data / "IIIT5K" / "test"
    out_lmdb = tmp_path / "iiit5k.lmdb"
    assert main(["data", "build", str(src), str(out_lmdb)]) == 0
    assert "wrote 3000 samples" in capsys.readouterr().out
    montage = tmp_path / "iiit5k.png"
    assert main(["data", "inspect", str(out_lmdb), "--montage", str(montage)]) == 0
    out = capsys.readouterr().out
    assert f"{out_lmdb}: 3000 samples" in out
    assert montage.is_file() and montage.stat().st_size > 10_000
    ds = open_dataset(out_lmdb)
    assert ds.labels == open_dataset(src).labels


def test_synth_engine_is_wired_into_the_data_group(monkeypatch, capsys):
    import sys
    import types

    from masterocr.cli.main import build_parser

    def register(actions):
        parser = actions.add_parser("synth", help="render synthetic words")
        parser.set_defaults(func=lambda args: 0)

    monkeypatch.setitem(sys.modules, "masterocr.cli.synth", types.SimpleNamespace(register=register))
    args = build_parser().parse_args(["data", "synth"])
    assert args.func(args) == 0
