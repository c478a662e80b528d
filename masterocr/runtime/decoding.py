"""Decoding in NumPy over exported graphs: the same algorithms as masterocr.decoding, step for step.

Autoregressive models: the encoder graph gives what the decoder reads once per image (the memory's
cross-attention keys/values, or an RNN decoder's memory and its attention projection), then a decoder-step
graph runs one position at a time against the state carried from step to step (`Step`: a self-attention
cache or a recurrent state). Greedy decoding stops when every row has ended and drops ended rows from the
running batch (state and memory included) whenever at most half of the rows still run, as
`decoding._greedy_cached` does; beam search is `decoding._beam` in NumPy; `refine` is `decoding._refine` (a
cloze pass over the reading so far; from an empty reading it is the non-autoregressive pass). Parallel
models give every position at once (`parallel`). The results are blanked after each row's first EOS exactly
as `decoding._finish` blanks them, so texts, confidences, per-character probabilities and attention come out
as the torch path's. CTC readings are decoded by charset.CTCTokenizer, as on the torch path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

METHODS = ("greedy", "beam", "nar")

# step(tokens (R,) int64, position, past state, memory) -> logits (R, C), present state, attention (R, N)
Step = Callable[[np.ndarray, int, list, list], tuple[np.ndarray, list, np.ndarray]]
# refine(reading (B, T) int64, memory) -> logits (B, T, C), attention (B, T, N)
Refine = Callable[[np.ndarray, list], tuple[np.ndarray, np.ndarray]]


@dataclass
class ARSpec:
    """What the decoding loop needs to know about an autoregressive export (from its metadata)."""

    eos: int
    bos: int
    pad: int
    num_classes: int
    max_steps: int
    state_shapes: Sequence[tuple[int, ...]]  # each past tensor's shape per batch row at the first step

    def empty_cache(self, rows: int) -> list[np.ndarray]:
        """The step's first past: zeros (a transformer's concat cache has no positions yet; a fixed cache has
        max_steps zero slots; a recurrent state starts at zero)."""
        return [np.zeros((rows, *shape), np.float32) for shape in self.state_shapes]


def softmax(logits: np.ndarray) -> np.ndarray:
    """float32 softmax over the last axis."""
    x = logits.astype(np.float32, copy=False)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float32, copy=False)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def greedy(step: Step, memory_kv: Sequence[np.ndarray], spec: ARSpec, steps: int, need_attention: bool):
    """Cached greedy decoding. memory_kv: what the encoder gave the step, batch first. -> ids (B, T) int64,
    probs (B, T, C) float32, attention (B, T, N) float32 or None; T = steps run."""
    memory_kv = list(memory_kv)
    b = memory_kv[0].shape[0]
    past = spec.empty_cache(b)
    tokens = np.full(b, spec.bos, np.int64)
    rows = np.arange(b)  # original batch row of each running row
    ended = np.zeros(b, bool)
    ids = np.full((b, steps), spec.pad, np.int64)
    probs = np.zeros((b, steps, spec.num_classes), np.float32)
    attns = None  # (B, steps, N), allocated at the first step (N: the attention's length)
    t = 0
    for t in range(steps):
        logits, past, attn = step(tokens, t, past, memory_kv)
        p = softmax(logits)  # (R, C)
        tokens = p.argmax(-1)  # (R,)
        ids[rows, t] = tokens
        probs[rows, t] = p
        if need_attention:
            if attns is None:
                attns = np.zeros((b, steps, attn.shape[1]), np.float32)
            attns[rows, t] = attn
        ended |= tokens == spec.eos
        running = int((~ended).sum())
        if running == 0:
            break
        if 2 * running <= len(rows):  # compact: keep the rows still running
            keep = np.flatnonzero(~ended)
            past = [x[keep] for x in past]
            memory_kv = [x[keep] for x in memory_kv]
            rows, tokens, ended = rows[keep], tokens[keep], ended[keep]
    return ids[:, : t + 1], probs[:, : t + 1], (attns[:, : t + 1] if need_attention else None)


def beam(step: Step, memory_kv: Sequence[np.ndarray], spec: ARSpec, steps: int, width: int, need_attention: bool):
    """Beam search over summed log-probabilities (no length normalisation: width 1 is greedy); finished beams
    carry their score; an image is done when its best beam has ended. Same outputs as `greedy`."""
    if width < 1:
        raise ValueError(f"beam_width={width} must be at least 1")
    b, c = memory_kv[0].shape[0], spec.num_classes
    rows = b * width
    # Beams of image i are rows i*width .. i*width + width-1.
    memory_kv = [x[np.repeat(np.arange(b), width)] for x in memory_kv]
    past = spec.empty_cache(rows)
    scores = np.full((b, width), -np.inf, np.float32)
    scores[:, 0] = 0.0  # one live beam per image at the start
    tokens = np.full(rows, spec.bos, np.int64)
    finished = np.zeros(rows, bool)
    eos_only = np.full(c, -np.inf, np.float32)
    eos_only[spec.eos] = 0.0
    ids = np.zeros((rows, 0), np.int64)
    probs = np.zeros((rows, 0, c), np.float32)
    attn_hist = None
    base = (np.arange(b) * width)[:, None]  # (B, 1)
    for t in range(steps):
        logits, past, attn = step(tokens, t, past, memory_kv)
        logp = np.where(finished[:, None], eos_only, log_softmax(logits))  # (rows, C)
        candidates = (scores.reshape(rows, 1) + logp).reshape(b, width * c)
        flat = np.argsort(-candidates, axis=1, kind="stable")[:, :width]  # (B, k), best first
        scores = np.take_along_axis(candidates, flat, 1)
        parent = (base + flat // c).reshape(rows)  # source row of each new beam
        tokens = (flat % c).reshape(rows).astype(np.int64)
        past = [x[parent] for x in past]  # beams never leave their image: the memory stays as it is
        ids = np.concatenate([ids[parent], tokens[:, None]], 1)
        probs = np.concatenate([probs[parent], softmax(logits)[parent][:, None]], 1)
        if need_attention:
            step_attn = attn[parent][:, None]
            attn_hist = step_attn if attn_hist is None else np.concatenate([attn_hist[parent], step_attn], 1)
        finished = finished[parent] | (tokens == spec.eos)
        if finished.reshape(b, width)[:, 0].all():
            break
    best = base[:, 0]  # beam 0 of each image is its best (sorted)
    return ids[best], probs[best], (attn_hist[best] if need_attention else None)


def parallel(logits: np.ndarray, attention: np.ndarray | None):
    """All positions at once (decoding._parallel): logits (B, T, C) -> ids (B, T), probs (B, T, C), attention."""
    probs = softmax(logits)
    return probs.argmax(-1), probs, attention


def refine(run: Refine, memory: Sequence[np.ndarray], ids: np.ndarray, spec: ARSpec, steps: int,
           need_attention: bool):
    """One cloze pass over the reading so far (decoding._refine): padded to `steps` positions with PAD (never
    context), predicted again, trimmed to the longest new reading. -> ids (B, T'), probs, attention or None."""
    full = np.full((ids.shape[0], steps), spec.pad, np.int64)
    full[:, : ids.shape[1]] = ids[:, :steps]
    logits, attention = run(full, list(memory))
    probs = softmax(logits)  # (B, steps, C)
    ids = probs.argmax(-1)
    is_eos = ids == spec.eos
    first_eos = np.where(is_eos.any(1), is_eos.argmax(1), steps - 1)
    length = int(first_eos.max()) + 1
    return ids[:, :length], probs[:, :length], (attention[:, :length] if need_attention else None)


def decision_margins(ids: np.ndarray, probs: np.ndarray, eos: int | None) -> np.ndarray:
    """Per row, the smallest gap between the two most likely classes over the positions whose choice shapes the
    reading: up to and including the first EOS (later positions are never context nor output), or every frame
    (CTC: eos None). (B,) float32; the bf16-checked reading re-reads in fp32 the rows whose gap is small."""
    top2 = np.partition(probs, probs.shape[-1] - 2, axis=-1)[..., -2:]  # (B, T, 2)
    gaps = top2[..., 1] - top2[..., 0]
    if eos is not None:
        is_eos = ids == eos
        after = (np.cumsum(is_eos, 1) - is_eos) > 0
        gaps = np.where(after, np.float32(np.inf), gaps)
    return gaps.min(1) if gaps.shape[1] else np.full(len(gaps), np.inf, np.float32)


def finish(ids: np.ndarray, probs: np.ndarray, attention: np.ndarray | None, spec: ARSpec,
           feature_size: tuple[int, int] | None):
    """Blank everything after each row's first EOS (ids -> PAD, probs and attention -> 0) and give the chosen
    tokens' probabilities (B, T); attention (B, T, N) -> (B, T, Hf, Wf)."""
    is_eos = ids == spec.eos
    after = (np.cumsum(is_eos, 1) - is_eos) > 0  # strictly after the first EOS
    chosen = np.take_along_axis(probs, np.minimum(ids, probs.shape[2] - 1)[:, :, None], 2)[:, :, 0]
    ids = np.where(after, spec.pad, ids)
    probs = np.where(after[:, :, None], np.float32(0), probs)
    chosen = np.where(after, np.float32(0), chosen)
    if attention is not None:
        attention = np.where(after[:, :, None], np.float32(0), attention).reshape(*ids.shape, *feature_size)
    return ids, probs, chosen, attention


__all__ = ["METHODS", "ARSpec", "Step", "Refine", "softmax", "log_softmax", "greedy", "beam", "parallel", "refine",
           "decision_margins", "finish"]
