"""Decoding for every model family: greedy and beam search for attention models with a real memory cache,
best-path decoding for CTC models.

A model says how it decodes with a class attribute `decoding`: "autoregressive" (the default) or "ctc".
CTC models expose `tokenizer` (CTCTokenizer) and `forward(images) -> logits (B, T, num_classes)`.
Autoregressive models expose:
    tokenizer (AttentionTokenizer), max_steps (labels + EOS), feature_size(H, W) -> (Hf, Wf),
    encode(images) -> memory (B, N, D),
    init_cache(memory, max_steps) -> cache with `reorder(index, memory=bool)`,
    decode_step(tokens (B,), position (0-dim long tensor), cache, need_weights) -> logits (B, C), attn (B, N),
    decode_full(memory, tokens (B, T), need_weights) -> logits (B, T, C), attn (B, T, N)   [reference path]

Cached decoding computes one new position per step: each decoder layer appends that position's self-attention
key/value to its cache and reuses the memory's cross-attention keys/values, projected once per image.
`use_cache=False` re-runs the whole decoder over the growing prefix at every step (the plain reference).
Decoding stops when every sequence has produced EOS, or after `max_steps` steps.

Two optional capabilities, used when a model has them (never chosen by model name):
    decode_parallel(memory, steps, need_weights) -> logits (B, steps, C), attn (B, steps, N) or None:
        every position at once (method="nar"; models whose class attribute `decoding` is "parallel", such as
        ViTSTR, decode only this way);
    refine(memory, token_ids (B, T), need_weights) -> logits (B, T, C), attn: one cloze pass that predicts
        each position again from the other characters of a reading (`refine_iters` passes after any method;
        default: the model's attribute `refine_iters`, else 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .charset import CTCTokenizer, Decoded

METHODS = ("greedy", "beam", "nar")
KINDS = ("autoregressive", "ctc", "parallel")


@dataclass
class DecodeResult:
    """Batched decoding output, T = steps actually run (<= max_steps).

    token_ids (B, T) long: chosen tokens; positions after a sequence's first EOS hold the tokenizer's PAD id.
    probs (B, T, num_classes) float32: the softmax at each step of the chosen path (zeros after EOS).
    attention (B, T, Hf, Wf) float32 or None: last decoder layer's cross-attention, heads averaged.
    scores (B,) float32: log-probability of each chosen sequence up to and including its EOS.
    """

    token_ids: torch.Tensor
    probs: torch.Tensor
    attention: torch.Tensor | None
    scores: torch.Tensor | None = None

    def decoded(self, tokenizer) -> list[Decoded]:
        """Text, per-character probabilities and confidence (product of the chosen tokens' probabilities,
        EOS included), read from token_ids. Equals tokenizer.decode(probs) for greedy decoding; use this for
        beam search, where the chosen token is not always the step's arg-max. CTC: best-path collapse."""
        if isinstance(tokenizer, CTCTokenizer):
            return tokenizer.decode(self.probs)
        chosen = self.probs.gather(2, self.token_ids.clamp(max=self.probs.shape[2] - 1).unsqueeze(2)).squeeze(2)
        return tokenizer.decode_chosen(self.token_ids, chosen)


def _finish(model: nn.Module, feature_size: tuple[int, int], ids: torch.Tensor, probs: torch.Tensor,
            attn: torch.Tensor | None) -> DecodeResult:
    """Blank everything after each sequence's first EOS; reshape attention to the feature map."""
    tok = model.tokenizer
    is_eos = ids == tok.eos_id
    after = (is_eos.long().cumsum(1) - is_eos.long()) > 0  # (B, T) strictly after the first EOS
    chosen = probs.gather(2, ids.clamp(max=probs.shape[2] - 1).unsqueeze(2)).squeeze(2)  # (B, T)
    scores = chosen.clamp_min(1e-30).log().masked_fill(after, 0.0).sum(1)  # (B,)
    ids = ids.masked_fill(after, tok.pad_id)
    probs = probs.masked_fill(after.unsqueeze(2), 0.0)
    attention = None
    if attn is not None:
        attention = attn.float().masked_fill(after.unsqueeze(2), 0.0).reshape(*ids.shape, *feature_size)
    return DecodeResult(ids, probs, attention, scores)


