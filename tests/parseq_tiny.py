"""A small PARSeq trained once per test session on rendered words (for the model, decoding and API tests).

parseq-tiny's width (embedding 192, 3/6 heads) with a 2-block encoder on 32x64 images: the real parseq-tiny
(12 blocks on 32x128) learns the same words too, but takes minutes on one CPU thread.
"""

import functools

import torch
from wordimages import render_word

WORDS = ("cat dog sun tree home open road blue red map box car pen cup hat bed sky sea fox owl bee ant cow pig "
         "hen egg ice jam key lid").split()
IMG_SIZE = (32, 64)
OVERRIDES = ["model.encoder_depth=2", "model.charset=36", "model.max_label_length=8",
             f"model.img_size=[{IMG_SIZE[0]},{IMG_SIZE[1]}]", "model.dropout=0.0"]


def build(seed: int = 0, **extra):
    from masterocr.config import load_config, to_dict
    from masterocr.models import build_model

    torch.manual_seed(seed)
    cfg = load_config("parseq-tiny", OVERRIDES + [f"model.{k}={v}" for k, v in extra.items()])
    return build_model(cfg.model), to_dict(cfg.model)


def word_images(words=WORDS) -> torch.Tensor:
    from masterocr.data.image import ImageTransform

    transform = ImageTransform(*IMG_SIZE)
    return torch.stack([transform(render_word(w)) for w in words])  # (B, 3, 32, 64)


@functools.lru_cache(maxsize=1)
def trained_parseq():
    """(model config dict, state dict, steps): trained with the PLM objective until both autoregressive and
    non-autoregressive decoding (each with the default refinement pass) read every word."""
    from masterocr.decoding import decode
    from masterocr.training.objectives import build_objective

    model, model_cfg = build()
    objective = build_objective(model, {"plm_permutations": 6})
    images = word_images()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    read = {}
    for step in range(400):
        model.train()
        loss, _ = objective(model, images, WORDS)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        if step % 10 == 9:
            read = {m: [d.text for d in decode(model, images, method=m).decoded(model.tokenizer)]
                    for m in ("greedy", "nar")}
            if read["greedy"] == WORDS and read["nar"] == WORDS:
                break
    else:
        raise AssertionError(f"parseq did not learn the words: read {read}")
    model.eval()
    return model_cfg, {k: v.clone() for k, v in model.state_dict().items()}, step + 1
