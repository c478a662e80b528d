"""The recurrent recognizers (CRNN, TRBA, CRNN-Seq2Seq-OCR): parameter counts, shapes, the shared layers, CTC
reading, cached == full attention decoding, and small models overfitting a few dozen words on the CPU."""

import itertools
import random

import numpy as np
import pytest
import torch
from wordimages import render_word

from masterocr.charset import CTCTokenizer
from masterocr.config import load_config
from masterocr.data.image import ImageTransform
from masterocr.decoding import decode, decode_memory
from masterocr.models import build_model
from masterocr.models.layers import TPS, VGG, ClovaResNet, RNNCache
from masterocr.models.layers.tps import fiducial_points, tps_matrices
from masterocr.training.objectives import build_objective


def build(name, **overrides):
    return build_model(load_config(name, [f"model.{k}={v}" for k, v in overrides.items()]).model)


def count(module):
    return sum(p.numel() for p in module.parameters())


# ---- parameter counts ------------------------------------------------------------------------------------------

# clovaai's None-VGG-BiLSTM-CTC (grey input, 36 characters + blank), counted layer by layer: VGG 640 + 73,856 +
# 295,168 + 590,080 + (1,179,648 + BN 1,024) + (2,359,296 + 1,024) + 1,049,088 = 5,549,824; BiLSTM 1 (512 -> 256)
# 1,576,960 + linear 131,328; BiLSTM 2 1,052,672 + 131,328; head 256 x 37 + 37 = 9,509. Total 8,451,621 (8.5 M in
# the paper's table).
CLOVA_CRNN_PARAMS = 8_451_621
# The CRNN-Seq2Seq-OCR seed (MindSpore) with its 10,000-class vocabulary, counted layer by layer from its code:
# CNN 8,630,912 (bias-free convs + BN scales/shifts), encoder BiLSTMs + projections 856,320, decoder (embedding
# 1,280,000, location attention 16,448, combine 32,896, GRU 99,072, output 1,290,000) 2,718,416: 12,205,648 ("12 M").
SEQ2SEQ_SEED_PARAMS = 12_205_648


def test_crnn_is_clovaai_none_vgg_bilstm_ctc():
    model = build("crnn", charset="36")
    assert count(model) == CLOVA_CRNN_PARAMS
    assert count(build("crnn")) == CLOVA_CRNN_PARAMS + (95 - 37) * 257  # charset 94: a wider head only
    assert 3.7e6 < count(build("crnn-small")) < 3.9e6 and count(build("crnn-tiny")) < 3e5


def test_trba_matches_strhub_size():
    model = build("trba")
    # strhub's trba (94 characters) is 49.6 M in the PARSeq paper's table; its generator has two more output
    # rows than ours (BOS and PAD, which are never predicted here), 514 parameters.
    assert abs(count(model) + 514 - 49.6e6) < 0.05e6
    # The localisation network: convs 3->64->128->256->512 with BN 1,856 + 73,984 + 295,424 + 1,180,672, fc 512->256
    # 131,328, fc 256->40 10,280. The spline's constant matrices are buffers rebuilt from the config, not saved.
    assert count(model.tps) == 1_693_544
    assert not any(k.startswith("tps.grid") for k in model.state_dict())


def test_seq2seq_matches_the_seed_size_with_its_vocabulary():
    charset = "".join(chr(0x4E00 + i) for i in range(9999))  # 9,999 characters + EOS = the seed's 10,000 outputs
    model = build("seq2seq-fsns", charset=charset)
    assert abs(count(model) / SEQ2SEQ_SEED_PARAMS - 1) < 0.03
    small = build("seq2seq-fsns", charset="94")
    assert 9e6 < count(small) < 10e6


# ---- shapes -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("width,frames", [(100, 24), (64, 15), (257, 63)])
def test_crnn_frames_follow_the_width(width, frames):
    torch.manual_seed(0)
    model = build("crnn-tiny").eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 1, 32, width))
    assert logits.shape == (2, frames, 95)
    assert model.feature_size(32, width) == (1, frames)


