"""OnnxRecognizer: an export folder read with ONNX Runtime, with the torch Recognizer's reading API.

`read()`, `preprocess()`, `predict_batch()` and `predict()` behave as `masterocr.recognizer.Recognizer`'s: the
same image pipeline (data/image.py), the same read loop (reading.read_batched, so a bad input fails or is
skipped exactly as there), the same tokenizer turning tokens into text, confidence and per-character
probabilities, and the same (len(text), Hf, Wf) attention. Thread safe: ONNX Runtime sessions may be run from
several threads at once and decoding keeps its state in local variables.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from masterocr.charset import AttentionTokenizer
from masterocr.data.image import ImageSource, ImageTransform, Rotate
from masterocr.reading import ReadResult, prepare, read_batched
from masterocr.runtime import decoding
from masterocr.runtime.format import ATTENTION, IMAGES, LOGITS, POSITION, TOKENS, memory_kv_names, past_names, \
    present_names
from masterocr.runtime.graphs import ExportFolder, SessionOptions, open_export

DECODE_METHODS = decoding.METHODS


class SessionStep:
    """The decoder-step graph as a `decoding.Step`: NumPy arrays in, NumPy arrays out."""

    def __init__(self, session, layers: int):
        self.session = session
        self.past = past_names(layers)
        self.memory = memory_kv_names(layers)
        self.outputs = [LOGITS, *present_names(layers), ATTENTION]

    def __call__(self, tokens: np.ndarray, position: int, past: list, memory_kv: list):
        feeds = {TOKENS: tokens, POSITION: np.array(position, np.int64)}
        feeds.update(zip(self.past, past))
        feeds.update(zip(self.memory, memory_kv))
        out = self.session.run(self.outputs, feeds)
        return out[0], out[1:-1], out[-1]


class OnnxRecognizer:
    """Reads images with an exported model (see masterocr.export), without torch.

    decode_method / beam_width default to the export's decoding defaults; keep_aspect to the resize mode it
    was trained with. width: resize to this input width instead of the model's (the graphs accept widths in
    the metadata's width_range; a model trained at one width reads best at that width).
    """

    def __init__(self, folder: str | os.PathLike, decode_method: str | None = None, beam_width: int | None = None,
                 keep_aspect: bool | None = None, batch_size: int = 32, width: int | None = None,
                 threads: int | None = None, options: SessionOptions | None = None):
        options = options or SessionOptions(threads=threads)
        self.export: ExportFolder = open_export(folder, options)
        meta = self.metadata = self.export.metadata
        defaults = meta.get("decoding_defaults") or {}
        self.decode_method = decode_method or defaults.get("method", "greedy")
        if self.decode_method not in DECODE_METHODS:
            raise ValueError(f"decode method {self.decode_method!r}: choose one of {DECODE_METHODS}")
        self.beam_width = int(beam_width if beam_width is not None else defaults.get("beam_width", 5))
        if self.beam_width < 1:
            raise ValueError(f"beam_width={self.beam_width} must be at least 1")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size {batch_size}: must be 1 or more")
        self.batch_size = int(batch_size)
        self.tokenizer = AttentionTokenizer(meta["charset"], meta["max_label_length"])
        height, model_width = (int(v) for v in meta["img_size"])
        if width is not None and int(width) != model_width:
            low_high = meta.get("width_range")
            if not low_high or not low_high[0] <= int(width) <= low_high[1]:
                raise ValueError(f"width {width}: this export accepts "
                                 + (f"widths {low_high[0]} to {low_high[1]}" if low_high else f"only {model_width}"))
            model_width = int(width)
        if keep_aspect is None:
            keep_aspect = bool(meta["keep_aspect"])
        self.transform = ImageTransform(height, model_width, keep_aspect=keep_aspect,
                                        grayscale=int(meta["in_channels"]) == 1, mean=meta["mean"], std=meta["std"],
                                        pad=meta.get("pad", "zero"), width_step=meta.get("width_step", 0))
        decoder = meta["decoder"]
        self.spec = decoding.ARSpec(eos=int(meta["tokens"]["eos"]), bos=int(meta["tokens"]["bos"]),
                                    pad=int(meta["tokens"]["pad"]), num_classes=int(decoder["num_classes"]),
                                    max_steps=int(meta["max_steps"]), heads=int(decoder["heads"]),
                                    head_dim=int(decoder["head_dim"]), layers=int(decoder["layers"]),
                                    cache=meta["cache"])
        self.encoder = self.export.sessions["encoder"]
        self.step = SessionStep(self.export.sessions["decoder_step"], self.spec.layers)
        self._memory_outputs = memory_kv_names(self.spec.layers)

    # ---- configuration (as Recognizer) ----

    @property
    def img_size(self) -> tuple[int, int]:
        return self.transform.height, self.transform.width

    @property
    def keep_aspect(self) -> bool:
        return self.transform.keep_aspect

    def make_transform(self, rotation: int = 0) -> ImageTransform:
        """This recognizer's image pipeline, optionally rotating each image first (as Recognizer's)."""
        t = self.transform
        return ImageTransform(t.height, t.width, keep_aspect=t.keep_aspect, grayscale=t.grayscale,
                              augment=Rotate(rotation) if rotation % 360 else None, mean=t.mean, std=t.std,
                              pad=t.pad, width_step=t.width_step)

    def collate(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        """`preprocess` outputs -> one (B, C, H, W) batch; different widths (width_step) padded to the widest
        as the transform pads (as Recognizer.collate)."""
        if len({a.shape[-1] for a in prepared}) <= 1:
            return np.stack(list(prepared))
        return self.transform.collate(list(prepared))

    # ---- the model call ----

    def decode(self, images: np.ndarray, need_attention: bool = True):
        """Decode a preprocessed batch (B, C, H, W) float32 -> token ids (B, T) (PAD after each row's EOS),
        probabilities (B, T, C), the chosen tokens' probabilities (B, T) and attention (B, T, Hf, Wf) or None:
        the arrays masterocr.decoding's DecodeResult holds on the torch path."""
        memory_kv = self.encoder.run(self._memory_outputs, {IMAGES: np.ascontiguousarray(images, np.float32)})
        hf = int(self.metadata["feature_height"])
        feature_size = (hf, memory_kv[0].shape[2] // hf)  # (Hf, Wf): the width may differ from the model's
        steps = self.spec.max_steps
        if self.decode_method == "beam":
            ids, probs, attn = decoding.beam(self.step, memory_kv, self.spec, steps, self.beam_width, need_attention)
        else:
            ids, probs, attn = decoding.greedy(self.step, memory_kv, self.spec, steps, need_attention)
        return decoding.finish(ids, probs, attn, self.spec, feature_size)

    def predict(self, images: np.ndarray, need_attention: bool = True) -> list[ReadResult]:
        """Read a preprocessed batch: images (B, C, H, W) float32 as made by `self.transform`."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
        if images.shape[0] == 0:
            return []
        ids, _, chosen, attention = self.decode(images, need_attention)
        out = []
        for i, d in enumerate(self.tokenizer.decode_chosen(ids, chosen)):
            att = None if attention is None else attention[i, : len(d.char_probs)]  # (len(text), Hf, Wf)
            out.append(ReadResult(d.text, float(d.confidence), list(d.char_probs), att))
        return out

    # ---- reading (as Recognizer) ----

    def preprocess(self, source: ImageSource) -> np.ndarray:
        """One image -> (C, H, W) float32 array. Raises ImageError naming the input."""
        return prepare(self.transform.array, source)

    def predict_batch(self, prepared: list[np.ndarray], need_attention: bool = True) -> list[ReadResult]:
        """Read a list of `preprocess` outputs as one batch (what a server gathering requests calls)."""
        return self.predict(self.collate(prepared), need_attention)  # (B, C, H, W)

    def read(self, x: ImageSource | Sequence[ImageSource], batch_size: int | None = None,
             on_error: str = "auto") -> ReadResult | list[ReadResult]:
        """Read one image or a list (paths, PIL images, NumPy arrays, bytes), batched; see Recognizer.read."""
        return read_batched(x, self.preprocess, self.predict_batch, batch_size or self.batch_size, on_error)

    def __repr__(self) -> str:
        m = self.metadata
        return (f"OnnxRecognizer({m['model_name']}, {m['precision']}, img_size={self.img_size}, "
                f"keep_aspect={self.keep_aspect}, charset={len(self.tokenizer.charset)} chars, "
                f"folder={self.export.folder}, decode={self.decode_method})")
