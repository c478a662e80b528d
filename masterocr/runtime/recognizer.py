"""OnnxRecognizer: an export folder read with ONNX Runtime, with the torch Recognizer's reading API.

`read()`, `preprocess()`, `predict_batch()` and `predict()` are `masterocr.recognizer.Recognizer`'s: both
derive from reading.RecognizerBase (the same image pipeline from data/image.py, the same orientation search,
the same read loop, so a bad input fails or is skipped exactly as there), the same tokenizer turning tokens into text, confidence and per-character
probabilities, and the same (len(text), Hf, Wf) attention. Thread safe: ONNX Runtime sessions may be run from
several threads at once and decoding keeps its state in local variables.

Precisions of an fp32 export: "fp32" (ONNX Runtime), "bf16" (the encoder, or a single-graph model, compiled by
OpenVINO in bf16; decoder steps stay fp32 on ONNX Runtime) and "bf16-checked": bf16, then every image whose
reading had a close call (at some position the two likeliest classes lie within `check_margin` of each other) is
read again in fp32: the tokens differ from fp32's only where rounding moved a gap by more than the margin (0 and
3 of 3,647 test words for the bundled parseq and master-small; README).
"""

from __future__ import annotations

import os
import numpy as np

from masterocr.charset import AttentionTokenizer, CTCTokenizer
from masterocr.data.image import ImageTransform
from masterocr.reading import ReadResult, RecognizerBase
from masterocr.runtime import decoding
from masterocr.runtime.format import ATTENTION, IMAGES, LOGITS, POSITION, TOKENS, StepIO, step_io
from masterocr.runtime.graphs import ExportFolder, SessionOptions, open_export

DECODE_METHODS = decoding.METHODS
PRECISIONS = ("fp32", "int8", "bf16", "bf16-checked")
DEFAULT_CHECK_MARGIN = 0.1  # chosen on training splits: benchmarks/check_margin.py


class SessionStep:
    """The decoder-step graph as a `decoding.Step`: NumPy arrays in, NumPy arrays out."""

    def __init__(self, session, io: StepIO):
        self.session, self.io = session, io
        self.outputs = io.step_outputs

    def __call__(self, tokens: np.ndarray, position: int, past: list, memory: list):
        feeds = {TOKENS: tokens}
        if self.io.position:
            feeds[POSITION] = np.array(position, np.int64)
        feeds.update(zip(self.io.past, past))
        feeds.update(zip(self.io.memory, memory))
        out = self.session.run(self.outputs, feeds)
        return out[0], out[1:-1], out[-1]


class SessionRefine:
    """The refinement graph as a `decoding.Refine`."""

    def __init__(self, session, io: StepIO):
        self.session, self.memory = session, io.memory

    def __call__(self, tokens: np.ndarray, memory: list):
        feeds = {TOKENS: tokens, **dict(zip(self.memory, memory))}
        logits, attention = self.session.run([LOGITS, ATTENTION], feeds)
        return logits, attention


