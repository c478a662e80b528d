"""Permutation language modelling (PLM), PARSeq's objective (Bautista & Atienza 2022, section 3.2).

One batch is decoded under K factorisation orders of its label positions, all sharing one encoder pass and
one projection of the memory: the canonical left-to-right order first, its reverse second, then random
orders, each followed by its mirror image (K/2 mirrored pairs). An order becomes two attention masks: a
query (output position) sees the context positions that come before it in the order, and the context stream
sees itself and what precedes it. The loss is the cross-entropy averaged over all orders, weighted by the
number of predicted tokens.

EOS: in the reverse order EOS is predicted first, from BOS alone (the null context a non-autoregressive read
starts from); from the third order on, EOS is not a target, since with T! orders and only T + 1 places for
EOS the canonical and null contexts are the meaningful ones. EOS is never part of anyone's context.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from masterocr.charset import AttentionTokenizer
from masterocr.training.objectives import AuxCTC, Objective

EXHAUSTIVE_BELOW = 5  # for fewer characters, orders are drawn from all permutations without repeats


def permutations(num_chars: int, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Factorisation orders over the positions [BOS, c1 .. cn, EOS] (n = num_chars): (K, n + 2) long.

    Row 0 is the canonical order, row 1 its reverse with EOS moved first; then mirrored pairs. BOS (0) is
    always first. K <= count, fewer when n! / 2 mirrored pairs do not fill it; one order for n <= 1.
    """
    n = int(num_chars)
    if n <= 1:
        return torch.arange(n + 2).unsqueeze(0)
    pairs = min(max(1, count // 2), math.factorial(n) // 2)
    if n < EXHAUSTIVE_BELOW:
        # One representative per mirrored pair (the lexicographically smaller), canonical excluded, then a
        # draw without repeats.
        pool = [p for p in itertools.permutations(range(n)) if p < p[::-1] and p != tuple(range(n))]
        pick = torch.randperm(len(pool), generator=generator)[: pairs - 1].tolist()
        base = torch.tensor([tuple(range(n))] + [pool[i] for i in pick], dtype=torch.long)
    else:  # n! / 2 >= 60 pairs: redraw the rare repeat of a pair already drawn
        seen, rows = {tuple(range(n))}, [tuple(range(n))]
        while len(rows) < pairs:
            p = tuple(torch.randperm(n, generator=generator).tolist())
            if min(p, p[::-1]) not in seen:
                seen.add(min(p, p[::-1]))
                rows.append(p)
        base = torch.tensor(rows, dtype=torch.long)
    orders = torch.stack([base, base.flip(-1)], dim=1).reshape(-1, n)  # (2 * pairs, n): each next to its mirror
    bos = torch.zeros((len(orders), 1), dtype=torch.long)
    eos = torch.full((len(orders), 1), n + 1, dtype=torch.long)
    orders = torch.cat([bos, orders + 1, eos], dim=1)  # (K, n + 2)
    orders[1, 1:] = torch.arange(n + 1, 0, -1)  # the reverse order predicts EOS first, from the null context
    return orders


def order_masks(order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An order over S + 1 positions [BOS, c1 .. cn, EOS] -> boolean masks, True where attention is blocked.

    content (S, S): context position a sees b when b comes no later than a in the order.
    query (S, S): query t (predicting position t + 1) sees context b when b comes strictly before t + 1.
    The canonical order gives causal masks for both.
    """
    size = order.shape[0]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(size, device=order.device)  # rank[p]: when position p comes in the order
    later = rank.unsqueeze(0) > rank.unsqueeze(1)  # (S+1, S+1): [a, b] = b comes after a
    content = later[:-1, :-1]
    query = (rank.unsqueeze(0) >= rank.unsqueeze(1))[1:, :-1]  # b after t + 1, or b == t + 1 itself
    return content, query


def additive(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Boolean blocked-mask -> additive float mask (0 or -inf)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))


class PermutationLM(Objective):
    """PLM cross-entropy over train.plm_permutations orders (strhub: 6), optional label smoothing and the
    auxiliary CTC head on the memory (train.aux_ctc_weight), as for teacher forcing."""

    def __init__(self, model: nn.Module, train_cfg: Mapping[str, Any]):
        super().__init__(model, train_cfg)
        if not isinstance(model.tokenizer, AttentionTokenizer):
            raise ValueError(f"{type(model).__name__}: permutation language modelling needs an attention tokenizer")
        for attr in ("encode", "memory_kv", "decode_masked"):
            if not hasattr(model, attr):
                raise ValueError(f"{type(model).__name__}: the plm objective needs a two-stream decoder "
                                 f"(no {attr}())")
        self.num_orders = int(self.train_cfg.get("plm_permutations", 6))
        if self.num_orders < 1:
            raise ValueError(f"train.plm_permutations={self.num_orders} must be at least 1")
        self.label_smoothing = float(self.train_cfg.get("label_smoothing", 0.0))
        self.aux_ctc = AuxCTC.from_config(model, self.train_cfg)

    def forward(self, model, images, labels):
        tok = model.tokenizer
        targets = tok.encode(labels).to(images.device)  # (B, L + 2): BOS c.. EOS PAD..
        num_chars = max(len(label) for label in labels)
        targets = targets[:, : num_chars + 2]  # only as long as this batch's longest label needs
        context, targets_out = targets[:, :-1], targets[:, 1:]  # (B, S) each, S = num_chars + 1
        padding = (context == tok.pad_id) | (context == tok.eos_id)  # EOS is no one's context
        memory = model.encode(images)  # (B, N, D)
        memory_kv = model.memory_kv(memory)  # projected once for every order
        orders = permutations(num_chars, self.num_orders)[: self.num_orders].to(images.device)
        total, count = 0.0, 0
        for i, order in enumerate(orders):
            content_mask, query_mask = order_masks(order)
            logits = model.decode_masked(memory_kv, context, additive(query_mask), additive(content_mask),
                                         padding)[0]  # (B, S, num_classes)
            # Sums and counts stay tensors: no device-to-host wait per order (a sum over no target is 0).
            total = total + F.cross_entropy(logits.flatten(0, 1).float(), targets_out.flatten(),
                                            ignore_index=tok.pad_id, label_smoothing=self.label_smoothing,
                                            reduction="sum")
            count = count + (targets_out != tok.pad_id).sum()
            if i == 1:  # EOS is a target under the canonical and the reverse order only
                if num_chars == 0:
                    break  # a batch of empty labels: nothing left to predict
                targets_out = targets_out.masked_fill(targets_out == tok.eos_id, tok.pad_id)
        loss = total / count
        parts = {"plm": loss.detach()}
        if self.aux_ctc is not None:
            loss = self.aux_ctc.add(loss, parts, model, memory, images, labels)
        return loss, parts


__all__ = ["PermutationLM", "additive", "order_masks", "permutations"]
