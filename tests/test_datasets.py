"""Datasets: folders, label files, both LMDB layouts, trees, filtering, broken images, batching."""

import io
import json
import logging
import os
import pickle
import struct
import zlib

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from masterocr.data.datasets import (LabelFileDataset, LmdbDataset, MultiSourceDataset, build_dataset, collate,
                                     find_lmdb_dirs, is_lmdb_open, open_dataset, skipped_in_collate, write_lmdb)
from masterocr.data.image import ImageTransform, load_image

LABELS = ["hello", "World", "42", "a-b", "straße", "北京", "x" * 30, ""]


def word_image(i: int) -> Image.Image:
    """A small image unique to i (size and colours), so round trips can be checked pixel for pixel."""
    rng = np.random.default_rng(i)
    arr = rng.integers(0, 256, size=(16 + i, 40 + 3 * i, 3), dtype=np.uint8)
    return Image.fromarray(arr)


def png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def make_folder(root, labels=LABELS, label_file="labels.tsv"):
    """root/images/NNN.png + root/labels.tsv (`images/NNN.png<TAB>label`)."""
    (root / "images").mkdir(parents=True)
    lines = []
    for i, label in enumerate(labels):
        word_image(i).save(root / "images" / f"{i:03d}.png")
        lines.append(f"images/{i:03d}.png\t{label}")
    (root / label_file).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def raw_lmdb(path, entries: dict[str, bytes]):
    """An LMDB written directly with the lmdb package (independent of write_lmdb)."""
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in entries.items():
            txn.put(key.encode(), value)
    env.close()


def huge_png(width=15000, height=10000) -> bytes:
    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


# ---- folders and round trips ----------------------------------------------------------------------------

def test_folder_dataset_reads_labels_and_images(tmp_path):
    make_folder(tmp_path)
    ds = open_dataset(tmp_path)
    assert isinstance(ds, LabelFileDataset) and ds.format == "tsv"
    assert ds.labels == LABELS[:-1]  # raw labels kept; only the empty one is dropped
    assert ds.report.dropped == {"empty": 1}
    img, label, name = ds[0]
    assert label == "hello" and name == str(tmp_path / "images" / "000.png")
    assert np.array_equal(np.asarray(img), np.asarray(word_image(0)))
    assert ds.image_size(3) == word_image(3).size


def test_folder_to_lmdb_to_dataset_round_trip(tmp_path):
    folder = make_folder(tmp_path / "folder")
    source = open_dataset(folder)
    n = write_lmdb(tmp_path / "out.lmdb", (source.raw(i)[:2] for i in range(len(source))))
    assert n == len(source) == 7
    ds = open_dataset(tmp_path / "out.lmdb")
    assert isinstance(ds, LmdbDataset) and ds.layout == "standard"
    assert ds.labels == source.labels
    for i in range(len(ds)):
        (a, la, _), (b, lb, name) = source[i], ds[i]
        assert la == lb and name == f"{ds.path}:{i + 1}"
        assert np.array_equal(np.asarray(a), np.asarray(b))
        assert ds.raw(i)[0] == source.raw(i)[0]  # bytes stored unchanged


def test_write_lmdb_keys_for_both_layouts(tmp_path):
    samples = [(png_bytes(word_image(i)), f"w{i}") for i in range(3)]
    write_lmdb(tmp_path / "std", samples, layout="standard")
    write_lmdb(tmp_path / "master", samples, layout="master")
    env = lmdb.open(str(tmp_path / "std"), readonly=True, lock=False)
    with env.begin() as txn:
        assert txn.get(b"num-samples") == b"3"
        assert txn.get(b"label-000000003") == b"w2" and txn.get(b"image-000000001") == samples[0][0]
    env.close()
    env = lmdb.open(str(tmp_path / "master"), readonly=True, lock=False)
    with env.begin() as txn:
        assert txn.get(b"nSamples") == b"3"
        assert txn.get(b"transcript-3") == b"w2" and txn.get(b"image-1") == samples[0][0]
    env.close()
    assert open_dataset(tmp_path / "master").layout == "master"


