"""Training objectives: the loss a model family needs, chosen by the model, shared by one training module.

A model names its objective with a class attribute `objective` ("teacher_forcing", "ctc", ...); without one,
attention-tokenizer models get teacher forcing and CTC-tokenizer models CTC. An objective is an nn.Module so
that training-only heads (the auxiliary CTC head) are optimised and checkpointed with the run, yet never
land in the model's distribution weights. A new objective is a class here (or in its own module) and one
entry in OBJECTIVES.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from masterocr.charset import AttentionTokenizer, CTCTokenizer


def ctc_loss(logits: torch.Tensor, labels: list[str], tokenizer: CTCTokenizer) -> torch.Tensor:
    """logits (B, T, C) -> mean CTC loss (fp32; infeasible alignments give 0, not inf)."""
    log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T, B, C)
    targets, lengths = tokenizer.encode(labels)
    input_lengths = torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long)
    return F.ctc_loss(log_probs, targets.to(logits.device), input_lengths, lengths, blank=tokenizer.blank_id,
                      reduction="mean", zero_infinity=True)


class Objective(nn.Module):
    """(model, images, labels) -> (loss, {name: detached part for logging})."""

    def __init__(self, model: nn.Module, train_cfg: Mapping[str, Any]):
        super().__init__()
        self.train_cfg = dict(train_cfg)

    def forward(self, model: nn.Module, images: torch.Tensor, labels: list[str]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


class AuxCTC(nn.Module):
    """Joint CTC-attention: a linear CTC head on the encoder memory, pooled over the feature map's height
    to a (B, Wf, D) sequence; the known remedy for attention decoders stuck on a loss plateau."""

    def __init__(self, model: nn.Module, weight: float):
        super().__init__()
        if not all(hasattr(model, a) for a in ("encode", "feature_size")):
            raise ValueError("train.aux_ctc_weight > 0 needs a model with encode() and feature_size()")
        self.weight = float(weight)
        self.tokenizer = CTCTokenizer(model.tokenizer.charset, model.tokenizer.max_length)
        d_model = getattr(model, "memory_dim", None)  # models whose memory width is not their embedding's say so
        if d_model is None:
            d_model = model.embed.embedding_dim if hasattr(model, "embed") else getattr(
                model.config, "d_model", getattr(model.config, "embed_dim", 0))
        d_model = int(d_model)
        self.head = nn.Linear(d_model, self.tokenizer.num_classes)

    @classmethod
    def from_config(cls, model: nn.Module, train_cfg: Mapping[str, Any]) -> "AuxCTC | None":
        """The head train.aux_ctc_weight asks for, or None when it is 0."""
        weight = float(train_cfg.get("aux_ctc_weight", 0.0))
        return cls(model, weight) if weight > 0 else None

    def add(self, loss: torch.Tensor, parts: dict, model: nn.Module, memory: torch.Tensor, images: torch.Tensor,
            labels: list[str]) -> torch.Tensor:
        """loss + weight x the CTC loss on `memory`; the CTC term is logged in `parts` as "ctc"."""
        ctc = self(model, memory, images, labels)
        parts["ctc"] = ctc.detach()
        return loss + self.weight * ctc

    def forward(self, model: nn.Module, memory: torch.Tensor, images: torch.Tensor, labels: list[str]) -> torch.Tensor:
        hf, wf = model.feature_size(images.shape[2], images.shape[3])
        if memory.shape[1] != hf * wf:  # e.g. ViTSTR's memory starts with a class token
            raise ValueError(f"{type(model).__name__}: train.aux_ctc_weight needs a memory of {hf} x {wf} feature "
                             f"map tokens, got {memory.shape[1]} tokens")
        pooled = memory.reshape(memory.shape[0], hf, wf, memory.shape[2]).mean(1)  # (B, Wf, D)
        return ctc_loss(self.head(pooled), labels, self.tokenizer)


class TeacherForcing(Objective):
    """Cross-entropy over [c1 .. cn EOS] given [BOS c1 .. cn], PAD ignored (optional label smoothing), plus
    the optional auxiliary CTC loss (train.aux_ctc_weight)."""

    def __init__(self, model: nn.Module, train_cfg: Mapping[str, Any]):
        super().__init__(model, train_cfg)
        if not isinstance(model.tokenizer, AttentionTokenizer):
            raise ValueError(f"{type(model).__name__}: teacher forcing needs an attention tokenizer")
        self.label_smoothing = float(self.train_cfg.get("label_smoothing", 0.0))
        self.aux_ctc = AuxCTC.from_config(model, self.train_cfg)

    def forward(self, model, images, labels):
        tok = model.tokenizer
        targets = tok.encode(labels).to(images.device)  # (B, L + 2): BOS c.. EOS PAD..
        length = max(len(label) for label in labels) + 2  # only as long as this batch's longest label needs
        targets = targets[:, :length]
        targets_in, targets_out = targets[:, :-1], targets[:, 1:]  # (B, T) each
        memory = model.encode(images)  # (B, N, D)
        logits = model.decode_full(memory, targets_in)[0]  # (B, T, num_classes)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), targets_out.flatten(), ignore_index=tok.pad_id,
                             label_smoothing=self.label_smoothing)
        parts = {"ce": ce.detach()}
        loss = ce
        if self.aux_ctc is not None:
            loss = self.aux_ctc.add(loss, parts, model, memory, images, labels)
        return loss, parts


class CTCObjective(Objective):
    """CTC over the model's frame logits: model(images) -> (B, T, num_classes)."""

    def __init__(self, model: nn.Module, train_cfg: Mapping[str, Any]):
        super().__init__(model, train_cfg)
        if not isinstance(model.tokenizer, CTCTokenizer):
            raise ValueError(f"{type(model).__name__}: the CTC objective needs a CTC tokenizer")
        if float(self.train_cfg.get("aux_ctc_weight", 0.0)) > 0:
            raise ValueError("train.aux_ctc_weight applies to attention models; a CTC model's loss is CTC already")

    def forward(self, model, images, labels):
        return ctc_loss(model(images), labels, model.tokenizer), {}


# name -> class, or "module:Class" imported on first use (so one family's objective never loads another's).
OBJECTIVES: dict[str, type[Objective] | str] = {
    "teacher_forcing": TeacherForcing,
    "ctc": CTCObjective,
    "plm": "masterocr.training.plm:PermutationLM",
}


def objective_name(model: nn.Module) -> str:
    name = getattr(model, "objective", None)
    if name:
        return str(name)
    return "ctc" if isinstance(model.tokenizer, CTCTokenizer) else "teacher_forcing"


def build_objective(model: nn.Module, train_cfg: Mapping[str, Any]) -> Objective:
    name = objective_name(model)
    if name not in OBJECTIVES:
        raise ValueError(f"{type(model).__name__} asks for objective {name!r}; known: {sorted(OBJECTIVES)}")
    cls = OBJECTIVES[name]
    if isinstance(cls, str):
        module_name, cls_name = cls.split(":")
        cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(model, train_cfg)


__all__ = ["OBJECTIVES", "AuxCTC", "CTCObjective", "Objective", "TeacherForcing", "build_objective", "ctc_loss",
           "objective_name"]
