"""The synthetic word engine: determinism per index, font coverage, DejaVu-only operation, every effect at
probability 1, LMDB baking read back through the standard loader, and a Chinese charset."""

from __future__ import annotations

import io
import os
import pickle
import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from masterocr.charset import load_charset
from masterocr.data.image import ImageTransform
from masterocr.data.synth import (Renderer, SyntheticDataset, build_config, build_fonts, check_font,
                                  default_font_paths, sample_rng)
from masterocr.data.synth.config import EFFECT_NAMES
from masterocr.data.synth.text import TextSampler

DEJAVU = sorted(p for p in default_font_paths() if os.path.basename(p).startswith("DejaVu"))
needs_dejavu = pytest.mark.skipif(not DEJAVU, reason="DejaVu fonts (fonts-dejavu-core) are not installed")


@pytest.fixture(autouse=True, scope="module")
def _font_cache(tmp_path_factory):
    """Font-check results go to a cache private to these tests, not to ~/.cache."""
    before = os.environ.get("MASTEROCR_CACHE")
    os.environ["MASTEROCR_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        os.environ.pop("MASTEROCR_CACHE", None)
    else:
        os.environ["MASTEROCR_CACHE"] = before


@pytest.fixture(scope="module")
def dejavu_dir(tmp_path_factory):
    """A folder holding only the DejaVu fonts (symlinks), as on a machine with nothing else installed."""
    if not DEJAVU:
        pytest.skip("DejaVu fonts are not installed")
    folder = tmp_path_factory.mktemp("dejavu")
    for path in DEJAVU:
        os.symlink(path, folder / os.path.basename(path))
    return str(folder)


@pytest.fixture(scope="module")
def dejavu_fonts94(_font_cache, dejavu_dir):
    """The DejaVu FontSet for charset 94 with the default weights, checked once for the module."""
    return build_fonts("94", [dejavu_dir])


def _cjk_font() -> str | None:
    """An installed font that draws Chinese (fonts-wqy-microhei, Noto CJK, ...), or None."""
    pattern = re.compile(r"wqy|cjk|droidsansfallback|uming|ukai|zenhei|microhei|sc-|sourcehan", re.I)
    for path in default_font_paths():
        if not pattern.search(os.path.basename(path)):
            continue
        coverage, reason = check_font(path, "中文字")
        if len(coverage) == 3 and not reason:
            return path
    return None


# ---- determinism ------------------------------------------------------------------------------------------

@needs_dejavu
def test_sample_is_a_pure_function_of_seed_and_index(dejavu_dir, dejavu_fonts94):
    transform = ImageTransform(32, 100)
    ds = SyntheticDataset("94", transform=transform, seed=11, fonts=dejavu_fonts94, length=100)
    first = ds[7]
    for i in (3, 50, 8, 7000):  # other samples in between must not matter
        ds[i]
    again = ds[7]
    # A fresh object, with its own fonts and caches, as a DataLoader worker started anew would have.
    fresh = SyntheticDataset("94", transform=transform, seed=11, fonts=[dejavu_dir], length=100)
    other = fresh[7]
    # And a pickled copy, as a worker started with the spawn method receives.
    spawned = pickle.loads(pickle.dumps(ds))[7]
    for sample in (again, other, spawned):
        assert torch.equal(sample[0], first[0])
        assert sample[1:] == first[1:]
    assert first[2] == "synth:11:7"
    assert first[0].shape == (3, 32, 100)
    image, label = ds.render(7)
    assert label == first[1]
    assert np.array_equal(np.asarray(image), np.asarray(fresh.render(7)[0]))


@needs_dejavu
def test_samples_do_not_depend_on_render_order(dejavu_dir):
    """Caches (glyphs, kerning, fonts) must never leak one sample's state into another: render the same
    indices forwards with one renderer and backwards with another, with the per-glyph effects made common."""
    config = ["effects.size_jitter.p=0.5", "effects.kerning.p=0.7", "effects.curve.p=0.3"]
    forwards = Renderer("94", config=config, fonts=[dejavu_dir])
    backwards = Renderer("94", config=config, fonts=build_fonts("94", [dejavu_dir], config))
    indices = list(range(40))
    a = {i: forwards.render(sample_rng(8, i)) for i in indices}
    b = {i: backwards.render(sample_rng(8, i)) for i in reversed(indices)}
    for i in indices:
        assert a[i][1] == b[i][1]
        assert np.array_equal(np.asarray(a[i][0]), np.asarray(b[i][0])), i


@needs_dejavu
def test_different_index_or_seed_gives_a_different_sample(dejavu_fonts94):
    a = SyntheticDataset("94", seed=1, fonts=dejavu_fonts94)
    b = SyntheticDataset("94", seed=2, fonts=dejavu_fonts94)
    renders = [np.asarray(a.render(i)[0]) for i in range(4)] + [np.asarray(b.render(0)[0])]
    for i in range(len(renders)):
        for j in range(i + 1, len(renders)):
            assert renders[i].shape != renders[j].shape or not np.array_equal(renders[i], renders[j])
    with pytest.raises(IndexError):
        a.render(-1)


def test_sample_rng_is_keyed_by_seed_and_index():
    assert sample_rng(3, 9).random() == sample_rng(3, 9).random()
    assert sample_rng(3, 9).random() != sample_rng(3, 10).random()
    assert sample_rng(3, 9).random() != sample_rng(4, 9).random()


# ---- labels and fonts -------------------------------------------------------------------------------------

@needs_dejavu
@pytest.mark.parametrize("spec", ["36", "62", "94"])
def test_labels_respect_charset_and_max_length(spec, dejavu_dir):
    charset = load_charset(spec)
    renderer = Renderer(spec, height=32, max_length=12, fonts=[dejavu_dir])
    for i in range(60):
        rng = sample_rng(0, i)
        image, label = renderer.render(rng)
        assert 1 <= len(label) <= 12
        assert set(label) <= set(charset), label
        assert image.height == 32 and image.mode == "RGB"
        if spec == "36":
            assert label == label.lower()


@needs_dejavu
def test_every_charset_character_renders_with_the_chosen_fonts(dejavu_fonts94):
    charset = load_charset("94")
    fonts = dejavu_fonts94
    assert set(charset) <= fonts.coverage  # every character is drawn by some font
    size = 32
    for index, info in enumerate(fonts.fonts):
        for ch in info.coverage:  # and every character a font claims has ink
            if ch.isspace():
                continue
            mask = fonts.glyph(index, size, ch)[0]
            assert mask.size and mask.max() >= 128, (info.path, ch)
    # Text is only ever drawn with a font that covers all of it.
    sampler = TextSampler(charset, 25)
    for i in range(100):
        rng = sample_rng(5, i)
        text, label = sampler.sample(rng)
        font = fonts.choose(text, rng)
        assert font is not None and set(text) <= fonts.fonts[font].coverage


@needs_dejavu
def test_coverage_check_rejects_missing_glyphs():
    sans = next(p for p in DEJAVU if os.path.basename(p) == "DejaVuSans.ttf")
    coverage, reason = check_font(sans, "ab中\ue000")  # CJK and private-use characters are not in DejaVu
    assert coverage == frozenset("ab") and reason == ""
    coverage, reason = check_font(sans, "中文")
    assert coverage == frozenset() and reason
    coverage, reason = check_font("/no/such/font.ttf", "ab")
    assert coverage == frozenset() and "cannot" in reason


def test_coverage_check_rejects_picture_fonts():
    names = {"D050000L.otf", "90stars.ttf", "fauxsnow.ttf", "xmaslght.ttf"}  # dingbats / picture faces
    pictures = [p for p in default_font_paths() if os.path.basename(p) in names]
    if not pictures:
        pytest.skip("no dingbat font installed (fonts-urw-base35 or fonts-aenigma)")
    for path in pictures:
        coverage, reason = check_font(path, load_charset("94"))
        assert not coverage and reason, path


@needs_dejavu
def test_engine_works_with_dejavu_only(dejavu_dir):
    ds = SyntheticDataset("62", transform=ImageTransform(48, 160), seed=3, fonts=[dejavu_dir])
    assert ds.renderer.fonts.fonts and all(os.path.basename(f.path).startswith("DejaVu")
                                           for f in ds.renderer.fonts.fonts)
    for i in range(20):
        image, label, name = ds[i]
        assert image.shape == (3, 48, 160) and image.min() >= -1 and image.max() <= 1
        assert label and set(label) <= set(load_charset("62"))


def test_no_usable_font_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no font files"):
        Renderer("94", fonts=[str(tmp_path)])
    with pytest.raises(ValueError, match="no such file"):
        Renderer("94", fonts=[str(tmp_path / "missing")])
    if DEJAVU:  # DejaVu draws no Chinese: no font qualifies for a Chinese charset
        with pytest.raises(ValueError, match="draws at least"):
            Renderer("中文字体测试", fonts=DEJAVU[:2])


# ---- effects and config -----------------------------------------------------------------------------------

@needs_dejavu
@pytest.mark.parametrize("height", [32, 48])
def test_every_effect_at_probability_one(height, dejavu_fonts94):
    everything = [f"effects.{name}.p=1" for name in EFFECT_NAMES] + ["max_degradations=99"]
    renderer = Renderer("94", height=height, config=everything, fonts=dejavu_fonts94)
    for i in range(15):
        image, label = renderer.render(sample_rng(9, i))
        assert image.height == height and image.width >= 2 and label
    for name in EFFECT_NAMES:  # each one alone, strong
        one = Renderer("94", height=height, config=[f"effects.{name}.p=1", f"effects.{name}.strength="
                                                     f"{2 * getattr(build_config().effects, name).strength}"],
                       fonts=dejavu_fonts94)
        for i in range(3):
            image, _ = one.render(sample_rng(i, 1))
            assert image.height == height


@needs_dejavu
def test_curved_text_renders(dejavu_fonts94):
    curved = Renderer("94", height=48, config=["effects.curve.p=1", "effects.rotation.p=0",
                                                 "effects.perspective.p=0", "effects.shear.p=0"],
                      fonts=dejavu_fonts94)
    straight = Renderer("94", height=48, config=["effects.curve.p=0", "effects.rotation.p=0",
                                                   "effects.perspective.p=0", "effects.shear.p=0"],
                        fonts=dejavu_fonts94)
    ratios = []
    for i in range(30):
        a, la = curved.render(sample_rng(1, i))
        b, lb = straight.render(sample_rng(1, i))
        assert la == lb  # the text is drawn before the curve decision
        if len(la) >= 6:
            ratios.append((a.width / a.height) / (b.width / b.height))
    # Bending a long word along an arc makes its box taller relative to its width.
    assert ratios and np.median(ratios) < 0.9


def test_config_overrides_and_errors(tmp_path):
    cfg = build_config(["effects.blur.p=0.9", {"text": {"weights": {"words": 2.0}}}])
    assert cfg.effects.blur.p == 0.9 and cfg.text.weights["words"] == 2.0
    path = tmp_path / "synth.yaml"
    path.write_text("effects:\n  jpeg:\n    p: 0.0\ncrop:\n  max_aspect: 10\n")
    cfg = build_config([str(path)])
    assert cfg.effects.jpeg.p == 0.0 and cfg.crop.max_aspect == 10
    recipe = OmegaConf.create({"config": {"effects": {"curve": {"p": 0.5}}}, "fonts": ["/x"]})
    assert build_config(recipe.config).effects.curve.p == 0.5  # as a training YAML hands it over
    assert build_config(OmegaConf.create(["effects.noise.p=0"])).effects.noise.p == 0
    with pytest.raises(ValueError, match="nosuch"):
        build_config(["effects.nosuch.p=1"])
    with pytest.raises(ValueError, match="blur.p"):
        build_config(["effects.blur.p=1.5"])
    with pytest.raises(ValueError):
        build_config(["not an override"])


@needs_dejavu
def test_naive_preset_draws_black_text_on_white_with_one_font():
    """The realism check's baseline: a named preset, one font, exactly two colours, no effects."""
    cfg = build_config("naive")
    assert all(getattr(cfg.effects, name).p == 0 for name in EFFECT_NAMES) and cfg.max_degradations == 0
    renderer = Renderer("94", height=32, config="naive")
    assert len(renderer.fonts.fonts) == 1 and os.path.basename(renderer.fonts.fonts[0].path) == "DejaVuSans.ttf"
    for i in range(10):
        image, label = renderer.render(sample_rng(5, i))
        pixels = np.asarray(image.convert("RGB"), np.int32)
        assert label and (pixels[0, 0] == 255).all()  # the margin is white
        assert pixels.min() < 60  # black ink, antialiased at the edges only
        assert (np.abs(pixels - pixels[:, :, :1]) <= 1).all()  # achromatic: no colour anywhere


def test_fixed_colours_are_validated():
    cfg = build_config(["colours.text_rgb=[200,0,0]", "colours.background_rgb=[0,0,255]"])
    assert cfg.colours.text_rgb == [200, 0, 0] and cfg.colours.background_rgb == [0, 0, 255]
    with pytest.raises(ValueError, match="colours.text_rgb"):
        build_config(["colours.text_rgb=[300,0,0]"])
    with pytest.raises(ValueError, match="naive"):  # an unknown preset lists the known ones
        build_config("no-such-preset")


def test_text_sources_cover_numbers_dates_prices_and_case():
    charset = load_charset("94")
    sampler = TextSampler(charset, 25)
    texts = [sampler.sample(sample_rng(2, i))[0] for i in range(400)]
    assert any(t.isdigit() for t in texts)
    assert any("$" in t or "€" in t or "." in t for t in texts)
    assert any(t.isupper() for t in texts) and any(t.islower() for t in texts)
    # A case-insensitive charset shows upper-case signs but labels them in lower case.
    sampler36 = TextSampler(load_charset("36"), 25)
    pairs = [sampler36.sample(sample_rng(3, i)) for i in range(200)]
    assert any(text != label for text, label in pairs)
    assert all(text.lower() == label for text, label in pairs)


def test_length_cap_draws_short_whole_texts_and_leaves_uncapped_draws_alone():
    sampler = TextSampler(load_charset("94"), 25)
    # No cap, or the full cap, follows the same random path as before the curriculum existed.
    assert [sampler.sample(sample_rng(4, i)) for i in range(50)] == \
        [sampler.sample(sample_rng(4, i), max_length=25) for i in range(50)]
    for cap in (1, 3, 5):
        pairs = [sampler.sample(sample_rng(5, i), max_length=cap) for i in range(150)]
        assert all(1 <= len(label) <= cap for _, label in pairs)
        lengths = {len(label) for _, label in pairs}
        assert len(lengths) == cap or cap == 1  # every length up to the cap occurs
    # Short words are redrawn, not cut: capped dictionary words are still words of the list.
    words = set(sampler.words)
    capped = [text for text, _ in (sampler.sample(sample_rng(6, i), max_length=4) for i in range(300))]
    assert sum(t in words for t in capped) >= 30


def test_corpus_source(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Kaffee und Kuchen\nZimmer frei\n", encoding="utf-8")
    sampler = TextSampler(load_charset("62"), 25, build_config([{"text": {
        "corpus_files": [str(corpus)], "weights": {"corpus": 1.0, "words": 0.0, "pseudo": 0.0,
                                                    "random": 0.0, "numbers": 0.0, "dates": 0.0,
                                                    "prices": 0.0, "codes": 0.0}}}]).text)
    words = {sampler.sample(sample_rng(0, i))[0] for i in range(50)}
    assert words <= {"Kaffee", "und", "Kuchen", "Zimmer", "frei"} and len(words) >= 3


# ---- baking and mixing ------------------------------------------------------------------------------------

@needs_dejavu
def test_baked_lmdb_reads_back_through_the_standard_loader(tmp_path, dejavu_dir):
    from masterocr.cli.main import main
    from masterocr.data.datasets import open_dataset

    out, preview = tmp_path / "synth.lmdb", tmp_path / "preview.png"
    code = main(["data", "synth", str(out), "--count", "10", "--seed", "4", "--fonts", dejavu_dir,
                 "--preview", str(preview), "--preview-count", "6", "--config", "effects.jpeg.p=0"])
    assert code == 0 and preview.is_file() and (out / "synth.json").is_file()
    dataset = open_dataset(out, charset="94", max_length=25)
    assert len(dataset) == 10 and dataset.report.num_dropped == 0
    reference = SyntheticDataset("94", seed=4, fonts=[dejavu_dir], config=["effects.jpeg.p=0"])
    for i in range(10):
        image, label, _ = dataset[i]
        expected, expected_label = reference.render(i)
        assert label == expected_label
        assert np.array_equal(np.asarray(image), np.asarray(expected))  # PNG is lossless
    # Refuses to overwrite; a missing --count is an error, not a crash.
    assert main(["data", "synth", str(out), "--count", "2", "--fonts", dejavu_dir]) == 2
    assert main(["data", "synth", str(tmp_path / "other.lmdb"), "--fonts", dejavu_dir]) == 2


@needs_dejavu
def test_parallel_bake_matches_serial(tmp_path, dejavu_dir):
    from masterocr.cli.main import main
    from masterocr.data.datasets import open_dataset

    args = ["--count", "300", "--seed", "2", "--fonts", dejavu_dir, "--format", "png"]
    assert main(["data", "synth", str(tmp_path / "a.lmdb"), *args]) == 0
    assert main(["data", "synth", str(tmp_path / "b.lmdb"), *args, "--workers", "2"]) == 0
    a, b = open_dataset(tmp_path / "a.lmdb"), open_dataset(tmp_path / "b.lmdb")
    assert [a.raw(i)[:2] for i in range(0, 300, 37)] == [b.raw(i)[:2] for i in range(0, 300, 37)]


@needs_dejavu
def test_mixes_with_other_datasets_in_a_batch(tmp_path, dejavu_fonts94):
    from torch.utils.data import ConcatDataset, DataLoader

    from masterocr.data.datasets import collate, open_dataset, write_lmdb

    transform = ImageTransform(32, 100)
    synth = SyntheticDataset("94", transform=transform, seed=0, fonts=dejavu_fonts94, length=6)
    png = []
    for i in range(3):
        image, label = synth.render(100 + i)
        buf = io.BytesIO()
        image.save(buf, "PNG")
        png.append((buf.getvalue(), label))
    write_lmdb(tmp_path / "real.lmdb", png)
    real = open_dataset(tmp_path / "real.lmdb", transform=transform, charset="94")
    loader = DataLoader(ConcatDataset([synth, real]), batch_size=9, collate_fn=collate)
    images, labels, names = next(iter(loader))
    assert images.shape == (9, 3, 32, 100) and len(labels) == 9
    assert names[0] == "synth:0:0" and names[-1].endswith(":3")


@needs_dejavu
def test_capped_samples_in_the_training_mix(tmp_path, dejavu_fonts94):
    from masterocr.training.data import MixedDataset

    transform = ImageTransform(32, 100)
    synth = SyntheticDataset("94", transform=transform, seed=0, fonts=dejavu_fonts94, length=50)
    mix = MixedDataset([synth], ["synthetic"])
    for i in range(20):
        image, label, name = mix[(i, 7, 3)]
        assert 1 <= len(label) <= 3 and image.shape == (3, 32, 100) and name == f"synth:0:{i}"
    assert mix[(5, 7)][1] == synth[5][1]  # no cap: the sample itself


# ---- other scripts ----------------------------------------------------------------------------------------

def test_chinese_charset_renders_with_a_cjk_font(tmp_path):
    font = _cjk_font()
    if font is None:
        pytest.skip("no CJK font installed (fonts-wqy-microhei)")
    chars = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严"
    charset = load_charset(chars + "0123456789")
    corpus = tmp_path / "zh.txt"
    corpus.write_text("我们的国家在东方\n中华人民共和国\n今天是星期一\n", encoding="utf-8")
    config = [{"text": {"corpus_files": [str(corpus)]}}]
    ds = SyntheticDataset(charset, transform=ImageTransform(32, 128), seed=0, fonts=[font], config=config)
    assert set(load_charset(chars)) & ds.renderer.fonts.coverage
    seen = set()
    for i in range(30):
        image, label, _ = ds[i]
        assert image.shape == (3, 32, 128)
        assert label and set(label) <= set(charset)
        seen.update(label)
    assert len(seen - set("0123456789")) >= 10  # Chinese characters were actually drawn


# ---- issue 20: every effect seeded, deterministic, drawing every character, and switchable ----------------

def _charset_chunks(charset: str, size: int = 24) -> list[str]:
    chars = [c for c in charset if not c.isspace()]
    return ["".join(chars[i:i + size]) for i in range(0, len(chars), size)]


@needs_dejavu
@pytest.mark.parametrize("name", EFFECT_NAMES)
def test_each_effect_is_seeded_draws_every_character_and_switches_off(name, dejavu_fonts94):
    # Everything else off, so the effect alone decides the pixels; max_degradations high enough for it.
    quiet = [f"effects.{other}.p=0" for other in EFFECT_NAMES if other != name] + ["max_degradations=9"]
    on = Renderer("94", config=quiet + [f"effects.{name}.p=1"], fonts=dejavu_fonts94)
    off = Renderer("94", config=quiet + [f"effects.{name}.p=0"], fonts=dejavu_fonts94)
    zero = Renderer("94", config=quiet + [f"effects.{name}.p=1", f"effects.{name}.strength=0"], fonts=dejavu_fonts94)
    font = next(i for i, f in enumerate(dejavu_fonts94.fonts) if os.path.basename(f.path) == "DejaVuSans.ttf")
    changed = 0
    for k, chunk in enumerate(_charset_chunks(on.charset)):  # every charset character, under the effect
        a = np.asarray(on.render_text(chunk, sample_rng(5, k), font=font))
        b = np.asarray(on.render_text(chunk, sample_rng(5, k), font=font))
        assert np.array_equal(a, b), f"{name}: not a pure function of the sample's seed"
        assert a.shape[0] == 32 and a.shape[2] == 3 and a.std() > 3, f"{name}: {chunk!r} left no visible ink"
        # Off by probability and off by strength are the same: the effect's own draws only happen when on.
        c = np.asarray(off.render_text(chunk, sample_rng(5, k), font=font))
        d = np.asarray(zero.render_text(chunk, sample_rng(5, k), font=font))
        assert np.array_equal(c, d), f"{name}: p=0 and strength=0 differ"
        changed += a.shape != c.shape or not np.array_equal(a, c)
    assert changed >= 2, f"{name} at p=1 changed almost nothing"
    # Per index through the dataset: the same sample in a fresh object, different ones for other indices.
    ds = SyntheticDataset("94", seed=3, fonts=dejavu_fonts94, config=[f"effects.{name}.p=1"])
    again = SyntheticDataset("94", seed=3, fonts=dejavu_fonts94, config=[f"effects.{name}.p=1"])
    for i in (0, 17):
        (img1, l1), (img2, l2) = ds.render(i), again.render(i)
        assert l1 == l2 and np.array_equal(np.asarray(img1), np.asarray(img2))


@needs_dejavu
def test_orientation_and_vertical_words_keep_their_labels(dejavu_fonts94):
    base = ["effects.rotation.p=0", "effects.perspective.p=0", "effects.shear.p=0", "effects.curve.p=0",
            "effects.low_resolution.p=0"]
    upright = Renderer("94", config=base, fonts=dejavu_fonts94)
    turned = Renderer("94", config=base + ["effects.orientation.p=1"], fonts=dejavu_fonts94)
    stacked = Renderer("94", config=base + ["effects.vertical.p=1"], fonts=dejavu_fonts94)
    tall = 0
    for i in range(12):
        (a, la), (b, lb), (c, lc) = (r.render(sample_rng(4, i)) for r in (upright, turned, stacked))
        assert la == lb == lc  # the text is drawn before any of these decisions
        if len(la) >= 4:
            assert c.width < c.height  # a column of letters
            tall += b.width < b.height
    assert tall >= 2  # 90 or 270 degrees turn long words on end (180 keeps them wide)


@needs_dejavu
def test_low_resolution_is_rendered_small_and_upsampled(dejavu_fonts94):
    """Low-resolution words are drawn small and enlarged: at the output height they carry much less fine detail
    (energy of pixel-to-pixel differences) than sharp words."""
    base = [f"effects.{n}.p=0" for n in EFFECT_NAMES]
    sharp = Renderer("94", height=48, config=base, fonts=dejavu_fonts94)
    small = Renderer("94", height=48, config=base + ["effects.low_resolution.p=1",
                                                     "effects.low_resolution.strength=0.9"], fonts=dejavu_fonts94)

    def detail(img):
        a = np.asarray(img.convert("L"), np.float32)
        return (np.diff(a, axis=1) ** 2).mean() + (np.diff(a, axis=0) ** 2).mean()

    sharp_detail = np.mean([detail(sharp.render(sample_rng(6, i))[0]) for i in range(20)])
    small_detail = np.mean([detail(small.render(sample_rng(6, i))[0]) for i in range(20)])
    assert small_detail < 0.75 * sharp_detail
    assert all(small.render(sample_rng(6, i))[0].height == 48 for i in range(3))  # upsampled to the output


def test_photo_folders_give_one_size_of_each_picture(tmp_path):
    from masterocr.data.synth.effects import Backgrounds, find_images
    from masterocr.data.synth.config import BackgroundConfig, ColourConfig

    wall = tmp_path / "Lake" / "contents" / "images"
    wall.mkdir(parents=True)
    for size in ("640x480", "1280x800", "1920x1080", "1080x1920"):
        w, h = (int(v) for v in size.split("x"))
        Image.new("RGB", (w // 10, h // 10), (10, 120, 40)).save(wall / f"{size}.jpg")
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "street.jpg")
    assert [os.path.basename(p) for p in find_images([str(tmp_path)])] == ["1280x800.jpg", "street.jpg"]
    cfg = BackgroundConfig(weights={"photo": 1.0}, photo_dirs=[str(tmp_path)])
    bg = Backgrounds(cfg, ColourConfig())
    patch, mean = bg.sample(sample_rng(0, 1), 32, 100)
    assert patch.shape == (32, 100, 3) and bg.kinds == ["photo"] and len(bg.photo_files) == 2
    assert bg.preload() == len(bg.image_files) + 2
    with pytest.raises(ValueError, match="photo_dirs"):
        Backgrounds(BackgroundConfig(photo_dirs=[str(tmp_path / "nothing")]), ColourConfig())


def test_irregular_preset_turns_the_issue_20_appearance_on_and_defaults_keep_it_off():
    default, irregular = build_config(), build_config("irregular")
    for name in ("glow", "emboss", "cast_shadow"):
        assert getattr(default.effects, name).p == 0 < getattr(irregular.effects, name).p
    assert default.backgrounds.weights["photo"] == 0 < irregular.backgrounds.weights["photo"]
    assert default.fonts.group_weights["lobster"] == 0 < irregular.fonts.group_weights["lobster"]
    assert (irregular.effects.rotation.p, irregular.effects.curve.p) == (1.0, 0.12)


def test_image_shaped_operands_give_the_broadcast_results_bit_for_bit():
    """per_pixel / per_column only lay operands out like the image (for speed): the arithmetic must give
    exactly what broadcasting an (h, w, 1) mask or a (3,) colour gives."""
    from masterocr.data.synth import effects as fx
    from masterocr.data.synth.render import _over

    rng = np.random.default_rng(5)
    h, w = 13, 37
    img = (rng.random((h, w, 3)) * 255).astype(np.float32)
    mask = (rng.random((h, w)) * 255).astype(np.uint8)
    colour = (rng.random(3) * 255).astype(np.float32)
    assert np.array_equal(fx.per_pixel(mask), np.broadcast_to(mask[:, :, None], (h, w, 3)))
    assert np.array_equal(fx.filled(colour, h, w), np.broadcast_to(colour, (h, w, 3)))
    assert np.array_equal(img + fx.per_column(colour, w), img + colour)
    gradient = colour + np.linspace(0, 1, h, dtype=np.float32)[:, None, None] * (255 - colour)
    for paint, opacity, m in ((colour, 1.0, mask), (colour, 0.37, mask), (gradient, 0.8, mask),
                              (colour, 0.6, mask.astype(np.float32) * np.float32(1.7))):
        expected = img.copy()
        a = m.astype(np.float32)[:, :, None] * (opacity / 255.0)  # the broadcast formula _over stands for
        expected += a * (paint - expected)
        got = img.copy()
        _over(got, m, paint, opacity)
        assert np.array_equal(got, expected)


def test_fast_paths_give_the_numpy_formulas_bit_for_bit():
    """random_colour's grey in Python floats, the cached ramps and per_column's fill stand for NumPy formulas
    (speed only): the same values, so rendered words are unchanged."""
    from masterocr.data.synth import effects as fx

    for seed in range(200):
        got = fx.random_colour(sample_rng(seed, 1), grey_p=1.0)
        rng = sample_rng(seed, 1)
        rng.random()  # the grey-or-hue draw
        v = rng.beta(0.6, 0.6)
        expected = np.clip(v * 255 + rng.normal(0, 6, 3), 0, 255).astype(np.float32)
        assert got.dtype == np.float32 and np.array_equal(got, expected)
    for start, stop, n in ((-0.5, 0.5, 37), (-1, 1, 32), (0, 1, 1), (0, 1, 240)):
        r = fx.ramp(start, stop, n)
        assert np.array_equal(r, np.linspace(start, stop, n, dtype=np.float32)) and r.dtype == np.float32
        assert not r.flags.writeable  # shared between samples
    for colour in (np.array([1.5, 200.25, 3.0], np.float32), np.array([7.0, 8.0, 9.0])):
        assert np.array_equal(fx.per_column(colour, 5), np.tile(colour, (5, 1)))
        assert fx.per_column(colour, 5).dtype == colour.dtype


def test_jpeg_degradation_gives_what_a_pillow_jpeg_file_decodes_to():
    """OpenCV's round trip (RGB handed over as BGR) must equal writing the crop as a JPEG file with Pillow at
    the same quality and reading it back: same codec, same 4:2:0 chroma, channels in the right order."""
    from masterocr.data.synth.effects import apply_jpeg, jpeg_quality

    rng = np.random.default_rng(2)
    img = (rng.random((32, 71, 3)) * 255).astype(np.uint8)
    img[:, :35, 0] = 250  # a saturated red half: swapped channels would change its chroma
    for seed in range(4):
        out = apply_jpeg(img, sample_rng(seed, 0), 0.85)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=jpeg_quality(sample_rng(seed, 0), 0.85))
        reference = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
        assert out.dtype == np.uint8 and out.shape == img.shape and out.flags.c_contiguous
        assert np.array_equal(out, reference)

def test_sample_streams_give_sample_rngs_streams():
    from masterocr.data.synth.render import SampleStreams

    streams = SampleStreams(-3)  # negative seeds fold into 64 bits as sample_rng folds them
    for index in (0, 9, 2**40, 9):
        a, b = streams(index), sample_rng(-3, index)
        assert np.array_equal(a.random(5), b.random(5)) and np.array_equal(a.normal(size=7), b.normal(size=7))
        assert a.integers(10**9) == b.integers(10**9)
    with pytest.raises(IndexError):
        streams(-1)


def test_warp_follows_pillows_pixel_convention():
    """The OpenCV warp maps continuous coordinates as Pillow's transform does (pixel i spans [i, i + 1)): the
    same homography gives the same image up to fixed-point rounding; half a pixel off would move every edge.
    (At a source's outer edge the two differ: Pillow stops sampling, OpenCV blends in the zero border.)"""
    from masterocr.data.synth.imageops import warp

    yy, xx = np.mgrid[0:40, 0:120]
    src = np.where((yy // 4 + xx // 4) % 2 == 0, 255, 0).astype(np.uint8)  # sharp edges every 4 pixels
    src[:3], src[-3:], src[:, :3], src[:, -3:] = 0, 0, 0, 0  # a blank margin, as the renderer's canvases have
    m = np.array([[0.9, 0.12, -3.0], [0.05, 0.8, -2.0], [1e-3, 2e-3, 1.0]])
    inverse = np.linalg.inv(m)
    inverse /= inverse[2, 2]
    reference = np.asarray(Image.fromarray(src).transform((100, 32), Image.PERSPECTIVE, tuple(inverse.ravel()[:8]),
                                                          Image.BILINEAR), np.int16)
    got = warp(src, m, (100, 32)).astype(np.int16)
    assert got.shape == (32, 100) and np.abs(got - reference).max() <= 4


def test_motion_blur_is_the_mean_of_shifted_copies():
    from masterocr.data.synth import effects as fx

    img = (np.random.default_rng(3).random((32, 90, 3)) * 255).astype(np.uint8)
    for seed in range(6):
        rng = sample_rng(seed, 0)
        out = fx.apply_motion_blur(img, rng, 4.0, 32)
        rng = sample_rng(seed, 0)  # the same draws, by the formula
        length = rng.uniform(0.3, 1.0) * 4.0
        angle = rng.uniform(-15, 15) if rng.random() < 0.7 else rng.uniform(-90, 90)
        t = np.linspace(-length / 2, length / 2, int(np.ceil(length)) + 1)
        dx = np.round(t * np.cos(np.radians(angle))).astype(int)
        dy = np.round(t * np.sin(np.radians(angle))).astype(int)
        pad = int(max(np.abs(dx).max(), np.abs(dy).max()))
        padded = np.pad(img.astype(np.float64), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        expected = np.mean([padded[pad + y:pad + y + 32, pad + x:pad + x + 90] for x, y in zip(dx, dy)], axis=0)
        assert np.abs(out - expected).max() <= 1.0


def test_background_windows_shrink_without_aliasing():
    """A window shrunk 4 times from a 1-pixel checkerboard is even grey (it comes from the pyramid's level of
    its size), not the checkerboard's samples."""
    from masterocr.data.synth.effects import pyramid, window

    board = (np.indices((128, 512)).sum(axis=0) % 2 * 255).astype(np.uint8)
    out = window(pyramid(board), 3.0, 5.0, 400.0, 100.0, 100, 25)
    assert out.shape == (25, 100) and np.abs(out.astype(float) - 127.5).max() <= 2


@needs_dejavu
def test_training_tensors_take_the_short_path_and_match_the_pil_one(dejavu_fonts94):
    """A stretching transform gets the rendered array resized by OpenCV; it must give what the PIL path
    (ImageTransform on the rendered image) gives, up to resampling; other transforms take the PIL path."""
    from masterocr.data.image import Rotate
    from masterocr.data.synth.dataset import stretches_only

    plain, turned = ImageTransform(32, 100), ImageTransform(32, 100, augment=Rotate(180))
    assert stretches_only(plain) and not stretches_only(turned)
    assert not stretches_only(ImageTransform(32, 100, keep_aspect=True)) and not stretches_only(None)
    ds = SyntheticDataset("94", transform=plain, seed=4, fonts=dejavu_fonts94)
    for i in range(8):
        image, label, _ = ds[i]
        reference = plain(ds.render(i)[0])
        assert image.shape == reference.shape == (3, 32, 100) and image.dtype == torch.float32
        assert (image - reference).abs().mean() < 0.03  # of the [-1, 1] range
    ds.transform = turned
    assert torch.equal(ds[3][0], turned(ds.render(3)[0]))


OPS_CASES = '''
import numpy as np
from masterocr.data.synth import imageops as ops
rng = np.random.default_rng(7)
yy, xx = np.mgrid[0:40, 0:120]
board = np.where((yy // 4 + xx // 4) % 2 == 0, 255, 0).astype(np.uint8)
board[:3], board[-3:], board[:, :3], board[:, -3:] = 0, 0, 0, 0
photo = np.repeat(np.repeat((rng.random((8, 23, 3)) * 255).astype(np.uint8), 4, 0), 4, 1)[:, :90].copy()
kernel = np.zeros((5, 5), np.float32); kernel[2, 0:5] = 0.2
table = (rng.random((3, 256)) * 255).astype(np.uint8)
m = np.array([[0.9, 0.12, -3.0], [0.05, 0.8, -2.0], [1e-3, 2e-3, 1.0]])
mx, my = np.meshgrid(np.linspace(-2, 121, 64, dtype=np.float32), np.linspace(-2, 41, 24, dtype=np.float32))
cases = {"warp": ops.warp(board, m, (100, 32)), "warp3": ops.warp(np.dstack([board] * 3), m, (100, 32)),
         "remap": ops.remap(board, mx, my), "blur": ops.gaussian_blur(photo, 1.3),
         "correlate": ops.correlate(photo, kernel), "lookup": ops.lookup(photo, table),
         "uint8": ops.to_uint8(photo.astype(np.float32) * 0.97), "mean": ops.mean_colour(photo.astype(np.float32)),
         "jpeg": ops.jpeg(photo, 40),
         "masks": ops.resize(np.dstack([board, 255 - board, board, board // 2]), (60, 20), "area")}
for method in ops.RESAMPLING:
    cases["resize_" + method] = ops.resize(photo, (45, 16) if method == "area" else (150, 40), method)
'''


@needs_dejavu
def test_pillow_fallback_renders_and_agrees_with_opencv(tmp_path, dejavu_dir):
    """Without OpenCV the renderer falls back to Pillow/NumPy: every effect still renders, and each operation
    gives OpenCV's result up to resampling and rounding differences."""
    import subprocess
    import sys

    code = ("import sys\nsys.modules['cv2'] = None  # as if OpenCV were not installed\n" + OPS_CASES + f'''
assert ops.BACKEND == "pillow"
np.savez({str(tmp_path / "pillow.npz")!r}, **cases)
from masterocr.data.synth import Renderer, sample_rng
from masterocr.data.synth.config import EFFECT_NAMES
renderer = Renderer("94", config=[f"effects.{{n}}.p=1" for n in EFFECT_NAMES if n != "orientation"],
                    fonts=[{dejavu_dir!r}])
for i in range(6):
    image, label = renderer.render(sample_rng(0, i))
    assert image.height == 32 and label
''')
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    namespace = {}
    exec(OPS_CASES, namespace)
    from masterocr.data.synth import imageops
    assert imageops.BACKEND == "opencv"
    opencv, pillow = namespace["cases"], np.load(tmp_path / "pillow.npz")
    for name, limit in (("warp", 4), ("warp3", 4), ("remap", 1), ("blur", 2.0), ("correlate", 2), ("lookup", 0),
                        ("uint8", 1), ("mean", 0.01), ("jpeg", 0), ("resize_linear", 3.0), ("resize_cubic", 3.0),
                        ("resize_nearest", 0), ("resize_area", 1.0), ("masks", 1.0)):
        a, b = opencv[name].astype(np.float64), pillow[name].astype(np.float64)
        assert a.shape == b.shape, name
        error = np.abs(a - b).max() if name in ("warp", "warp3", "remap", "correlate", "lookup", "uint8", "mean",
                                                "jpeg", "resize_nearest") else np.abs(a - b).mean()
        assert error <= limit, (name, error)