def test_write_lmdb_grows_map_refuses_overwrite_and_leaves_no_temp(tmp_path):
    big = [(bytes(np.random.default_rng(i).integers(0, 256, 200_000, dtype=np.uint8)), f"s{i}")
           for i in range(12)]
    n = write_lmdb(tmp_path / "grow", iter(big), map_size=1 << 20, commit_every=4)  # 2.4 MB into 1 MB
    assert n == 12
    assert [open_dataset(tmp_path / "grow").raw(i)[0] for i in (0, 11)] == [big[0][0], big[11][0]]
    with pytest.raises(FileExistsError):
        write_lmdb(tmp_path / "grow", big[:1])
    assert write_lmdb(tmp_path / "grow", big[:1], overwrite=True) == 1
    assert len(open_dataset(tmp_path / "grow")) == 1

    def failing():
        yield big[0]
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError):
        write_lmdb(tmp_path / "broken", failing())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grow"]  # no half-written output, no temp dir


@pytest.mark.parametrize("layout, keys", [
    ("standard", ("num-samples", "image-%09d", "label-%09d")),
    ("master", ("nSamples", "image-%d", "transcript-%d")),
])
def test_reads_lmdb_written_by_other_tools(tmp_path, layout, keys):
    count_key, image_key, label_key = keys
    entries = {count_key: b"3"}
    for i in range(1, 4):
        entries[image_key % i] = png_bytes(word_image(i))
        entries[label_key % i] = f"word{i}".encode()
    raw_lmdb(tmp_path / "db", entries)
    ds = open_dataset(tmp_path / "db")
    assert ds.layout == layout and len(ds) == 3
    img, label, name = ds[2]
    assert label == "word3" and name.endswith(":3")
    assert np.array_equal(np.asarray(img), np.asarray(word_image(3)))
    assert len(open_dataset(tmp_path / "db" / "data.mdb")) == 3  # data.mdb path works too


def test_lmdb_without_count_key_is_a_clear_error(tmp_path):
    raw_lmdb(tmp_path / "db", {"something": b"else"})
    with pytest.raises(ValueError, match="num-samples"):
        open_dataset(tmp_path / "db")


def test_lmdb_environment_is_opened_lazily_shared_and_picklable(tmp_path):
    write_lmdb(tmp_path / "db", [(png_bytes(word_image(0)), "a")])
    ds = open_dataset(tmp_path / "db")
    assert not is_lmdb_open(ds.path)  # construction only reads labels, then closes
    ds[0]
    assert is_lmdb_open(ds.path)
    again = open_dataset(tmp_path / "db")  # a second dataset on the same files shares the environment
    assert again[0][1] == "a" and ds[0][1] == "a"
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[0][1] == "a"


def test_dataloader_workers_read_lmdb(tmp_path):
    write_lmdb(tmp_path / "db", [(png_bytes(word_image(i)), f"w{i}") for i in range(8)])
    ds = build_dataset(tmp_path / "db", transform=ImageTransform(16, 32))
    ds.datasets[0][0]  # open the environment in the parent first: workers must open their own
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate)
    labels = [label for _, batch_labels, _ in loader for label in batch_labels]
    assert labels == [f"w{i}" for i in range(8)]


# ---- label file formats ---------------------------------------------------------------------------------

def test_master_txt_label_file(tmp_path):
    make_folder(tmp_path, labels=["x"] * 3)
    (tmp_path / "gt.txt").write_text("images/000.png,BEACH\nimages/001.png,a,b\nno separator here\n\n"
                                     "images/002.png,RONALDO\n", encoding="utf-8")
    ds = open_dataset(tmp_path / "gt.txt")
    assert ds.format == "txt"
    assert ds.labels == ["BEACH", "a,b", "RONALDO"]  # split at the first comma only
    assert ds.report.dropped == {"malformed": 1}
    assert np.array_equal(np.asarray(ds[2][0]), np.asarray(word_image(2)))


