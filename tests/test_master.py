"""MASTER model: shapes, parameter count, config handling, overfitting, exportability."""

import pytest
import torch

from masterocr.config import load_config
from masterocr.models import build_model
from masterocr.models.layers import MultiAspectGCBlock

# MASTER-pytorch's default (configs/config_lmdb.json: with_encoder false, concat GC fusion, r = 1/16, GC in the
# first block of stages 2-4, 3 decoder layers, d_model 512, FFN 2048) with a 95-character key file, whose
# embedding and generator cover 95 + 4 special symbols = 99 classes. Counted module by module:
#   ResNet-31 convs + BNs 45,975,104 + 3 GC blocks 1,257,459 + 3 decoder layers 12,612,096 + final LayerNorm
#   1,024 + embedding 99 x 512 + generator 512 x 99 + 99  = 59,947,158.
# The Transformer encoder it allocates but never runs (with_encoder false) is not counted: it does no work.
MASTER_PYTORCH_PARAMS = 59_947_158


def build(name, **overrides):
    cfg = load_config(name, [f"model.{k}={v}" for k, v in overrides.items()]).model
    return build_model(cfg)


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def master():
    torch.manual_seed(0)
    return build("master").eval()


@pytest.mark.parametrize("size,tokens", [((48, 160), 240), ((32, 100), 100)])
def test_master_shapes(master, size, tokens):
    images = torch.randn(2, 3, *size)
    targets_in = master.tokenizer.encode(["word", "MASTER"])[:, :-1]  # (2, 26) [BOS c.. EOS PAD..]
    with torch.inference_mode():
        memory = master.encode(images)
        logits = master(images, targets_in)
    assert memory.shape == (2, tokens, 512)
    assert master.feature_size(*size) == {240: (6, 40), 100: (4, 25)}[tokens]
    assert logits.shape == (2, 26, master.tokenizer.num_classes) == (2, 26, 95)
    assert torch.isfinite(logits).all()


def test_master_parameter_count(master, capsys):
    total = count(master)
    gc = sum(count(m) for m in master.modules() if isinstance(m, MultiAspectGCBlock))
    with capsys.disabled():
        print(f"\nmaster parameters: {total:,} (GC blocks {gc:,}); MASTER-pytorch default: {MASTER_PYTORCH_PARAMS:,}"
              f" ({(total / MASTER_PYTORCH_PARAMS - 1) * 100:+.3f}%)")
    assert abs(total / MASTER_PYTORCH_PARAMS - 1) < 0.02
    assert master.encoder_norm is None and len(master.encoder) == 0  # encoder off: no weights allocated
    assert count(master.backbone) - gc == 45_975_104  # the ResNet-31 layout of the issue, exactly
    assert gc == 1_257_459


def test_variants_are_smaller_and_work():
    small, tiny = build("master-small"), build("master-tiny")
    assert 13e6 < count(small) < 15e6
    assert 1e6 < count(tiny) < 5e6
    assert small.encode(torch.randn(1, 3, 48, 160)).shape == (1, 240, 256)


def test_optional_encoder_and_gc_options():
    torch.manual_seed(0)
    model = build("master-tiny", encoder_layers=1, gc_heads=4, gc_fusion="mul", gc_every_block=True).eval()
    assert len(model.encoder) == 1
    gcs = [m for m in model.modules() if isinstance(m, MultiAspectGCBlock)]
    assert len(gcs) == 3 and all(g.heads == 4 and g.fusion == "mul" for g in gcs)  # stages 2-4, 1 block each
    out = model(torch.randn(2, 3, 32, 100), model.tokenizer.encode(["ab", "c"])[:, :-1])
    assert out.shape == (2, 26, 95)
    for fusion in ("add", "concat"):
        block = MultiAspectGCBlock(64, heads=2, fusion=fusion)
        assert block(torch.randn(2, 64, 4, 10)).shape == (2, 64, 4, 10)


def test_bad_config_names_the_key():
    cfg = dict(load_config("master-tiny").model)
    with pytest.raises(ValueError, match="gc_fuson"):
        build_model({**cfg, "gc_fuson": "add"})
    with pytest.raises(ValueError, match="fusion"):
        build_model({**cfg, "gc_fusion": "sum"})
    with pytest.raises(ValueError, match="unknown model name"):
        build_model({**cfg, "name": "nope"})


