"""Decoding: cached == full recompute, beam search == greedy at width 1 and exact when wide enough."""

import itertools

import pytest
import torch

from masterocr.config import load_config
from masterocr.decoding import decode
from masterocr.models import build_model
from masterocr.models.master import KVCache


def tiny(seed=0, eos_bias=0.5, **overrides):
    """A random master-tiny in float64 (exact comparisons), EOS-biased so words end at varied lengths."""
    torch.manual_seed(seed)
    cfg = load_config("master-tiny", [f"model.{k}={v}" for k, v in overrides.items()]).model
    model = build_model(cfg).eval().double()
    with torch.no_grad():
        model.head.bias[model.tokenizer.eos_id] += eos_bias
    return model


def lengths(result, tokenizer):
    return [len(d.text) for d in tokenizer.decode(result.probs)]


def with_mixed_lengths(model, images):
    """Raise the EOS bias step by step until the random model ends most words before its longest one, so
    early stopping, per-sequence EOS handling and dropping ended rows are exercised whatever the draw."""
    for _ in range(60):
        found = sorted(lengths(decode(model, images), model.tokenizer))
        if found[len(found) // 2] < found[-1] and found[-1] > 2:
            return model
        with torch.no_grad():
            model.head.bias[model.tokenizer.eos_id] += 0.1
    raise AssertionError("could not find an EOS bias giving mixed lengths")


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_cached_equals_full_recompute(batch, monkeypatch):
    model = tiny(seed=batch, eos_bias=0.0)
    images = torch.randn(batch, 3, 32, 100, dtype=torch.float64)
    if batch > 1:
        with_mixed_lengths(model, images)
    reorders = []
    original = KVCache.reorder
    monkeypatch.setattr(KVCache, "reorder", lambda self, *a, **k: reorders.append(1) or original(self, *a, **k))
    cached = decode(model, images, use_cache=True)
    full = decode(model, images, use_cache=False)
    assert torch.equal(cached.token_ids, full.token_ids)
    torch.testing.assert_close(cached.probs, full.probs, rtol=0, atol=1e-10)
    torch.testing.assert_close(cached.attention, full.attention, rtol=0, atol=1e-10)
    assert cached.attention.shape == (batch, cached.token_ids.shape[1], 4, 25)
    if batch == 8:  # rows that ended were dropped from the running batch along the way
        assert reorders


def test_cached_equals_full_default_master_fp32():
    torch.manual_seed(0)
    model = build_model(load_config("master").model).eval()
    images = torch.randn(2, 3, 48, 160)
    cached = decode(model, images, max_steps=8)
    full = decode(model, images, use_cache=False, max_steps=8)
    assert torch.equal(cached.token_ids, full.token_ids)
    torch.testing.assert_close(cached.probs, full.probs, rtol=0, atol=1e-5)
    assert cached.attention.shape == (2, 8, 6, 40)


def test_cached_equals_full_with_encoder_and_aspects():
    model = tiny(seed=1, encoder_layers=1, gc_heads=4)
    images = torch.randn(3, 3, 48, 160, dtype=torch.float64)
    cached, full = decode(model, images), decode(model, images, use_cache=False)
    assert torch.equal(cached.token_ids, full.token_ids)
    torch.testing.assert_close(cached.probs, full.probs, rtol=0, atol=1e-10)


def test_beam_width_one_is_greedy():
    model = tiny(seed=3)
    images = torch.randn(5, 3, 32, 100, dtype=torch.float64)
    greedy = decode(model, images)
    beam = decode(model, images, method="beam", beam_width=1)
    assert torch.equal(greedy.token_ids, beam.token_ids)
    torch.testing.assert_close(greedy.probs, beam.probs, rtol=0, atol=1e-12)
    torch.testing.assert_close(greedy.attention, beam.attention, rtol=0, atol=1e-12)
    torch.testing.assert_close(greedy.scores, beam.scores, rtol=0, atol=1e-12)


def all_sequences(num_classes, steps, eos):
    """Every output a decoder can produce in `steps` steps: ends at the first EOS or runs the full length."""
    for n in range(1, steps + 1):
        for seq in itertools.product(range(num_classes), repeat=n):
            if eos in seq[:-1] or (n < steps and seq[-1] != eos):
                continue
            yield seq


def test_wide_beam_finds_the_best_sequence():
    """With as many beams as prefixes, beam search is exhaustive: compare with brute force via decode_full."""
    model = tiny(seed=4, eos_bias=0.0, charset="abc", max_label_length=2)  # 4 classes, 3 steps
    tok = model.tokenizer
    images = torch.randn(3, 3, 32, 100, dtype=torch.float64)
    beam = decode(model, images, method="beam", beam_width=16)
    greedy = decode(model, images)
    with torch.inference_mode():
        memory = model.encode(images)
        for i in range(images.shape[0]):
            best, best_seq = float("-inf"), None
            for seq in all_sequences(tok.num_classes, 3, tok.eos_id):
                inputs = torch.tensor([[tok.bos_id, *seq[:-1]]])
                logp = model.decode_full(memory[i : i + 1], inputs)[0].log_softmax(-1)[0]
                score = float(sum(logp[t, s] for t, s in enumerate(seq)))
                if score > best:
                    best, best_seq = score, seq
            got = [t for t in beam.token_ids[i].tolist() if t != tok.pad_id]
            assert got == list(best_seq)
            assert beam.scores[i].item() == pytest.approx(best, abs=1e-6)  # probs are float32
            assert beam.scores[i] >= greedy.scores[i] - 1e-6


def test_result_conventions():
    model = tiny(seed=5)
    images = torch.randn(6, 3, 32, 100, dtype=torch.float64)
    result = decode(model, images)
    tok = model.tokenizer
    assert result.token_ids.dtype == torch.long and result.probs.shape[2] == tok.num_classes
    for row, dec in zip(result.token_ids.tolist(), tok.decode(result.probs)):
        if tok.eos_id in row:  # after EOS: PAD ids and zero probabilities
            end = row.index(tok.eos_id)
            assert all(t == tok.pad_id for t in row[end + 1 :])
            assert len(dec.text) == end and len(dec.char_probs) == end
    # decoded() reads token ids and agrees with tokenizer.decode(probs) for greedy decoding
    for a, b in zip(result.decoded(tok), tok.decode(result.probs)):
        assert a.text == b.text and a.confidence == pytest.approx(b.confidence)
    # confidence = product of the chosen tokens' probabilities incl. EOS = exp(score)
    for dec, score in zip(result.decoded(tok), result.scores.tolist()):
        assert dec.confidence == pytest.approx(float(torch.tensor(score).exp()), rel=1e-9)
    # attention rows are distributions over the feature map
    valid = result.token_ids != tok.pad_id
    sums = result.attention.flatten(2).sum(-1)[valid]
    torch.testing.assert_close(sums, torch.ones_like(sums))


def test_stops_when_every_sequence_has_ended():
    model = tiny(eos_bias=50.0)
    result = decode(model, torch.randn(4, 3, 32, 100, dtype=torch.float64))
    assert result.token_ids.shape == (4, 1) and (result.token_ids == 0).all()
    beam = decode(model, torch.randn(4, 3, 32, 100, dtype=torch.float64), method="beam", beam_width=3)
    assert beam.token_ids.shape == (4, 1)


def test_no_attention_and_bad_input():
    model = tiny()
    model.train()
    result = decode(model, torch.randn(2, 3, 32, 100, dtype=torch.float64), need_attention=False)
    assert result.attention is None and model.training  # mode restored
    with pytest.raises(ValueError, match="images must be"):
        decode(model, torch.randn(2, 1, 32, 100, dtype=torch.float64))
    with pytest.raises(ValueError, match="method"):
        decode(model, torch.randn(1, 3, 32, 100, dtype=torch.float64), method="sample")


def test_bf16_autocast_decoding():
    torch.manual_seed(0)
    model = build_model(load_config("master-tiny").model).eval()
    images = torch.randn(3, 3, 32, 100).contiguous(memory_format=torch.channels_last)
    reference = decode(model, images, max_steps=6)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # as a caller may wrap it
        cached = decode(model, images.clone(), max_steps=6)
    assert cached.probs.dtype == torch.float32 and cached.attention.dtype == torch.float32
    # the first step sees the same prefix in both precisions; later steps may diverge after a different arg-max
    torch.testing.assert_close(cached.probs[:, 0], reference.probs[:, 0], rtol=0, atol=5e-2)
    valid = cached.token_ids != model.tokenizer.pad_id
    torch.testing.assert_close(cached.probs.sum(-1)[valid], torch.ones(int(valid.sum())))
