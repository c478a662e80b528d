"""Image pipeline: decoding every PIL mode, resizing, normalisation; augmentations and montages."""

import io
import random
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from masterocr.data.augment import OPS, PRESETS, Augment, build_augment
from masterocr.data.image import MAX_PIXELS, ImageError, ImageTransform, load_image, resize, to_tensor
from masterocr.data.montage import make_montage


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def blank_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of any size, built from a few compressed bytes (no large buffer in memory)."""
    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


# ---- decoding -------------------------------------------------------------------------------------------

def test_rgb_and_grey_modes():
    rgb = Image.new("RGB", (8, 4), (10, 200, 30))
    assert load_image(encode(rgb)).getpixel((0, 0)) == (10, 200, 30)
    grey = Image.new("L", (8, 4), 77)
    out = load_image(encode(grey))
    assert out.mode == "RGB" and out.getpixel((3, 2)) == (77, 77, 77)
    assert load_image(encode(rgb), grayscale=True).mode == "L"
    one_bit = Image.new("1", (8, 4), 1)
    assert load_image(encode(one_bit)).getpixel((0, 0)) == (255, 255, 255)


def test_palette_modes():
    pal = Image.new("P", (6, 6), 0)
    pal.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    pal.putpixel((1, 1), 1)
    out = load_image(encode(pal))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 0, 0) and out.getpixel((1, 1)) == (0, 0, 255)

    pal.info["transparency"] = 0  # index 0 transparent: composited on white
    out = load_image(encode(pal, transparency=0))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (0, 0, 255)


def test_alpha_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (0, 0, 0, 255))
    rgba.putpixel((2, 2), (0, 0, 0, 128))
    out = load_image(encode(rgba))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (0, 0, 0)
    assert 120 <= out.getpixel((2, 2))[0] <= 135

    la = Image.new("LA", (4, 4), (0, 0))
    la.putpixel((3, 3), (40, 255))
    out = load_image(encode(la))
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((3, 3)) == (40, 40, 40)


def test_sixteen_bit_grey_is_rescaled():
    arr = np.linspace(1000, 60000, 32, dtype=np.uint16).reshape(4, 8)
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    out = np.asarray(load_image(encode(img)))
    assert out.dtype == np.uint8 and out.shape == (4, 8, 3)
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[..., 0].reshape(-1).astype(int)) >= 0)  # order of grey levels preserved


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # red
    out = load_image(encode(cmyk, "JPEG", quality=95))
    r, g, b = out.getpixel((8, 4))
    assert out.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (40, 20), (255, 255, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = load_image(encode(img, "JPEG", exif=exif, quality=95))
    assert out.size == (20, 40)
    top, bottom = out.getpixel((10, 5)), out.getpixel((10, 35))
    assert top[0] > 200 and top[1] < 80  # the red half is now on top
    assert min(bottom) > 200


def test_pil_input_orientation_is_applied_and_an_upright_one_passes_unchanged():
    img = Image.new("RGB", (40, 20), (255, 255, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    assert np.array_equal(np.asarray(load_image(img)), np.asarray(img))  # no orientation: as it is
    img.getexif()[0x0112] = 3  # "rotate 180 to display"
    out = load_image(img)
    assert out.size == (40, 20) and out.getpixel((35, 10))[1] < 80  # the red half is now on the right


def test_arrays_and_pil_inputs():
    assert load_image(np.zeros((4, 6), dtype=np.uint8)).size == (6, 4)
    out = load_image(np.ones((4, 6, 3), dtype=np.float32))
    assert out.getpixel((0, 0)) == (255, 255, 255)
    out = load_image(np.zeros((4, 6, 4), dtype=np.uint8))  # fully transparent
    assert out.getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((4, 6, 2), dtype=np.uint8))
    assert load_image(Image.new("RGB", (3, 3))).size == (3, 3)


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"this is not an image at all", "not an image file"),
    (encode(Image.new("RGB", (64, 64), (1, 2, 3)))[:60], "cannot decode"),
])
def test_bad_bytes_raise_image_error(data, message):
    with pytest.raises(ImageError, match=message):
        load_image(data)


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(ImageError, match="nope.png"):
        load_image(str(path))


@pytest.mark.parametrize("width, height", [(9000, 8000), (15000, 10000)])
def test_huge_images_are_refused_before_decoding(width, height):
    assert width * height > MAX_PIXELS
    with pytest.raises(ImageError, match="too large"):
        load_image(blank_png(width, height))


# ---- resize and normalise -------------------------------------------------------------------------------

def test_resize_stretch():
    img = Image.new("RGB", (300, 20))
    assert resize(img, 32, 128).size == (128, 32)


def test_resize_keep_aspect_pads_right():
    img = Image.new("RGB", (20, 10), (255, 255, 255))
    out = resize(img, 32, 128, keep_aspect=True)
    assert out.size == (128, 32)
    arr = np.asarray(out)
    assert arr[:, :64].min() == 255  # 2:1 image scaled to 64x32 on the left
    assert arr[:, 66:].max() == 0  # padding
    wide = resize(Image.new("RGB", (1000, 10)), 32, 128, keep_aspect=True)
    assert wide.size == (128, 32)  # width capped


def test_to_tensor_range():
    arr = np.zeros((2, 2, 3), dtype=np.uint8)
    arr[0, 0] = 255
    t = to_tensor(Image.fromarray(arr))
    assert t.shape == (3, 2, 2) and t.dtype == torch.float32
    assert t.min().item() == -1.0 and t.max().item() == 1.0
    assert to_tensor(Image.fromarray(arr[..., 0])).shape == (1, 2, 2)


def test_image_transform_shapes():
    data = encode(Image.new("RGB", (50, 20), (0, 128, 255)))
    t = ImageTransform(32, 128)(data)
    assert t.shape == (3, 32, 128)
    assert -1.0 <= t.min().item() and t.max().item() <= 1.0
    g = ImageTransform(32, 128, grayscale=True)
    assert g.channels == 1 and g(data).shape == (1, 32, 128)


# ---- augmentation ---------------------------------------------------------------------------------------

def text_like(width=120, height=32) -> Image.Image:
    rng = np.random.default_rng(0)
    arr = np.full((height, width, 3), 230, dtype=np.uint8)
    for x in range(8, width - 8, 14):
        arr[6:height - 6, x:x + 6] = rng.integers(0, 80, 3)
    return Image.fromarray(arr)


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_every_op_changes_the_image_and_keeps_the_mode(name, mode):
    img = text_like().convert(mode)
    spec = OPS[name][2]
    aug = Augment({name: (1.0, spec.magnitude)}, num_ops=0, seed=1)
    changed = False
    for _ in range(5):
        out = aug(img)
        assert out.mode == mode and out.width >= 1 and out.height >= 1
        changed |= out.size != img.size or not np.array_equal(np.asarray(out), np.asarray(img))
    if name == "color" and mode == "L":
        assert not changed  # saturation has nothing to act on in a grey image
    else:
        assert changed, f"{name} never changed the image"


@pytest.mark.parametrize("size", [(1, 1), (1, 40), (40, 1), (3, 2)])
def test_ops_survive_tiny_images(size):
    img = Image.new("RGB", size, (30, 60, 90))
    for name in OPS:
        aug = Augment({name: (1.0, OPS[name][2].magnitude)}, num_ops=0, seed=2)
        assert aug(img).mode == "RGB"


def test_rotation_keeps_the_whole_text():
    img = text_like()
    out = Augment(num_ops=0, seed=0).apply_op(img, "rotate", 15.0)
    assert out.width >= img.width and out.height > img.height


def test_zero_probability_is_identity_and_seed_is_reproducible():
    img = text_like()
    off = Augment({name: (0.0, 1.0) for name in OPS}, num_ops=0)
    assert off(img) is img
    a, b = build_augment("parseq", seed=7), build_augment("parseq", seed=7)
    for _ in range(10):
        assert np.array_equal(np.asarray(a(img)), np.asarray(b(img)))


def test_unseeded_augment_follows_the_global_random_module_and_pickles():
    import pickle

    img = text_like()
    aug = pickle.loads(pickle.dumps(build_augment("parseq")))  # spawned DataLoader workers pickle it
    outs = []
    for _ in range(2):
        random.seed(123)  # what torch does in each worker, and training does per sample
        outs.append([np.asarray(aug(img)) for _ in range(5)])
    assert all(np.array_equal(a, b) for a, b in zip(*outs))
    assert pickle.loads(pickle.dumps(build_augment("light", seed=3))).num_ops == 2


def test_tall_images_are_scaled_down_first():
    img = text_like(800, 400)
    out = Augment({"brightness": (1.0, 0.1)}, num_ops=0, max_height=64, seed=0)(img)
    assert out.height == 64 and out.width == 128


def test_build_augment_configs():
    assert build_augment(None) is None and build_augment("none") is None and build_augment(False) is None
    parseq = build_augment("parseq")
    assert parseq.num_ops == 3 and set(parseq.ops) == set(OPS)
    custom = build_augment({"preset": "light", "num_ops": 1, "ops": {"rotate": {"magnitude": 3},
                                                                     "jpeg": False, "invert": [0.1, 0]}})
    assert custom.num_ops == 1
    assert custom.ops["rotate"].magnitude == 3 and custom.ops["rotate"].prob == 0.5
    assert "jpeg" not in custom.ops and custom.ops["invert"].prob == 0.1
    assert set(PRESETS["light"]["ops"]) < set(OPS)
    with pytest.raises(ValueError, match="unknown augmentation"):
        build_augment({"ops": {"twirl": {"prob": 1}}})
    with pytest.raises(ValueError, match="preset"):
        build_augment("heavy")
    with pytest.raises(ValueError, match="unknown augmentation settings"):
        build_augment({"strength": 3})


def test_augment_inside_image_transform():
    random.seed(0)
    transform = ImageTransform(32, 128, augment=build_augment("parseq"))
    data = encode(text_like())
    outs = [transform(data) for _ in range(8)]
    assert all(o.shape == (3, 32, 128) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


# ---- montage --------------------------------------------------------------------------------------------

def test_montage_grid_and_labels():
    white = Image.new("RGB", (60, 20), (255, 255, 255))
    items = [(white, "hello"), (Image.new("L", (10, 40), 255), "tall"), (None, "missing"),
             (encode(white), "two\nlines"), (white, ""), (white, "x" * 200)]
    sheet = make_montage(items, columns=2, cell_height=32, padding=6)
    assert sheet.mode == "RGB"
    box_w = 128 + 12
    assert sheet.width == 2 * box_w
    assert sheet.height % 3 == 0  # three rows of equal height
    box_h = sheet.height // 3
    arr = np.asarray(sheet.convert("L"))
    for i in range(len(items)):
        x0, y0 = (i % 2) * box_w + 6, (i // 2) * box_h + 6
        text_area = arr[y0 + 32: y0 - 6 + box_h - 1, x0: x0 + 128]
        assert text_area.min() < 100, f"no label drawn under cell {i}"  # also "(empty)" for ""
    grey_box = arr[box_h + 6: box_h + 6 + 32, 6: 6 + 128]  # item 2 (row 1, column 0) is the grey box
    assert 150 < np.median(grey_box) < 230
    with pytest.raises(ValueError):
        make_montage([])