def test_master_txt_with_separate_image_root(tmp_path):
    make_folder(tmp_path / "data", labels=["x"] * 2)
    (tmp_path / "gt.txt").write_text("000.png,ONE\n001.png,TWO\n", encoding="utf-8")
    ds = open_dataset(tmp_path / "gt.txt", image_root=tmp_path / "data" / "images")
    assert [ds[i][1] for i in range(2)] == ["ONE", "TWO"]
    assert ds[1] is not None


def test_master_jsonl_label_file(tmp_path):
    make_folder(tmp_path, labels=["x"] * 2)
    lines = [json.dumps({"ImageFile": "images/000.png", "Label": "Hello, world"}),
             json.dumps({"ImageFile": "images/001.png", "Label": "北京"}),
             json.dumps({"Image": "images/001.png"}), "{not json"]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds = open_dataset(tmp_path / "train.txt")  # detected from the content
    assert ds.format == "jsonl"
    assert ds.labels == ["Hello, world", "北京"]
    assert ds.report.dropped == {"malformed": 2}


def test_unknown_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a dataset"):
        open_dataset(tmp_path / "empty")


# ---- trees ----------------------------------------------------------------------------------------------

def test_tree_loader_concatenates_every_lmdb(tmp_path):
    root = tmp_path / "train"
    write_lmdb(root / "real" / "IIIT5K", [(png_bytes(word_image(i)), f"r{i}") for i in range(3)])
    write_lmdb(root / "synth" / "MJ" / "train", [(png_bytes(word_image(i)), f"s{i}") for i in range(2)],
               layout="master")
    (root / "notes").mkdir()
    assert [p.split("train/", 1)[1] for p in find_lmdb_dirs(root)] == ["real/IIIT5K", "synth/MJ/train"]
    ds = open_dataset(root)
    assert isinstance(ds, MultiSourceDataset) and len(ds) == 5
    assert ds.sizes == {str(root / "real" / "IIIT5K"): 3, str(root / "synth" / "MJ" / "train"): 2}
    assert ds.labels == ["r0", "r1", "r2", "s0", "s1"]
    assert ds[3][1] == "s0" and ds.source_of(3) == str(root / "synth" / "MJ" / "train")
    assert ds.raw(4)[1] == "s1" and ds.image_size(0) == word_image(0).size

    both = build_dataset([root, make_folder(tmp_path / "folder", labels=["f0", "f1"])], max_length=None)
    assert len(both) == 7 and list(both.sizes.values()) == [3, 2, 2]
    assert both[6][1] == "f1"


# ---- filtering ------------------------------------------------------------------------------------------

def test_filtering_by_charset_and_length_is_counted(tmp_path, caplog):
    make_folder(tmp_path)
    with caplog.at_level(logging.WARNING, logger="masterocr.data.datasets"):
        ds = build_dataset(tmp_path, charset="36", max_length=25)
    assert ds.labels == ["hello", "world", "42"]  # lower-cased for a case-insensitive charset
    report = ds.reports[0]
    assert report.total == 8 and report.kept == 3
    assert report.dropped == {"out_of_charset": 3, "too_long": 1, "empty": 1}
    assert "dropped 5" in caplog.text and "out_of_charset" in caplog.text
    assert "kept 3 of 8" in ds.summary()

    ds94 = build_dataset(tmp_path, charset="94", max_length=25)
    assert ds94.labels == ["hello", "World", "42", "a-b"]
    assert build_dataset(tmp_path, charset=None, max_length=None).labels == LABELS[:-1]  # raw labels


def test_filtering_can_remove_whitespace_and_skip_normalisation(tmp_path):
    make_folder(tmp_path, labels=["New York", "Caf\u0065\u0301"])
    assert build_dataset(tmp_path, charset="62").labels == []
    assert build_dataset(tmp_path, charset="62", remove_whitespace=True).labels == ["NewYork"]
    chars = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\u00e9\u0301"
    assert build_dataset(tmp_path, charset=chars).labels == ["Caf\u00e9"]  # NFC first
    assert build_dataset(tmp_path, charset=chars, normalize=False).labels == ["Cafe\u0301"]


