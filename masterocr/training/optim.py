"""Optimiser, learning-rate schedule and learning-rate scaling with the global batch.

The configured `train.lr` is the learning rate at `train.lr_reference_batch` images per optimiser step
(default 512: MASTER's recipe of 4 GPUs x 128, lr 4e-4). The learning rate actually used is scaled with the
global batch (batch_size x accumulate_grad_batches x devices x nodes): `sqrt` by default, as Adam-type
optimisers tolerate (PARSeq scales by the square root of the device count too), `linear` or `none` on request.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

SCALINGS = ("sqrt", "linear", "none")
SCHEDULES = ("onecycle", "cosine", "constant")


def scaled_lr(lr: float, global_batch: int, reference_batch: int, scaling: str = "sqrt") -> float:
    """`lr` at `reference_batch` -> the learning rate for `global_batch` images per optimiser step."""
    if scaling not in SCALINGS:
        raise ValueError(f"train.lr_scaling={scaling!r}: choose one of {SCALINGS}")
    ratio = global_batch / reference_batch
    return lr * {"sqrt": math.sqrt(ratio), "linear": ratio, "none": 1.0}[scaling]


def param_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """Weight decay on matrices/kernels only: biases, norms and embeddings' 1-D params are not decayed."""
    decay, no_decay, seen = [], [], set()
    for module in modules:
        for p in module.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(modules: Iterable[nn.Module], name: str, lr: float, weight_decay: float = 0.0,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """Adam or AdamW over the trainable parameters of `modules`."""
    name = name.lower()
    groups = param_groups(modules, weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    if name == "adam":
        # Adam's weight decay is L2 added to the gradient; kept for recipes that ask for it.
        return torch.optim.Adam(groups, lr=lr, betas=tuple(betas), eps=eps)
    raise ValueError(f"train.optimizer={name!r}: choose adam or adamw")


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float,
                  time_done: float = 0.0) -> float:
    """Multiplier of the peak lr: linear warm-up from ~0, then cosine down to `min_lr_ratio`. `time_done`: the
    share of a wall-clock budget already spent; the cosine follows whichever of steps or time is further."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, max(time_done, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_constant(step: int, warmup_steps: int) -> float:
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def effective_warmup(schedule: str, total_steps: int, warmup_steps: int) -> int:
    """The warm-up steps a schedule really runs: at most the run's length (half of it for onecycle, whose
    peak cannot come later)."""
    total_steps = max(1, int(total_steps))
    cap = total_steps // 2 if schedule == "onecycle" else total_steps
    return max(1, min(int(warmup_steps), max(1, cap)))


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, warmup_steps: int,
                    min_lr_ratio: float = 0.01, time_done=None) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-optimiser-step schedule. All state is plain numbers, so checkpoints load with weights_only=True.

    onecycle: torch's OneCycleLR (warm-up over `warmup_steps`, cosine anneal, final lr = peak x min_lr_ratio),
    as PARSeq trains. cosine: linear warm-up, cosine to peak x min_lr_ratio. constant: warm-up, then flat.
    time_done: a callable giving the share of a wall-clock budget spent (train.max_time); cosine follows it when
    it runs ahead of the steps. onecycle refuses it: torch's OneCycleLR is indexed by steps only.
    """
    if time_done is not None and schedule == "onecycle":
        raise ValueError("train.max_time needs train.schedule=cosine (or constant): the onecycle schedule is "
                         "indexed by steps only and would stop at full learning rate")
    total_steps = max(1, int(total_steps))
    warmup_steps = max(1, min(int(warmup_steps), total_steps))
    if schedule == "onecycle":
        peak = [g["lr"] for g in optimizer.param_groups]
        div_factor = 25.0
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=peak, total_steps=total_steps + 1,  # +1: Lightning may step once past the end
            pct_start=min(0.5, warmup_steps / total_steps), anneal_strategy="cos", cycle_momentum=False,
            div_factor=div_factor, final_div_factor=1.0 / (max(min_lr_ratio, 1e-8) * div_factor))
    if schedule == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: warmup_cosine(s, total_steps, warmup_steps, min_lr_ratio,
                                               time_done() if time_done is not None else 0.0))
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_constant(s, warmup_steps))
    raise ValueError(f"train.schedule={schedule!r}: choose one of {SCHEDULES}")


class EMA:
    """Exponential moving average of a model's floating-point tensors (params and buffers), kept in fp32.

    decay ramps up as min(decay, (1 + n) / (10 + n)) so early, noisy weights fade quickly. The shadow is a
    plain dict of tensors: it goes into checkpoints as-is (weights_only-safe) and never into DDP.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if s.device != v.device:
                s = self.shadow[k] = s.to(v.device)
            if v.is_floating_point():
                s.mul_(d).add_(v.detach().float(), alpha=1.0 - d)
            else:
                s.copy_(v)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates}

    def load(self, shadow: dict[str, torch.Tensor], state: dict) -> None:
        self.shadow = {k: v.detach().float().clone() for k, v in shadow.items()}
        self.decay = float(state.get("decay", self.decay))
        self.updates = int(state.get("updates", 0))

    def copy_to(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Load the averaged weights into `model`; returns the previous weights to restore afterwards."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow, strict=True)
        return backup