def test_encode_and_decode_step_export():
    """torch.export captures encode and one cached decode step (cache written in place, position a tensor)."""
    from masterocr.models.master import KVCache

    class Step(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, tokens, position, self_k, self_v, memory_k, memory_v):
            return self.model.decode_step(tokens, position, KVCache(self_k, self_v, memory_k, memory_v))

    class Encode(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images):
            return self.model.encode(images)

    torch.manual_seed(0)
    model = build("master-tiny").eval()
    images = torch.randn(2, 3, 48, 160)
    with torch.no_grad():
        memory = model.encode(images)
        encode_prog = torch.export.export(Encode(model), (images,))
        torch.testing.assert_close(encode_prog.module()(images), memory)
        tokens = torch.full((2,), model.tokenizer.bos_id)
        step_prog = torch.export.export(Step(model), (tokens, torch.tensor(0), *model.init_cache(memory)))
        eager_cache, exported_cache = model.init_cache(memory), model.init_cache(memory)
        for t in range(4):  # one graph serves every position
            position = torch.tensor(t)
            logits, attn = model.decode_step(tokens, position, eager_cache)
            logits_x, attn_x = step_prog.module()(tokens, position, *exported_cache)
            torch.testing.assert_close(logits_x, logits)
            torch.testing.assert_close(attn_x, attn)
            torch.testing.assert_close(exported_cache.self_k[-1], eager_cache.self_k[-1])
            tokens = logits.argmax(-1)


@pytest.mark.slow
def test_master_tiny_overfits_64_words():
    """master-tiny learns 64 rendered words to 100% greedy accuracy: ~60 full-batch steps, ~40-70 s on 1 thread.
    Slow: the default suite covers learning with fewer words (conftest.trained_tiny reads its 8 words, and
    test_training's overfit run reaches 100% through `masterocr train`)."""
    import random

    from masterocr.data.image import ImageTransform
    from masterocr.decoding import decode
    from wordimages import render_word

    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(3, 7))) for _ in range(64)]
    transform = ImageTransform(32, 100)
    images = torch.stack([transform(render_word(w)) for w in words])  # (64, 3, 32, 100)

    torch.manual_seed(0)
    model = build("master-tiny", img_size="[32,100]", dropout=0.0)
    targets = model.tokenizer.encode(words, max_length=7)  # (64, 9) [BOS c.. EOS PAD..]
    steps, lr = 60, 2.5e-3
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    model.train()
    for _ in range(steps):
        logits = model(images, targets[:, :-1])  # (64, 8, C)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1),
                                                 ignore_index=model.tokenizer.pad_id)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    result = decode(model, images, need_attention=False)
    texts = [d.text for d in model.tokenizer.decode(result.probs)]
    wrong = [(w, t) for w, t in zip(words, texts) if w != t]
    assert not wrong, f"{len(wrong)} of 64 words misread after {steps} steps (loss {loss.item():.4f}): {wrong[:5]}"


def test_info_command(capsys):
    from masterocr.cli.main import main

    assert main(["info", "master-tiny", "--img-size", "32", "100", "--json"]) == 0
    import json

    summary = json.loads(capsys.readouterr().out)
    model = build("master-tiny")
    assert summary["parameters"] == count(model)
    assert sum(summary["parameters_per_part"].values()) == count(model)
    assert set(summary["parameters_per_part"]) == {"backbone", "GC blocks", "decoder", "head"}
    assert summary["memory"] == {"feature_map": [4, 25], "tokens": 100}
    assert summary["charset_size"] == 94 and summary["gflops_per_image"]["encoder"] > 0
    assert main(["info", "no-such-model"]) == 2


def test_fold_batchnorm_keeps_outputs():
    from masterocr.models.layers import fold_batchnorm

    torch.manual_seed(0)
    model = build("master-tiny")
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(3):
            model.encode(torch.randn(4, 3, 32, 100))
    model.eval()
    images = torch.randn(2, 3, 32, 100)
    with torch.no_grad():
        expected = model.encode(images)
        folded = fold_batchnorm(model)
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
        torch.testing.assert_close(folded.encode(images), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(build("master-tiny").train())