@pytest.mark.parametrize("name,size,memory", [("trba-tiny", (32, 128), (33, 32)), ("trba-tiny", (32, 100), (26, 32)),
                                              ("seq2seq-tiny", (32, 128), (16, 64))])
def test_attention_models_shapes(name, size, memory):
    torch.manual_seed(0)
    model = build(name, img_size=list(size)).eval()
    images = torch.randn(2, model.in_channels, *size)
    targets_in = model.tokenizer.encode(["ab", "c"])[:, :-1]
    with torch.no_grad():
        mem = model.encode(images)
        logits = model(images, targets_in)
        result = decode(model, images, max_steps=4)
    assert mem.shape == (2, *memory) and model.feature_size(*size) == (1, memory[0])
    assert logits.shape == (*targets_in.shape, model.num_classes)
    assert result.attention.shape[2:] == (1, memory[0])


def test_seq2seq_views_share_one_cnn_and_stack_along_channels():
    torch.manual_seed(0)
    model = build("seq2seq-tiny", rnn_layers=0).eval()  # memory = the stacked CNN columns themselves
    images = torch.randn(1, 3, 32, 128)
    with torch.no_grad():
        memory = model.encode(images)  # (1, 16, 4 * 32)
        per_view = [model.backbone(images[..., 32 * v: 32 * (v + 1)]).mean(2)[0].T for v in range(4)]  # (16, 32)
    assert memory.shape == (1, 16, 128)
    torch.testing.assert_close(memory[0], torch.cat(per_view, 1))


def test_model_config_errors_name_the_key():
    with pytest.raises(ValueError, match="vgg_layer"):
        build("crnn", vgg_layer="[C8]")
    with pytest.raises(ValueError, match="views"):
        build("seq2seq-tiny", views=3)
    with pytest.raises(ValueError, match="'X9'"):
        build("crnn", vgg_layers="[C8, X9]")
    with pytest.raises(ValueError, match="backbone"):
        build("trba-tiny", backbone="vit")


# ---- layers -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config,size", [("crnn", (32, 100)), ("crnn", (64, 77)), ("crnn-small", (64, 256)),
                                         ("seq2seq-fsns", (128, 128)), ("seq2seq-fsns", (150, 150))])
def test_vgg_output_size_is_what_it_computes(config, size):
    layers = load_config(config).model.vgg_layers
    vgg = VGG(1, layers).eval()
    with torch.no_grad():
        out = vgg(torch.zeros(1, 1, *size))
    assert tuple(out.shape[2:]) == vgg.output_size(*size)
    assert out.shape[1] == vgg.out_channels
    with pytest.raises(ValueError, match="too small"):
        vgg.output_size(8, 100)


def test_vgg_layer_list_of_the_crnn_paper():
    vgg = VGG(1, ["C64", "M", "C128", "M", "B256", "C256", "MP", "B512", "C512", "MP", "B512k2"])
    assert vgg.output_size(32, 100) == (1, 26)  # pools with a padded column: 26 frames, as crnn.pytorch
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in vgg.modules()) == 3


@pytest.mark.parametrize("size", [(32, 100), (32, 128), (32, 77), (48, 160)])
def test_clova_resnet_output_size(size):
    net = ClovaResNet(3, 64).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, *size))
    assert tuple(out.shape[2:]) == ClovaResNet.output_size(*size)


def test_tps_spline_interpolates_its_points_and_is_identity_on_them():
    inverse, basis = tps_matrices(20, 8, 16)
    c = fiducial_points(20)
    # Target points on the source points: the spline is the identity, every pixel centre maps onto itself.
    grid = basis @ inverse[:, :20] @ c
    xs, ys = (np.arange(16) * 2 + 1) / 16 - 1, (np.arange(8) * 2 + 1) / 8 - 1
    np.testing.assert_allclose(grid, np.stack(np.meshgrid(xs, ys), 2).reshape(-1, 2), atol=1e-9)
    # Any target: the spline passes through the points (the last 3 columns are the affine part's constraints).
    moved = c + np.random.default_rng(0).normal(0, 0.1, c.shape)
    k = np.where(np.eye(20) > 0, 0, np.linalg.norm(c[:, None] - c[None], axis=2))
    k = np.where(k > 0, k * k * np.log(np.where(k > 0, k, 1)), 0)
    at_points = np.concatenate([np.ones((20, 1)), c, k], 1) @ inverse[:, :20] @ moved
    np.testing.assert_allclose(at_points, moved, atol=1e-9)


