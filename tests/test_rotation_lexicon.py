"""Issue 20: rotation in the training pipeline (labels kept), orientation search for read / eval / the API,
and lexicon-constrained evaluation (SVT-50 style), on the small model trained in conftest.py."""

import json

import numpy as np
import pytest
import torch
from wordimages import render_word

from conftest import WORDS
from masterocr.cli.main import main
from masterocr.data.augment import Augment, build_augment
from masterocr.data.image import ImageTransform, rotate_image
from masterocr.lexicon import Lexicon


@pytest.fixture
def folder(tmp_path):
    """labels.tsv folder of the rendered WORDS, named like SVT crops: <photo>_<n>.png (two photos)."""
    root = tmp_path / "words"
    (root / "images").mkdir(parents=True)
    lines = []
    for i, w in enumerate(WORDS):
        name = f"{'p1' if i < 4 else 'p2'}_{i}.png"
        render_word(w).save(root / "images" / name)
        lines.append(f"images/{name}\t{w}")
    (root / "labels.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


# ---- rotation in the training pipeline -------------------------------------------------------------------

def test_augment_turns_its_share_of_images_by_90_180_270():
    img = render_word("road")
    turns = {0: 0, 90: 0, 180: 0, 270: 0}
    aug = Augment({}, num_ops=0, seed=3, rotate90=0.3)
    candidates = {d: np.asarray(rotate_image(img, d)) for d in turns}
    for _ in range(300):
        out = np.asarray(aug(img))
        turns[next(d for d, c in candidates.items() if c.shape == out.shape and np.array_equal(c, out))] += 1
    assert 0.2 < (300 - turns[0]) / 300 < 0.4 and all(turns[d] > 15 for d in (90, 180, 270))
    assert build_augment("none") is None and build_augment("none", rotate90=0.5).rotate90 == 0.5
    assert build_augment({"preset": "light", "rotate90": 0.2}).rotate90 == 0.2
    with pytest.raises(ValueError, match="rotate90"):
        Augment({}, rotate90=1.5)


def test_rotation_in_the_training_mix_keeps_labels(folder):
    from masterocr.charset import AttentionTokenizer
    from masterocr.training.data import RecognitionData

    def batches(rate):
        cfg = {"data": {"train": [{"path": str(folder), "weight": 1}, {"synthetic": {"length": 20, "seed": 1},
                                                                      "weight": 1}],
                        "val": [{"name": "upside-down", "path": str(folder), "rotate": 180}],
                        "epoch_size": 8, "augment": "none", "rotate90": rate, "num_workers": 0},
               "train": {"batch_size": 8, "seed": 5}}
        data = RecognitionData(cfg, AttentionTokenizer("36", 8), (32, 96))
        data.setup("fit")
        return data, list(data.train_dataloader())

    data, turned = batches(1.0)
    _, upright = batches(0.0)
    transform = ImageTransform(32, 96)
    for (a, la, na), (b, lb, nb) in zip(turned, upright):
        assert la == lb and na == nb  # the same samples, the same labels
        for image, name in zip(a, na):
            if name.endswith(".png"):  # a real crop: exactly one of its three turns
                original = folder / "images" / name.rsplit("/", 1)[-1]
                assert any(torch.equal(image, transform(rotate_image(transform_source(original), d)))
                           for d in (90, 180, 270))
        assert not torch.equal(a, b)
    image, label, _ = data.val_sets[0][1][0]
    assert torch.equal(image, transform(rotate_image(transform_source(folder / "images" / "p1_0.png"), 180)))
    bad = {"data": {"train": [{"path": str(folder), "rotate": 90}], "num_workers": 0}, "train": {"batch_size": 2}}
    with pytest.raises(ValueError, match="rotate"):
        RecognitionData(bad, AttentionTokenizer("36", 8), (32, 96)).setup("fit")


def transform_source(path):
    from masterocr.data.image import load_image

    return load_image(path)


# ---- orientation search ----------------------------------------------------------------------------------

def test_orientation_auto_reads_rotated_words_upright(tiny_weights):
    import masterocr

    rec = masterocr.load(tiny_weights, orientation="auto")
    rec.upright_margin = 0.0  # the plain maximum: this overfit model reads some words upside down confidently
    upright = masterocr.load(tiny_weights)
    for word in WORDS[:4]:
        for turn in (90, 180, 270):  # the photo arrives turned counter-clockwise by `turn`
            img = rotate_image(render_word(word), turn)
            r = rec.read(img)
            assert (r.text, r.orientation) == (word, (360 - turn) % 360)
        assert rec.read(render_word(word)).orientation == 0
    misread = sum(upright.read(rotate_image(render_word(w), 90)).text != w for w in WORDS)
    assert misread >= 6  # without the search, turned words are not read
    assert "orientation=auto" in repr(rec)
    with pytest.raises(ValueError, match="orientation"):
        masterocr.load(tiny_weights, orientation="sideways")


def test_orientation_search_prefers_upright_within_the_margin():
    from masterocr.reading import UPRIGHT_MARGIN, ReadResult, most_confident_turns

    def turns(*confidences):
        return [ReadResult(f"t{i}", c, []) for i, c in enumerate(confidences)]

    assert UPRIGHT_MARGIN > 0
    kept = most_confident_turns(turns(0.80, 0.84, 0.1, 0.2) + turns(0.5, 0.1, 0.9, 0.2), 4, upright_margin=0.05)
    assert [(r.text, r.orientation) for r in kept] == [("t0", 0), ("t2", 180)]
    kept = most_confident_turns(turns(0.80, 0.84, 0.1, 0.2), 4, upright_margin=0.0)
    assert (kept[0].text, kept[0].orientation) == ("t1", 90)


def test_read_and_eval_cli_orientation_auto(tiny_weights, folder, tmp_path, capsys):
    turned = tmp_path / "turned.png"
    rotate_image(render_word("home"), 270).save(turned)
    assert main(["read", str(turned), "--model", str(tiny_weights), "--orientation", "auto", "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip())
    assert record["text"] == "home" and record["orientation"] == 90
    code = main(["eval", str(tiny_weights), "--data", str(folder), "--rotation", "90", "--orientation", "auto",
                 "--no-progress", "--output", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0 and "Rotation 90°, orientation auto" in out
    row = next(line for line in out.splitlines() if line.startswith("| words"))
    assert row.split("|")[3].strip() == "100.00"
    assert json.loads((tmp_path / "out" / "results.json").read_text())["meta"]["orientation"] == "auto"


# ---- the tall-crop rule -----------------------------------------------------------------------------------

def test_turn_tall_turns_only_crops_at_least_one_and_a_half_times_taller_than_wide():
    from PIL import Image

    from masterocr.data.image import TALL_RATIO, turn_tall

    assert TALL_RATIO == 1.5
    for (w, h), turned in [((20, 30), True), ((20, 29), False), ((60, 20), False), ((20, 80), True)]:
        img = Image.new("RGB", (w, h))
        assert turn_tall(img).size == ((h, w) if turned else (w, h))
    assert turn_tall(Image.new("RGB", (20, 80)), 0).size == (20, 80)  # ratio 0: off
    word = render_word("road")
    # a word turned clockwise (counter-clockwise by 270) comes back upright, pixel for pixel
    assert np.array_equal(ImageTransform(32, 96, tall_turn=1.5).array(rotate_image(word, 270)),
                          ImageTransform(32, 96).array(word))
    assert np.array_equal(ImageTransform(32, 96, tall_turn=1.5).array(rotate_image(word, 90)),
                          ImageTransform(32, 96).array(rotate_image(word, 180)))  # the other way: upside down
    assert np.array_equal(ImageTransform(32, 96, tall_turn=1.5).array(word), ImageTransform(32, 96).array(word))


def test_orientation_tall_reads_a_sideways_word_as_its_upright_or_upside_down_turn(tiny_weights, tmp_path, capsys):
    import masterocr

    tall, upright = masterocr.load(tiny_weights, orientation="tall"), masterocr.load(tiny_weights)
    assert upright.orientation == "upright" and "orientation=tall" in repr(tall)
    for word in WORDS[:4]:
        img = render_word(word)
        for turn in (0, 180):  # wide crops: one reading, the upright recognizer's
            got, want = tall.read(rotate_image(img, turn)), upright.read(rotate_image(img, turn))
            assert (got.text, got.confidence, got.orientation) == (want.text, want.confidence, 0)
        # turned clockwise: the tall crop's quarter turn is the upright word, and more confident than the crop
        got = tall.read(rotate_image(img, 270))
        assert (got.text, got.orientation) == (word, 90)
        assert got.confidence == pytest.approx(upright.read(img).confidence, abs=1e-6)
        sideways = upright.read(rotate_image(img, 90))  # turned the other way: upside down or as it is
        got = tall.read(rotate_image(img, 90))
        options = {(upright.read(rotate_image(img, 180)).text, 90), (sideways.text, 0)}
        assert (got.text, got.orientation) in options
    turned = tmp_path / "turned.png"
    rotate_image(render_word("home"), 270).save(turned)
    assert main(["read", str(turned), "--model", str(tiny_weights), "--orientation", "tall", "--json",
                 "--attention", str(tmp_path / "att")]) == 0
    record = json.loads(capsys.readouterr().out.strip())
    assert (record["text"], record["orientation"]) == ("home", 90) and (tmp_path / "att" / "turned.png").exists()


def test_tall_views_keep_the_more_confident_reading_of_a_tall_crop():
    from masterocr.reading import ReadResult, more_confident_of_tall_views

    readings = [ReadResult("turned", 0.6, []), ReadResult("as-is", 0.9, []), ReadResult("wide", 0.2, []),
                ReadResult("turned", 0.7, []), ReadResult("as-is", 0.7, [])]
    kept = more_confident_of_tall_views(readings, [2, 1, 2])
    assert [(r.text, r.orientation) for r in kept] == [("as-is", 0), ("wide", 0), ("turned", 90)]


def test_weights_trained_with_the_tall_rule_read_with_it_by_default_through_export_too(tiny_weights, tmp_path):
    import onnx

    import masterocr
    from masterocr.export import export_model, write_metadata
    from masterocr.runtime.graphs import ExportFolderError
    from masterocr.weights import load_model, save_weights

    model, cfg = load_model(tiny_weights)
    path = save_weights(model, cfg, tmp_path / "tall.safetensors", extra={"orientation": "tall"})
    assert masterocr.load(path).orientation == "tall"
    assert masterocr.load(path, orientation="upright").orientation == "upright"  # the caller still chooses
    assert masterocr.load(save_weights(model, cfg, tmp_path / "odd.safetensors",
                                       extra={"orientation": "sideways"})).orientation == "upright"
    folder = tmp_path / "export"
    export_model(path, folder)
    rec = masterocr.load(folder)
    word = render_word("home")
    assert rec.orientation == "tall" and rec.read(rotate_image(word, 270)).text == "home"
    entry = folder / "encoder.onnx"
    graph = onnx.load(str(entry))
    meta = json.loads({p.key: p.value for p in graph.metadata_props}["masterocr"])
    write_metadata(entry, {**meta, "orientation": "sideways"})
    with pytest.raises(ExportFolderError, match="encoder.onnx: metadata orientation 'sideways'"):
        masterocr.load(folder)


# ---- lexicon ---------------------------------------------------------------------------------------------

def test_lexicon_formats_and_snapping(tmp_path):
    per_photo = tmp_path / "lexicon.txt"
    per_photo.write_text("18_01 THE,TRIPLE,DOOR\n13_11 MAGIC,AUTO,SALES\n", encoding="utf-8")
    lex = Lexicon.load(per_photo)
    assert lex.words_for("images/18_01_3.png") == ["THE", "TRIPLE", "DOOR"]
    assert lex.snap("DQOR", "18_01_3.png") == "DOOR"
    assert lex.snap("trlple", "x/18_01_12.jpg", str.upper) == "TRIPLE"
    assert lex.snap("sale", "13_11_1.png", str.lower) == "sales"  # both sides under the protocol
    with pytest.raises(KeyError, match="99_99_1.png"):
        lex.words_for("99_99_1.png")
    words = tmp_path / "words.txt"
    words.write_text("cat\ncar\ncart\n", encoding="utf-8")
    glob = Lexicon.load(words)
    assert glob.snap("cax", "anything.png") == "cat"  # a tie between cat and car: the first listed wins
    assert glob.snap("carts", "a.png") == "cart"
    bad = tmp_path / "bad.txt"
    bad.write_text("cat\ntwo words\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.txt:2"):
        Lexicon.load(bad)
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no words"):
        Lexicon.load(tmp_path / "empty.txt")


def test_eval_cli_lexicon_snaps_readings(tiny_weights, folder, tmp_path, capsys):
    # Labels the model cannot spell (it reads "cat", the label is "cats"): wrong without the lexicon, right
    # once the reading is snapped to the nearest word of its photo's lexicon.
    lines = (folder / "labels.tsv").read_text().splitlines()
    (folder / "labels.tsv").write_text("\n".join(line + "s" for line in lines) + "\n")
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("p1 " + ",".join(w + "s" for w in WORDS[:4]) + ",zebra\n"
                       "p2 " + ",".join(w + "s" for w in WORDS[4:]) + "\n")
    assert main(["eval", str(tiny_weights), "--data", str(folder), "--no-progress"]) == 0
    plain = capsys.readouterr().out
    assert main(["eval", str(tiny_weights), "--data", str(folder), "--no-progress", "--lexicon", str(lexicon),
                 "--output", str(tmp_path / "out")]) == 0
    snapped = capsys.readouterr().out
    accuracy = [next(line for line in out.splitlines() if line.startswith("| words")).split("|")[3].strip()
                for out in (plain, snapped)]
    assert accuracy == ["0.00", "100.00"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["meta"]["lexicon"] == str(lexicon)
    missing = tmp_path / "other.txt"
    missing.write_text("p1 cats,dogs\n")
    assert main(["eval", str(tiny_weights), "--data", str(folder), "--no-progress", "--lexicon", str(missing)]) == 2
    assert "p2_4.png" in capsys.readouterr().err