def _greedy_cached(model, memory, steps, need_weights):
    """Greedy decoding with the cache. Rows that have ended are dropped from the batch (cache included)
    whenever at most half of the rows still run, so a batch's short words stop costing compute early."""
    tok = model.tokenizer
    b, device = memory.shape[0], memory.device
    cache = model.init_cache(memory, steps)
    tokens = torch.full((b,), tok.bos_id, dtype=torch.long, device=device)
    rows = torch.arange(b, device=device)  # original batch row of each running row
    ended = torch.zeros(b, dtype=torch.bool, device=device)  # per running row
    ids = torch.full((b, steps), tok.pad_id, dtype=torch.long, device=device)
    probs = torch.zeros((b, steps, model.num_classes), device=device)
    attns = torch.zeros((b, steps, memory.shape[1]), device=device) if need_weights else None
    t = 0
    for t in range(steps):
        position = torch.tensor(t, dtype=torch.long, device=device)
        logits, attn = model.decode_step(tokens, position, cache, need_weights)
        p = logits.float().softmax(-1)  # (R, C)
        tokens = p.argmax(-1)  # (R,)
        ids[rows, t] = tokens
        probs[rows, t] = p
        if need_weights:
            attns[rows, t] = attn.float()
        ended |= tokens == tok.eos_id
        running = int((~ended).sum())
        if running == 0:
            break
        if 2 * running <= len(rows):  # compact: keep the rows still running
            keep = (~ended).nonzero().squeeze(1)
            cache = cache.reorder(keep, memory=True)
            rows, tokens, ended = rows[keep], tokens[keep], ended[keep]
    # Values written after a row's EOS (before it was dropped) are blanked by _finish.
    return ids[:, : t + 1], probs[:, : t + 1], (attns[:, : t + 1] if need_weights else None)


def _greedy_full(model, memory, steps, need_weights):
    tok = model.tokenizer
    b = memory.shape[0]
    prefix = torch.full((b, 1), tok.bos_id, dtype=torch.long, device=memory.device)
    finished = torch.zeros(b, dtype=torch.bool, device=memory.device)
    probs, attns = [], []
    for _ in range(steps):
        logits, attn = model.decode_full(memory, prefix, need_weights)  # (B, t+1, C)
        p = logits[:, -1].float().softmax(-1)
        tokens = p.argmax(-1)
        prefix = torch.cat([prefix, tokens.unsqueeze(1)], 1)
        probs.append(p)
        attns.append(attn[:, -1] if need_weights else None)
        finished |= tokens == tok.eos_id
        if bool(finished.all()):
            break
    attn = torch.stack(attns, 1) if need_weights else None
    return prefix[:, 1:], torch.stack(probs, 1), attn