# ---- broken images --------------------------------------------------------------------------------------

def make_broken_set(root):
    """Two good images and one of each kind of broken input, listed in labels.tsv."""
    images = root / "images"
    images.mkdir(parents=True)
    word_image(0).save(images / "good0.png")
    word_image(1).save(images / "good1.png")
    (images / "truncated.png").write_bytes(png_bytes(word_image(2))[:200])
    (images / "empty.png").write_bytes(b"")
    (images / "text.jpg").write_text("I am not a JPEG\n")
    (images / "huge.png").write_bytes(huge_png())
    names = ["good0.png", "truncated.png", "empty.png", "text.jpg", "huge.png", "missing.png", "good1.png"]
    (root / "labels.tsv").write_text("".join(f"images/{n}\tw{i}\n" for i, n in enumerate(names)))
    return names


def test_broken_images_are_skipped_with_a_warning_and_counted(tmp_path, caplog):
    names = make_broken_set(tmp_path)
    ds = build_dataset(tmp_path, transform=ImageTransform(16, 32))
    assert len(ds) == 7
    with caplog.at_level(logging.WARNING, logger="masterocr.data.datasets"):
        items = [ds[i] for i in range(len(ds))]
    assert [item is None for item in items] == [False, True, True, True, True, True, False]
    assert ds.num_failed == 5
    for name in names[1:6]:
        assert name in caplog.text  # every warning names its file
    assert "too large" in caplog.text and "empty" in caplog.text
    assert ds.image_size(5) is None and ds.image_size(0) == word_image(0).size


def test_batches_survive_broken_images(tmp_path, caplog):
    make_broken_set(tmp_path)
    ds = build_dataset(tmp_path, transform=ImageTransform(16, 32))
    before = skipped_in_collate()
    with caplog.at_level(logging.WARNING):
        batches = list(DataLoader(ds, batch_size=4, collate_fn=collate))
    images, labels, names = batches[0]
    assert images.shape == (1, 3, 16, 32) and labels == ["w0"] and names[0].endswith("good0.png")
    assert batches[1][1] == ["w6"]
    assert skipped_in_collate() - before == 5
    assert "dropped 3 unreadable of 4" in caplog.text


def test_collate_handles_all_bad_and_untransformed_batches():
    images, labels, names = collate([None, None])
    assert images.shape[0] == 0 and labels == [] and names == []
    pil = Image.new("RGB", (4, 4))
    images, labels, names = collate([(pil, "a", "n")])
    assert images == [pil] and labels == ["a"]


def test_raw_access_gives_bytes_without_decoding(tmp_path):
    make_folder(tmp_path, labels=["one", "two"])
    ds = build_dataset(tmp_path)
    data, label, name = ds.raw(1)
    assert isinstance(data, bytes) and label == "two" and name.endswith("001.png")
    assert np.array_equal(np.asarray(load_image(data)), np.asarray(word_image(1)))
    assert ds.name(0).endswith("000.png")
    assert isinstance(ds[0][0], Image.Image)  # no transform: an RGB PIL image
    assert torch.is_tensor(build_dataset(tmp_path, transform=ImageTransform(8, 16))[0][0])


# ---- held-out splits ------------------------------------------------------------------------------------