def test_tps_output_and_gradient():
    torch.manual_seed(0)
    tps = TPS(20, 1, (32, 100))
    images = torch.randn(2, 1, 32, 100, requires_grad=True)
    out = tps(images)
    assert out.shape == (2, 1, 32, 100) and torch.isfinite(out).all()
    out.sum().backward()
    assert tps.localization.fc2.weight.grad.abs().sum() > 0  # the points are learned through the sampling
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert tps(images).shape == (2, 1, 32, 100)


# ---- CTC reading ------------------------------------------------------------------------------------------------

def frames(ids, num_classes, p=0.8):
    """(1, T, C) probabilities with `p` on each frame's id and the rest spread evenly."""
    probs = torch.full((1, len(ids), num_classes), (1 - p) / (num_classes - 1))
    for t, i in enumerate(ids):
        probs[0, t, i] = p
    return probs


def test_ctc_decode_blanks_repeats_and_probabilities():
    tok = CTCTokenizer("ab")
    a, b = 1, 2
    probs = frames([a, a, 0, a, b, b, 0, 0], 3)
    probs[0, 1, a], probs[0, 1, 0] = 0.95, 0.025  # the first run's peak is its second frame
    probs[0, 1, b] = 0.025
    result = tok.decode(probs)[0]
    assert result.text == "aab"  # a repeat needs a blank between; a run of frames is one character
    assert result.char_probs == pytest.approx([0.95, 0.8, 0.8])
    # The confidence is P(text): every alignment of "aab" over the 8 frames, by brute force.
    total = 0.0
    for path in itertools.product(range(3), repeat=8):
        out, prev = [], 0
        for i in path:
            if i and i != prev:
                out.append("ab"[i - 1])
            prev = i
        if "".join(out) == "aab":
            total += float(np.prod([probs[0, t, i].item() for t, i in enumerate(path)]))
    assert result.confidence == pytest.approx(total, rel=1e-4)
    best_path = float(probs[0].max(-1).values.prod())
    assert result.confidence > best_path


def test_ctc_decode_empty_reading_and_batches():
    tok = CTCTokenizer("36")
    probs = torch.cat([frames([0, 0, 0], 37, p=0.9), frames([11, 0, 12], 37, p=0.9)])
    empty, ab = tok.decode(probs)
    assert empty.text == "" and empty.char_probs == [] and empty.confidence == pytest.approx(0.9 ** 3, rel=1e-4)
    assert ab.text == "ab" and 0 < ab.confidence < 1
    assert tok.decode(torch.zeros(0, 5, 37)) == []


# ---- cached == full decoding for the RNN decoders -----------------------------------------------------------------
# A random decoder over a random CNN's memory settles into one fixed point for every image, so these tests decode
# a random memory with the decoder's weights scaled up (lively dynamics) and an EOS bias that ends words at
# different lengths.

def lively_decoder(name, seed):
    torch.manual_seed(seed)
    model = build(name).eval().double()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(5.0)
    return model