def _beam(model, memory, steps, width, need_weights):
    """Beam search over summed log-probabilities (no length normalisation, so width 1 is exactly greedy).

    Finished beams carry their score forward unchanged. An image is done when its best beam has ended:
    unfinished scores only fall, so none can overtake it.
    """
    tok = model.tokenizer
    b, device = memory.shape[0], memory.device
    c = model.num_classes
    if width < 1:
        raise ValueError(f"beam_width={width} must be at least 1")
    # Beams of image i are rows i*width .. i*width + width-1; the memory K/V are projected once per image.
    cache = model.init_cache(memory, steps).reorder(
        torch.arange(b, device=device).repeat_interleave(width), memory=True)
    rows = b * width
    scores = torch.full((b, width), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam per image at the start
    tokens = torch.full((rows,), tok.bos_id, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    eos_only = torch.full((c,), float("-inf"), device=device)
    eos_only[tok.eos_id] = 0.0
    ids = torch.zeros((rows, 0), dtype=torch.long, device=device)
    probs = torch.zeros((rows, 0, c), device=device)
    attn_hist = None
    base = (torch.arange(b, device=device) * width).unsqueeze(1)  # (B, 1)
    for t in range(steps):
        position = torch.tensor(t, dtype=torch.long, device=device)
        logits, attn = model.decode_step(tokens, position, cache, need_weights)
        logp = F.log_softmax(logits.float(), -1)  # (rows, C)
        logp = torch.where(finished.unsqueeze(1), eos_only, logp)
        candidates = (scores.reshape(rows, 1) + logp).reshape(b, width * c)
        scores, flat = candidates.topk(width, dim=1)  # (B, k), sorted best first
        parent = (base + flat // c).reshape(rows)  # (rows,) source row of each new beam
        tokens = (flat % c).reshape(rows)
        # Beams never leave their image, so only the self-attention cache needs reordering.
        cache = cache.reorder(parent, memory=False)
        step_probs = logits.float().softmax(-1).index_select(0, parent)
        ids = torch.cat([ids.index_select(0, parent), tokens.unsqueeze(1)], 1)
        probs = torch.cat([probs.index_select(0, parent), step_probs.unsqueeze(1)], 1)
        if need_weights:
            step_attn = attn.float().index_select(0, parent).unsqueeze(1)
            attn_hist = step_attn if attn_hist is None else torch.cat([attn_hist.index_select(0, parent), step_attn], 1)
        finished = finished.index_select(0, parent) | (tokens == tok.eos_id)
        if bool(finished.reshape(b, width)[:, 0].all()):
            break
    best = base.squeeze(1)  # beam 0 of each image is its best (topk is sorted)
    attn_best = attn_hist.index_select(0, best) if need_weights else None
    return ids.index_select(0, best), probs.index_select(0, best), attn_best


def _parallel(model, memory, steps, need_weights):
    logits, attn = model.decode_parallel(memory, steps, need_weights)  # (B, steps, C)
    probs = logits.float().softmax(-1)
    return probs.argmax(-1), probs, attn


def _refine(model, memory, ids, steps, need_weights):
    """One cloze pass over the reading so far, padded to `steps` positions (PAD is never context), so a
    pass may also lengthen a word; trimmed again to the longest reading."""
    tok = model.tokenizer
    full = torch.full((ids.shape[0], steps), tok.pad_id, dtype=torch.long, device=ids.device)
    full[:, : ids.shape[1]] = ids[:, :steps]
    logits, attn = model.refine(memory, full, need_weights)  # (B, steps, C)
    probs = logits.float().softmax(-1)
    ids = probs.argmax(-1)
    ended = (ids == tok.eos_id).any(1)
    first_eos = torch.where(ended, (ids == tok.eos_id).long().argmax(1), steps - 1)
    length = int(first_eos.max()) + 1
    return ids[:, :length], probs[:, :length], (attn[:, :length] if attn is not None else None)


def default_refine_iters(model: nn.Module) -> int:
    return int(getattr(model, "refine_iters", 0) or 0)


def check_decoding(model: nn.Module, method: str = "greedy", refine_iters: int | None = None) -> None:
    """Raise ValueError, naming the model, when it cannot decode with `method` and `refine_iters`."""
    name = type(model).__name__
    kind = getattr(model, "decoding", "autoregressive")
    if kind not in KINDS:
        raise ValueError(f"{name}: unknown decoding kind {kind!r}")
    if method not in METHODS:
        raise ValueError(f"decoding method {method!r}: choose one of {METHODS}")
    if kind == "parallel" and method == "beam":
        raise ValueError(f"{name} reads every position at once; beam search needs an autoregressive decoder "
                         f"(use greedy or nar)")
    if method == "nar" and kind == "autoregressive" and not hasattr(model, "decode_parallel"):
        raise ValueError(f"{name} has no non-autoregressive decoder: decode method 'nar' is not available "
                         f"(use greedy or beam)")
    if refine_iters is not None and int(refine_iters) < 0:
        raise ValueError(f"refine_iters={refine_iters} must be >= 0")
    if refine_iters and not hasattr(model, "refine"):
        raise ValueError(f"{name} has no cloze refinement: refine_iters={refine_iters} is not available (use 0)")


def decode_memory(model: nn.Module, memory: torch.Tensor, feature_size: tuple[int, int],
                  method: str = "greedy", beam_width: int = 5, use_cache: bool = True, max_steps: int | None = None,
                  need_attention: bool = True, refine_iters: int | None = None) -> DecodeResult:
    """The decoding half of `decode`, from an encoded memory (B, N, D) whose feature map is `feature_size`
    (Hf, Wf). Call it in eval mode under torch.no_grad(); `decode` does both."""
    check_decoding(model, method, refine_iters)
    steps = model.max_steps if max_steps is None else int(max_steps)
    if steps < 1:
        raise ValueError(f"max_steps={steps} must be at least 1")
    if method == "nar" or getattr(model, "decoding", "autoregressive") == "parallel":
        ids, probs, attn = _parallel(model, memory, steps, need_attention)
    elif method == "beam":
        ids, probs, attn = _beam(model, memory, steps, int(beam_width), need_attention)
    elif use_cache:
        ids, probs, attn = _greedy_cached(model, memory, steps, need_attention)
    else:
        ids, probs, attn = _greedy_full(model, memory, steps, need_attention)
    iters = default_refine_iters(model) if refine_iters is None else int(refine_iters)
    for _ in range(iters):
        ids, probs, attn = _refine(model, memory, ids, steps, need_attention)
    return _finish(model, feature_size, ids, probs, attn)


def _ctc(model: nn.Module, images: torch.Tensor) -> DecodeResult:
    """Best-path CTC: frame softmax (B, T, C); token_ids are the frame arg-maxes (collapse in decoded(), which
    also gives each text's probability summed over its alignments); scores: the best path's log-probability."""
    probs = model(images).float().softmax(-1)  # (B, T, num_classes)
    return DecodeResult(probs.argmax(-1), probs, None, probs.max(-1).values.clamp_min(1e-30).log().sum(1))


def decode(model: nn.Module, images: torch.Tensor, method: str = "greedy", beam_width: int = 5,
           use_cache: bool = True, max_steps: int | None = None, need_attention: bool = True,
           refine_iters: int | None = None) -> DecodeResult:
    """Read a batch: images (B, C, H, W) -> DecodeResult (see its fields; texts via
    result.decoded(tokenizer)). Runs in eval mode without autograd; wrap in torch.autocast for bf16.

    method: "greedy", "beam" (width `beam_width`, always cached) or "nar" (all positions at once, for models
    with decode_parallel). use_cache=False: full-recompute greedy. refine_iters: cloze passes after decoding
    (models with refine; default the model's own setting). max_steps: at most this many tokens (default: the
    model's max label length + EOS). CTC models ignore the other options and always decode best-path.
    """
    kind = getattr(model, "decoding", "autoregressive")
    if kind != "ctc":
        check_decoding(model, method, refine_iters)
    elif refine_iters:
        check_decoding(model, "greedy", refine_iters)
    if images.dim() != 4 or images.shape[1] != model.in_channels:
        raise ValueError(f"images must be (B, {model.in_channels}, H, W), got {tuple(images.shape)}")
    was_training = model.training
    model.eval()
    try:
        # no_grad rather than inference_mode, even inside a caller's inference_mode: under torch.autocast,
        # inference mode disables the cache of weights cast to bf16, so every decode step would cast every
        # decoder weight again.
        with torch.inference_mode(False), torch.no_grad():
            if kind == "ctc":
                return _ctc(model, images)
            memory = model.encode(images)
            feature_size = model.feature_size(images.shape[-2], images.shape[-1])
            return decode_memory(model, memory, feature_size, method, beam_width, use_cache, max_steps,
                                 need_attention, refine_iters)
    finally:
        model.train(was_training)
