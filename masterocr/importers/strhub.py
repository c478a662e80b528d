"""strhub (baudm/parseq) checkpoints -> masterocr PARSeq / ViTSTR weights.

Accepted files, loaded weights-only (no pickled code runs):
  - a Lightning checkpoint (.ckpt) of strhub's PARSeq or ViTSTR system: `state_dict` (keys `model.*`) and
    `hyper_parameters` (charset_train, max_label_length, img_size, patch_size, embed_dim, heads, depths, ...);
  - a released state dict such as `parseq-bb5792a6.pt` or `parseq_tiny-e7a21b54.pt` (PARSeq keys without a
    prefix) or `vitstr-26d0fcf4.pt` (`model.*` keys). These carry no hyper-parameters: the sizes come from the
    tensor shapes, the heads from strhub's released models (encoder head width 64, decoder 32), the charset
    from the embedding size (36, 62 or 94 characters in strhub's order) and the input size from strhub's two
    layouts (4x8 patches on 32x128, 16x16 on 224x224).

Key map (PARSeq): encoder.* unchanged (timm ViT names); decoder.layers.i.{self_attn, cross_attn}.in_proj_* split
into q/k/v projections; linear1/linear2 -> mlp.fc1/fc2; decoder.norm -> norm; text_embed.embedding -> embed;
head, pos_queries unchanged. ViTSTR: model.{cls_token, pos_embed, patch_embed, blocks, norm} -> encoder.*,
model.head -> head. Any other key, a missing key, a shape that does not fit, or an unknown hyper-parameter is
an error naming it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from masterocr.importers import Imported, load_untrusted

# strhub's charsets (configs/charset/*.yaml): token ids follow this order, as ours do.
STRHUB_CHARSETS = {
    36: "0123456789abcdefghijklmnopqrstuvwxyz",
    62: "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    94: "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
}
STRHUB_LAYOUTS = {((4, 8), 128): (32, 128), ((16, 16), 196): (224, 224)}  # (patch, tokens) -> image size
# Hyper-parameters strhub's systems save (their __init__ arguments; `name` comes from the hydra config).
COMMON_HPARAMS = {"charset_train", "charset_test", "max_label_length", "batch_size", "lr", "warmup_pct",
                  "weight_decay", "img_size", "patch_size", "embed_dim", "name"}
PARSEQ_HPARAMS = COMMON_HPARAMS | {"enc_num_heads", "enc_mlp_ratio", "enc_depth", "dec_num_heads", "dec_mlp_ratio",
                                   "dec_depth", "perm_num", "perm_forward", "perm_mirrored", "decode_ar",
                                   "refine_iters", "dropout"}
VITSTR_HPARAMS = COMMON_HPARAMS | {"num_heads"}


class StrhubImportError(ValueError):
    """A strhub checkpoint that does not map onto our models; the message names the file and the key."""


def import_strhub(path: str | os.PathLike) -> Imported:
    """A strhub PARSeq or ViTSTR checkpoint -> Imported (our tensors, model config, metadata)."""
    from masterocr.weights import WeightsError

    path = Path(path)
    obj = load_untrusted(path)
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: not a strhub checkpoint (a {type(obj).__name__}, not a state dict)")
    hparams = obj.get("hyper_parameters")
    state = obj.get("state_dict", obj)
    if not isinstance(state, Mapping) or not state:
        raise WeightsError(f"{path}: holds no state dict")
    state = dict(state)
    bad = [k for k, v in state.items() if not hasattr(v, "shape")]
    if bad:
        raise StrhubImportError(f"{path}: state dict entry {bad[0]!r} is not a tensor")
    if hparams is not None and not isinstance(hparams, Mapping):
        raise StrhubImportError(f"{path}: hyper_parameters is a {type(hparams).__name__}, not a mapping")
    hparams = dict(hparams or {})
    try:
        if any(k.endswith("pos_queries") for k in state):
            tensors, model_cfg = _parseq(state, hparams)
        elif any(k.endswith("cls_token") for k in state):
            tensors, model_cfg = _vitstr(state, hparams)
        else:
            raise StrhubImportError("neither PARSeq (pos_queries) nor ViTSTR (cls_token) weights")
        _check_fits(tensors, model_cfg)
    except StrhubImportError as e:
        raise StrhubImportError(f"{path}: {e}") from None
    extra = {"keep_aspect": False, "source": "strhub", "strhub_name": hparams.get("name")}
    return Imported(tensors, model_cfg, {k: v for k, v in extra.items() if v is not None})


# ---- PARSeq ------------------------------------------------------------------------------------------------

def _strip(state: dict, prefix: str) -> dict:
    """Remove `prefix` from every key when all keys have it (Lightning's `model.`)."""
    if all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _parseq(state: dict, hp: dict) -> tuple[dict, dict]:
    state = _strip(state, "model.")
    _check_hparams(hp, PARSEQ_HPARAMS)
    pos_queries = _get(state, "pos_queries")
    embed = _get(state, "text_embed.embedding.weight")
    patch = _get(state, "encoder.patch_embed.proj.weight")  # (D, C, ph, pw)
    d = int(pos_queries.shape[-1])
    enc_depth = _count(state, r"encoder\.blocks\.(\d+)\.")
    dec_depth = _count(state, r"decoder\.layers\.(\d+)\.")
    patch_size = (int(patch.shape[2]), int(patch.shape[3]))
    cfg = {
        "name": "parseq",
        "charset": _charset(hp, int(embed.shape[0]) - 3, "text_embed.embedding.weight"),
        "max_label_length": int(hp.get("max_label_length", pos_queries.shape[1] - 1)),
        "img_size": _img_size(hp, patch_size, int(_get(state, "encoder.pos_embed").shape[1])),
        "in_channels": int(patch.shape[1]),
        "patch_size": list(patch_size),
        "embed_dim": d,
        "encoder_depth": int(hp.get("enc_depth", enc_depth)),
        "encoder_heads": int(hp.get("enc_num_heads", d // 64)),
        "encoder_mlp_ratio": _get(state, "encoder.blocks.0.mlp.fc1.weight").shape[0] / d,
        "decoder_depth": int(hp.get("dec_depth", dec_depth)),
        "decoder_heads": int(hp.get("dec_num_heads", d // 32)),
        "decoder_mlp_ratio": _get(state, "decoder.layers.0.linear1.weight").shape[0] / d,
        "dropout": float(hp.get("dropout", 0.1)),
        "refine_iters": int(hp.get("refine_iters", 1)),
    }
    for key, count in (("encoder_depth", enc_depth), ("decoder_depth", dec_depth)):
        if cfg[key] != count:
            raise StrhubImportError(f"hyper-parameter {key} = {cfg[key]} but the state dict has {count} layers")
    for key in ("encoder_mlp_ratio", "decoder_mlp_ratio"):
        cfg[key] = int(cfg[key]) if float(cfg[key]).is_integer() else cfg[key]

    out = {}
    used = set()

    def take(src: str, dst: str | None = None):
        out[dst or src] = _get(state, src)
        used.add(src)

    for key in state:
        if key.startswith("encoder."):
            take(key)
    for i in range(dec_depth):
        src, dst = f"decoder.layers.{i}.", f"decoder.{i}."
        for attn in ("self_attn", "cross_attn"):
            w, b = _get(state, f"{src}{attn}.in_proj_weight"), _get(state, f"{src}{attn}.in_proj_bias")
            if w.shape[0] != 3 * d or b.shape[0] != 3 * d:
                raise StrhubImportError(f"{src}{attn}.in_proj_weight has shape {tuple(w.shape)}, expected "
                                        f"({3 * d}, {d})")
            for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"{dst}{attn}.{name}.weight"] = w[j * d:(j + 1) * d]
                out[f"{dst}{attn}.{name}.bias"] = b[j * d:(j + 1) * d]
            used.update({f"{src}{attn}.in_proj_weight", f"{src}{attn}.in_proj_bias"})
            for p in ("weight", "bias"):
                take(f"{src}{attn}.out_proj.{p}", f"{dst}{attn}.out_proj.{p}")
        for ours, theirs in (("mlp.fc1", "linear1"), ("mlp.fc2", "linear2"), ("norm1", "norm1"),
                             ("norm2", "norm2"), ("norm_q", "norm_q"), ("norm_c", "norm_c")):
            for p in ("weight", "bias"):
                take(f"{src}{theirs}.{p}", f"{dst}{ours}.{p}")
    for p in ("weight", "bias"):
        take(f"decoder.norm.{p}", f"norm.{p}")
        take(f"head.{p}")
    take("text_embed.embedding.weight", "embed.weight")
    take("pos_queries")
    _no_leftovers(state, used)
    return out, cfg


# ---- ViTSTR ------------------------------------------------------------------------------------------------

def _vitstr(state: dict, hp: dict) -> tuple[dict, dict]:
    state = _strip(state, "model.")
    _check_hparams(hp, VITSTR_HPARAMS)
    head = _get(state, "head.weight")
    patch = _get(state, "patch_embed.proj.weight")
    d = int(patch.shape[0])
    patch_size = (int(patch.shape[2]), int(patch.shape[3]))
    cfg = {
        "name": "vitstr",
        "charset": _charset(hp, int(head.shape[0]) - 1, "head.weight"),
        "max_label_length": int(hp.get("max_label_length", 25)),
        "img_size": _img_size(hp, patch_size, int(_get(state, "pos_embed").shape[1]) - 1),
        "in_channels": int(patch.shape[1]),
        "patch_size": list(patch_size),
        "embed_dim": d,
        "depth": _count(state, r"blocks\.(\d+)\."),
        "num_heads": int(hp.get("num_heads", d // 64)),
        "mlp_ratio": _get(state, "blocks.0.mlp.fc1.weight").shape[0] / d,
    }
    cfg["mlp_ratio"] = int(cfg["mlp_ratio"]) if float(cfg["mlp_ratio"]).is_integer() else cfg["mlp_ratio"]
    out, used = {}, set()
    for key in state:
        if key.split(".")[0] in ("cls_token", "pos_embed", "patch_embed", "blocks", "norm"):
            out["encoder." + key] = state[key]
            used.add(key)
    for p in ("weight", "bias"):
        out[f"head.{p}"] = _get(state, f"head.{p}")
        used.add(f"head.{p}")
    _no_leftovers(state, used)
    return out, cfg


# ---- checks ------------------------------------------------------------------------------------------------

def _get(state: Mapping, key: str):
    if key not in state:
        raise StrhubImportError(f"missing key {key!r}")
    return state[key]


def _count(state: Mapping, pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    if found != set(range(len(found))):
        raise StrhubImportError(f"layers {sorted(found)} are not numbered 0..{len(found) - 1} ({pattern})")
    return len(found)


def _check_hparams(hp: Mapping, known: set[str]) -> None:
    unknown = sorted(set(hp) - known)
    if unknown:
        raise StrhubImportError(f"unexpected hyper-parameter {unknown[0]!r} (known: {sorted(known)})")
    if "decode_ar" in hp and not isinstance(hp["decode_ar"], bool):
        raise StrhubImportError(f"hyper-parameter 'decode_ar' = {hp['decode_ar']!r} is not a boolean")


def _charset(hp: Mapping, size: int, key: str) -> str:
    charset = hp.get("charset_train")
    if charset is None:
        if size not in STRHUB_CHARSETS:
            raise StrhubImportError(f"{key} implies {size} characters; without hyper-parameters only strhub's "
                                    f"charsets of {sorted(STRHUB_CHARSETS)} are known")
        return STRHUB_CHARSETS[size]
    if not isinstance(charset, str) or len(charset) != size:
        raise StrhubImportError(f"hyper-parameter 'charset_train' has {len(charset)} characters but {key} "
                                f"has room for {size}")
    return charset


def _img_size(hp: Mapping, patch_size: tuple[int, int], tokens: int) -> list[int]:
    if "img_size" in hp:
        size = [int(v) for v in hp["img_size"]]
        grid = (size[0] // patch_size[0]) * (size[1] // patch_size[1]) if len(size) == 2 else -1
        if grid != tokens:
            raise StrhubImportError(f"hyper-parameter 'img_size' = {hp['img_size']} with patches {list(patch_size)} "
                                    f"gives {grid} tokens, but pos_embed has {tokens}")
        return size
    if (patch_size, tokens) not in STRHUB_LAYOUTS:
        raise StrhubImportError(f"pos_embed has {tokens} tokens of {list(patch_size)} patches: not one of "
                                f"strhub's input layouts, and no hyper-parameters give img_size")
    return list(STRHUB_LAYOUTS[(patch_size, tokens)])


def _no_leftovers(state: Mapping, used: set) -> None:
    extra = sorted(set(state) - used)
    if extra:
        raise StrhubImportError(f"unexpected key {extra[0]!r}")


def _check_fits(tensors: Mapping, model_cfg: dict) -> None:
    """Every tensor must exist in the model the config describes, with its shape, and none be missing."""
    from masterocr.models import build_model

    try:
        model = build_model(model_cfg)
    except ValueError as e:
        raise StrhubImportError(f"the hyper-parameters describe no valid model: {e}") from None
    target = model.state_dict()
    for key, value in tensors.items():
        if key not in target:
            raise StrhubImportError(f"unexpected key {key!r} (after mapping)")
        if tuple(value.shape) != tuple(target[key].shape):
            raise StrhubImportError(f"key {key!r} has shape {tuple(value.shape)}, the model built from the "
                                    f"hyper-parameters expects {tuple(target[key].shape)}")
    missing = sorted(set(target) - set(tensors))
    if missing:
        raise StrhubImportError(f"missing key for {missing[0]!r}")


__all__ = ["StrhubImportError", "import_strhub"]
