"""Shared test fixtures. Threads are pinned so parallel processes on 2 cores do not oversubscribe."""

import functools
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from wordimages import render_word

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data, or skip the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


# ---- a small model trained once per session, for the API / CLI tests (they need a model they control) ---

WORDS = ["cat", "dog", "sun", "tree", "home", "open", "road", "blue"]
IMG_SIZE = (32, 64)


@functools.lru_cache(maxsize=1)
def trained_tiny():
    """(model config dict, state dict): master-tiny (36 chars, 32x64 input) trained until it reads WORDS."""
    from masterocr.config import load_config, to_dict
    from masterocr.data.image import ImageTransform
    from masterocr.decoding import decode
    from masterocr.models import build_model

    torch.manual_seed(0)
    cfg = load_config("master-tiny", ["model.charset=36", "model.max_label_length=8",
                                      f"model.img_size=[{IMG_SIZE[0]},{IMG_SIZE[1]}]", "model.dropout=0.0"])
    model = build_model(cfg.model)
    tok = model.tokenizer
    transform = ImageTransform(*IMG_SIZE)
    images = torch.stack([transform(render_word(w)) for w in WORDS])  # (8, 3, 32, 64)
    targets = tok.encode(WORDS)  # (8, 10): BOS word EOS PAD..
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for step in range(300):
        model.train()
        logits = model(images, targets[:, :-1])  # (8, 9, num_classes)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1),
                               ignore_index=tok.pad_id)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 9:
            read = [d.text for d in decode(model, images).decoded(tok)]
            if read == WORDS and step >= 59:  # a few steps past the first full read, for margin
                break
    else:
        raise AssertionError(f"master-tiny did not learn the words: read {read}")
    model.eval()
    return to_dict(cfg.model), {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """Path of the trained tiny model saved with save_weights."""
    from masterocr.weights import save_weights

    model_cfg, state = trained_tiny()
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(state, model_cfg, path)
    return path