class OnnxRecognizer(RecognizerBase):
    """Reads images with an exported model (see masterocr.export), without torch.

    decode_method ("greedy", "beam" or "nar"), beam_width and refine_iters (cloze passes after decoding, for
    exports with a refinement graph) default to the export's decoding defaults and are checked as the torch
    Recognizer checks them; keep_aspect defaults to the resize mode the model was trained with. width: resize
    to this input width instead of the model's (the graphs accept widths in the metadata's width_range; a
    model trained at one width reads best at that width). orientation "auto" reads each image in its four
    turns and keeps the most confident reading (as Recognizer's).
    """

    def __init__(self, folder: str | os.PathLike, decode_method: str | None = None, beam_width: int | None = None,
                 keep_aspect: bool | None = None, batch_size: int = 32, width: int | None = None,
                 threads: int | None = None, options: SessionOptions | None = None, refine_iters: int | None = None,
                 orientation: str | None = None, precision: str | None = None,
                 check_margin: float = DEFAULT_CHECK_MARGIN):
        options = options or SessionOptions(threads=threads)
        self.export: ExportFolder = open_export(folder, options)
        meta = self.metadata = self.export.metadata
        self.precision = self._check_precision(precision, options, check_margin)
        self.check_margin = float(check_margin)
        self.rows_read = self.rows_reread = 0  # bf16-checked: images read, and read again in fp32
        self.kind = meta["decoding"]
        defaults = meta.get("decoding_defaults") or {}
        self.decode_method = decode_method or defaults.get("method", "greedy")
        self.beam_width = int(beam_width if beam_width is not None else defaults.get("beam_width", 5))
        self.refine_iters = int(refine_iters if refine_iters is not None else defaults.get("refine_iters", 0) or 0)
        self._check_decoding(refine_iters)
        if int(batch_size) < 1:
            raise ValueError(f"batch_size {batch_size}: must be 1 or more")
        self.batch_size = int(batch_size)
        tokenizer = CTCTokenizer if self.kind == "ctc" else AttentionTokenizer
        self.tokenizer = tokenizer(meta["charset"], meta["max_label_length"])
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
        self.orientation = orientation or str(meta.get("orientation", "upright"))  # None: the export's mode
        sessions = self.export.sessions
        self.spec = self.step = self.refiner = self.encoder = self.model = None
        if self.kind == "autoregressive":
            self.io = step_io(meta["decoder"], meta.get("cache"), int(meta["max_steps"]))
            self.spec = self._spec(int(meta["decoder"]["num_classes"]), self.io.state_shapes)
            self.encoder = sessions["encoder"]
            self.step = SessionStep(sessions["decoder_step"], self.io)
            if "refine" in sessions:
                self.refiner = SessionRefine(sessions["refine"], self.io)
            self._memory_outputs = self.io.memory
        else:
            self.model = sessions["model"]
            if self.kind == "parallel":
                self.spec = self._spec(int(meta["num_classes"]), [])
        self.bf16_graph = None  # the encoder's (or the single graph's) OpenVINO bf16 compilation
        if self.precision.startswith("bf16"):
            from masterocr.runtime.openvino import OpenVinoGraph

            role = "encoder" if self.kind == "autoregressive" else "model"
            self.bf16_graph = OpenVinoGraph(self.export.paths[role], threads=options.threads)

    def _check_precision(self, precision: str | None, options: SessionOptions, check_margin: float) -> str:
        exported = str(self.metadata["precision"])
        precision = precision or exported
        folder = self.export.folder
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        if precision.startswith("bf16"):
            if exported != "fp32":
                raise ValueError(f"{folder}: precision {precision!r} reads an fp32 export; this one holds "
                                 f"{exported} graphs")
            if any("CUDA" in str(p) for p in options.providers or []):
                raise ValueError(f"precision {precision!r} runs on the CPU (OpenVINO); on a GPU read in fp32")
            if not 0 <= float(check_margin) <= 1:
                raise ValueError(f"check_margin {check_margin}: a probability gap between 0 and 1")
        elif precision != exported:
            raise ValueError(f"{folder}: precision {precision!r} cannot be chosen at load time: the export holds "
                             f"{exported} graphs (re-export, e.g. with --int8)")
        return precision

    def _spec(self, num_classes: int, state_shapes) -> decoding.ARSpec:
        tokens = self.metadata["tokens"]
        return decoding.ARSpec(eos=int(tokens["eos"]), bos=int(tokens["bos"]), pad=int(tokens["pad"]),
                               num_classes=num_classes, max_steps=int(self.metadata["max_steps"]),
                               state_shapes=state_shapes)

    def _check_decoding(self, refine_iters: int | None) -> None:
        """What masterocr.decoding.check_decoding refuses, refused the same way (the export names the model)."""
        name = f"{self.metadata['model_name']} ({self.metadata['family']})"
        graphs = self.metadata["graphs"]
        if self.decode_method not in DECODE_METHODS:
            raise ValueError(f"decode method {self.decode_method!r}: choose one of {DECODE_METHODS}")
        if self.beam_width < 1:
            raise ValueError(f"beam_width={self.beam_width} must be at least 1")
        if self.kind == "parallel" and self.decode_method == "beam":
            raise ValueError(f"{name} reads every position at once; beam search needs an autoregressive decoder "
                             f"(use greedy or nar)")
        if self.precision == "bf16-checked" and self.decode_method == "beam":
            raise ValueError("precision 'bf16-checked' checks greedy and nar readings; beam search ranks whole "
                             "hypotheses, which a per-position margin does not cover (use bf16 or fp32 with beam)")
        if self.decode_method == "nar" and self.kind == "autoregressive" and "refine" not in graphs:
            raise ValueError(f"{name} has no non-autoregressive decoder: decode method 'nar' is not available "
                             f"(use greedy or beam)")
        if refine_iters is not None and int(refine_iters) < 0:
            raise ValueError(f"refine_iters={refine_iters} must be >= 0")
        if self.refine_iters and "refine" not in graphs:
            raise ValueError(f"{name} has no cloze refinement: refine_iters={self.refine_iters} is not available "
                             f"(use 0)")

    def _from_array(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array, dtype=np.float32)

    # ---- the model call ----

    def decode(self, images: np.ndarray, need_attention: bool = True):
        """Decode a preprocessed batch (B, C, H, W) float32 -> token ids (B, T) (PAD after each row's EOS),
        probabilities (B, T, C), the chosen tokens' probabilities (B, T) and attention (B, T, Hf, Wf) or None:
        the arrays masterocr.decoding's DecodeResult holds on the torch path. CTC: the frames' arg-max ids,
        softmax and maximum (B, T frames), no attention. bf16-checked: rows with a close call are decoded again
        in fp32 and take those results."""
        images = np.ascontiguousarray(images, np.float32)
        fp32_graph = self.encoder if self.kind == "autoregressive" else self.model
        if self.bf16_graph is None:
            return self._decode_with(fp32_graph, images, need_attention)[:4]
        if self.precision == "bf16-checked" and self.decode_method == "beam":
            self._check_decoding(None)  # the method was changed after construction
        checked = self.precision == "bf16-checked"
        *fast, margins = self._decode_with(self.bf16_graph, images, need_attention, margins=checked)
        if not checked:
            return tuple(fast)
        redo = np.flatnonzero(margins < self.check_margin)
        self.rows_read += len(images)
        self.rows_reread += len(redo)
        if not len(redo):
            return tuple(fast)
        again = self._decode_with(fp32_graph, images[redo], need_attention)[:4]
        return _replace_rows(fast, again, redo, self.spec.pad if self.spec else 0)

    def _decode_with(self, graph, images: np.ndarray, need_attention: bool, margins: bool = False):
        """decode() through `graph` (the encoder, or the whole model): ids, probs, chosen, attention and, when
        `margins`, each row's smallest decision margin over every pass (decoding.decision_margins), else None."""
        def gaps(ids, probs, eos):
            return decoding.decision_margins(ids, probs, eos) if margins else None

        if self.kind == "ctc":
            probs = decoding.softmax(graph.run([LOGITS], {IMAGES: images})[0])  # (B, T, C)
            ids = probs.argmax(-1)
            return ids, probs, probs.max(-1), None, gaps(ids, probs, None)
        if self.kind == "parallel":
            ids, probs, _ = decoding.parallel(graph.run([LOGITS], {IMAGES: images})[0], None)
            return (*decoding.finish(ids, probs, None, self.spec, None), gaps(ids, probs, self.spec.eos))
        memory = graph.run(self._memory_outputs, {IMAGES: images})
        steps = self.spec.max_steps
        if self.decode_method == "nar":  # a cloze pass over an empty reading: every position at once
            empty = np.full((images.shape[0], steps), self.spec.pad, np.int64)
            ids, probs, attn = decoding.parallel(*self.refiner(empty, memory))
        elif self.decode_method == "beam":
            ids, probs, attn = decoding.beam(self.step, memory, self.spec, steps, self.beam_width, need_attention)
        else:
            ids, probs, attn = decoding.greedy(self.step, memory, self.spec, steps, need_attention)
        smallest = gaps(ids, probs, self.spec.eos)
        for _ in range(self.refine_iters):
            ids, probs, attn = decoding.refine(self.refiner, memory, ids, self.spec, steps, need_attention)
            if margins:
                smallest = np.minimum(smallest, gaps(ids, probs, self.spec.eos))
        if not need_attention:
            attn = None
        feature_size = None
        if attn is not None:  # (Hf, Wf): the width may differ from the model's
            hf = int(self.metadata["feature_height"])
            feature_size = (hf, attn.shape[-1] // hf)
        return (*decoding.finish(ids, probs, attn, self.spec, feature_size), smallest)

    def _predict(self, images: np.ndarray, need_attention: bool = True) -> list[ReadResult]:
        """Read a (B, C, H, W) float32 batch made by `self.transform` (RecognizerBase.predict checks the shape
        and handles orientation search)."""
        ids, probs, chosen, attention = self.decode(images, need_attention)
        if self.kind == "ctc":
            decoded = self.tokenizer.decode(probs)
        else:
            decoded = self.tokenizer.decode_chosen(ids, chosen)
        out = []
        for i, d in enumerate(decoded):
            att = None if attention is None else attention[i, : len(d.char_probs)]  # (len(text), Hf, Wf)
            out.append(ReadResult(d.text, float(d.confidence), list(d.char_probs), att))
        return out

    def __repr__(self) -> str:
        m = self.metadata
        return (f"OnnxRecognizer({m['model_name']}, {self.precision}, img_size={self.img_size}, "
                f"keep_aspect={self.keep_aspect}, charset={len(self.tokenizer.charset)} chars, "
                f"folder={self.export.folder}, decode={self.decode_method}, orientation={self.orientation})")


def _replace_rows(base: tuple, rows: tuple, index: np.ndarray, pad: int) -> tuple:
    """decode() outputs `base` with the rows `index` replaced by `rows` (the same arrays for those rows); the
    position axis grows to the longer of the two (ids padded with PAD, the rest with zeros)."""
    length = max(base[0].shape[1], rows[0].shape[1])
    out = []
    for kind, a, b in zip(("ids", "probs", "chosen", "attention"), base, rows):
        if a is None:
            out.append(None)
            continue
        fill = pad if kind == "ids" else 0
        a, b = (_pad_positions(x, length, fill) for x in (a, b))
        a = a.copy()
        a[index] = b
        out.append(a)
    return tuple(out)


def _pad_positions(array: np.ndarray, length: int, fill) -> np.ndarray:
    if array.shape[1] == length:
        return array
    shape = (array.shape[0], length - array.shape[1], *array.shape[2:])
    return np.concatenate([array, np.full(shape, fill, array.dtype)], 1)