def mixed_lengths(model, memory):
    """Raise the EOS bias from low until the words end at different lengths (exercises dropping finished rows)."""
    with torch.no_grad():
        model.decoder.head.bias[model.tokenizer.eos_id] -= 3.0
    for _ in range(150):
        found = decode_memory(model, memory, (1, memory.shape[1])).decoded(model.tokenizer)
        lengths = sorted(len(d.text) for d in found)
        if lengths[len(lengths) // 2] < lengths[-1] and lengths[-1] > 2:
            return model
        with torch.no_grad():
            model.decoder.head.bias[model.tokenizer.eos_id] += 0.1
    raise AssertionError("no EOS bias gave mixed lengths")


@pytest.mark.parametrize("name", ["trba-tiny", "seq2seq-tiny"])
@pytest.mark.parametrize("batch", [1, 8])
def test_rnn_cached_equals_full(name, batch, monkeypatch):
    model = lively_decoder(name, seed=batch)
    memory = torch.randn(batch, 16, model.memory_dim, dtype=torch.float64)
    if batch > 1:
        mixed_lengths(model, memory)
    reorders = []
    original = RNNCache.reorder
    monkeypatch.setattr(RNNCache, "reorder", lambda self, *a, **k: reorders.append(1) or original(self, *a, **k))
    with torch.no_grad():
        cached = decode_memory(model, memory, (1, 16), use_cache=True)
        full = decode_memory(model, memory, (1, 16), use_cache=False)
    assert torch.equal(cached.token_ids, full.token_ids)
    torch.testing.assert_close(cached.probs, full.probs, rtol=0, atol=1e-10)
    torch.testing.assert_close(cached.attention, full.attention, rtol=0, atol=1e-10)
    assert cached.attention.shape == (batch, cached.token_ids.shape[1], 1, 16)
    if batch == 8:
        assert reorders  # finished rows were dropped from the running batch, state and memory with them


@pytest.mark.parametrize("name", ["trba-tiny", "seq2seq-tiny"])
def test_rnn_beam_search(name):
    model = lively_decoder(name, seed=3)
    memory = torch.randn(6, 16, model.memory_dim, dtype=torch.float64)
    mixed_lengths(model, memory)
    with torch.no_grad():
        greedy = decode_memory(model, memory, (1, 16))
        one = decode_memory(model, memory, (1, 16), method="beam", beam_width=1)
        wide = decode_memory(model, memory, (1, 16), method="beam", beam_width=4)
    assert torch.equal(one.token_ids, greedy.token_ids)
    torch.testing.assert_close(one.scores, greedy.scores)
    assert (wide.scores >= greedy.scores - 1e-4).all()  # a wider beam never ends below greedy's path
    # The beam's chosen sequences score what a teacher-forced pass over them says.
    texts = [d.text for d in wide.decoded(model.tokenizer)]
    steps = model.max_steps
    targets = model.tokenizer.encode(texts, max_length=steps)[:, :-1]  # [BOS c.. EOS PAD..]
    with torch.no_grad():
        logp = model.decode_full(memory, targets)[0].log_softmax(-1)
    for i, text in enumerate(texts):
        n = min(len(text) + 1, steps)  # characters and EOS (none when the word ran to max_steps)
        gold = targets[i, 1: n + 1]
        assert wide.scores[i].item() == pytest.approx(logp[i, torch.arange(n), gold].sum().item(), rel=1e-5)


# ---- small models learn a few dozen words -----------------------------------------------------------------------

def random_words(n, seed=0):
    rng = random.Random(seed)
    return ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(2, 7)))
            for _ in range(n)]


WORDS = random_words(32)


def overfit(name, lr, max_steps, **overrides):
    torch.manual_seed(0)
    model = build(name, charset="36", **overrides)
    transform = ImageTransform(*model.img_size, grayscale=model.in_channels == 1)
    images = torch.stack([transform(render_word(w)) for w in WORDS])
    objective = build_objective(model, {})
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(objective.parameters()), lr=lr)
    read: list[str] = []
    for step in range(max_steps):
        model.train()
        loss, _ = objective(model, images, WORDS)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        if step % 20 == 19:
            read = [d.text for d in decode(model, images).decoded(model.tokenizer)]
            if read == WORDS:
                return step, loss.item()
    raise AssertionError(f"{name} did not learn the words in {max_steps} steps: read {read}")


def test_tiny_crnn_learns_a_few_dozen_words():
    step, loss = overfit("crnn-tiny", 3e-3, 700, img_size="[32,64]")  # 15 frames: enough for 7 characters
    assert loss < 0.2


def test_tiny_seq2seq_learns_a_few_dozen_words():
    step, loss = overfit("seq2seq-tiny", 3e-3, 400)
    assert loss < 0.3