def test_held_out_split_is_complementary_stable_and_filter_independent(tmp_path, monkeypatch):
    from masterocr.data.datasets import is_held_out, parse_holdout, split_held_out

    words = [f"w{i}" for i in range(200)] + ["ä" * 3] * 20  # the last 20 fall outside the charset below
    root = make_folder(tmp_path / "set", labels=words)
    held = set(split_held_out(build_dataset(root, charset=None), 0.25, seed=3).datasets[0].keys)
    rest = set(split_held_out(build_dataset(root, charset=None), 0.25, seed=3, held_out=False).datasets[0].keys)
    filtered = split_held_out(build_dataset(root, charset="0123456789w"), 0.25, seed=3, held_out=False)
    everything = set(build_dataset(root, charset=None).datasets[0].keys)
    assert not held & rest and held | rest == everything     # never trained on what is held out
    assert 30 < len(held) < 80                               # about a quarter of 220
    # A training-side filter drops samples, but never moves one across the split.
    assert set(filtered.datasets[0].keys) == {k for k in rest if not words[int(k[-7:-4])].startswith("ä")}
    # The same split whatever the path's spelling (absolute, relative, a trailing slash) ...
    monkeypatch.chdir(tmp_path)
    for spelling in (str(root) + "/", "set", "./set/labels.tsv"):
        part = split_held_out(open_dataset(spelling), 0.25, seed=3)
        assert {part.sample_id(i) for i in range(len(part))} == {os.path.relpath(k, root) for k in held}
    # ... a different seed picks a different part, and the hash is pinned: a selection set must not move
    # between versions of masterocr (a model's held-out score would silently include training words).
    assert set(split_held_out(open_dataset(root), 0.25, seed=4).keys) != held
    assert "".join(str(int(is_held_out(f"images/{i:03d}.png", 0.5, 7))) for i in range(16)) == "0000011111110100"
    assert parse_holdout(0.2) == (0.2, 0, None) and parse_holdout({"fraction": "0.5", "seed": 2}) == (0.5, 2, None)
    for bad in (1.0, 0, {"seed": 1}, {"fraction": 0.1, "sed": 1}, "half", {"fraction": "x"}):
        with pytest.raises(ValueError, match="holdout"):
            parse_holdout(bad)


def test_held_out_split_by_group_keeps_a_photos_crops_together(tmp_path):
    from masterocr.data.datasets import holdout_key, is_held_out, parse_holdout, split_held_out

    photo = r"([^/]+)_\d+\.png$"  # IIIT5K's <photo>_<n>.png
    assert holdout_key("images/1049_7.png", photo) == "1049" and holdout_key("images/x.png", photo) == "images/x.png"
    assert holdout_key("images/1049_7.png", r"\d+") == "1049"  # no capture group: the whole match
    ids = [f"images/{p}_{n}.png" for p in range(40) for n in range(5)]
    sides = {}
    for sample in ids:
        sides.setdefault(sample.split("/")[1].split("_")[0], set()).add(is_held_out(sample, 0.5, 0, photo))
    assert all(len(s) == 1 for s in sides.values())           # every photo on one side
    assert 5 < sum(s == {True} for s in sides.values()) < 35  # about half of the photos held out
    assert any(len({is_held_out(f"images/{p}_{n}.png", 0.5, 0) for n in range(5)}) == 2 for p in range(40))
    # Through a dataset, and the spec's parse.
    root = make_folder(tmp_path / "set", labels=[f"w{i}" for i in range(12)])
    held = split_held_out(build_dataset(root, charset=None), 0.5, seed=0, group=r"^images/")
    assert len(held) in (0, 12)                               # one group: all or nothing
    assert parse_holdout({"fraction": 0.5, "group": photo}) == (0.5, 0, photo)
    with pytest.raises(ValueError, match="not a regular expression"):
        parse_holdout({"fraction": 0.5, "group": "(["})


def test_held_out_split_of_lmdb_tree_keeps_each_source(tmp_path):
    from masterocr.data.datasets import split_held_out

    for name in ("a", "b"):
        write_lmdb(tmp_path / "tree" / name, [(png_bytes(word_image(i)), f"{name}{i}") for i in range(60)])
    held = split_held_out(build_dataset(tmp_path / "tree"), 0.5, seed=0)
    rest = split_held_out(build_dataset(tmp_path / "tree"), 0.5, seed=0, held_out=False)
    assert len(held) + len(rest) == 120 and len(held.datasets) == 2
    assert not set(held.labels) & set(rest.labels)
    assert held[len(held) - 1][1] == held.labels[-1]        # offsets rebuilt after the split
