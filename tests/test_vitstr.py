"""ViTSTR: sizes, the parallel head through the shared decoder, cross-entropy training."""

import pytest
import torch

from masterocr.config import load_config
from masterocr.decoding import decode
from masterocr.models import build_model
from masterocr.training.objectives import build_objective


@pytest.mark.parametrize("name, params", [("vitstr", 21_418_079), ("vitstr-tiny", 5_400_671)])  # strhub's counts
def test_sizes(name, params):
    model = build_model(load_config(name).model)
    assert sum(p.numel() for p in model.parameters()) == params


def tiny(seed=0):
    torch.manual_seed(seed)
    cfg = load_config("vitstr-tiny", ["model.depth=2", "model.charset=36", "model.max_label_length=8",
                                      "model.img_size=[32,64]"]).model
    return build_model(cfg)


def test_parallel_decoding_through_the_shared_decoder():
    model = tiny().eval()
    images = torch.randn(3, 3, 32, 64)
    with torch.no_grad():
        logits = model(images)  # (B, 9, C): tokens 1..9 of 1 + 64
    assert logits.shape == (3, 9, 37)
    for method in ("greedy", "nar"):  # both mean "every position's arg-max" for a parallel head
        result = decode(model, images, method=method)
        assert result.attention is None
        expected = logits.argmax(-1)
        for row, ids in zip(result.token_ids.tolist(), expected.tolist()):
            n = ids.index(0) + 1 if 0 in ids else len(ids)
            assert row[:n] == ids[:n]
    with pytest.raises(ValueError, match="ViTSTR reads every position at once"):
        decode(model, images, method="beam")
    with pytest.raises(ValueError, match="ViTSTR has no cloze refinement"):
        decode(model, images, refine_iters=1)
    with pytest.raises(ValueError, match="cannot hold"):
        build_model(load_config("vitstr-tiny", ["model.img_size=[16,32]"]).model)


def test_cross_entropy_training_learns():
    model = tiny(1)
    objective = build_objective(model, {})
    images = torch.randn(4, 3, 32, 64)
    labels = ["ab", "cde", "f", "ghij"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss, parts = objective(model, images, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert set(parts) == {"ce"} and losses[-1] < 0.2 * losses[0]
    texts = [d.text for d in decode(model, images).decoded(model.tokenizer)]
    assert texts == labels


def test_aux_ctc_is_refused_with_a_reason():
    model = tiny()
    objective = build_objective(model, {"aux_ctc_weight": 0.5})
    with pytest.raises(ValueError, match="ViTSTR: train.aux_ctc_weight needs a memory of 8 x 8"):
        objective(model, torch.randn(2, 3, 32, 64), ["ab", "c"])
