"""Callbacks and plugins: atomic checkpoint files, throughput (img/s) and a progress bar without noise."""

from __future__ import annotations

import collections
import logging
import os
import time
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar

from masterocr.weights import atomic_write

logger = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file in the target folder, fsyncs it, then renames it over the
    target (os.replace is atomic on POSIX): a kill at any moment leaves either the old file or the new one,
    never a truncated one. Loading goes through Lightning's TorchCheckpointIO with the weights_only flag
    that `trainer.fit(weights_only=True)` passes down."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = os.fspath(path)
        if "://" in path:  # remote filesystems: Lightning's own transaction-based writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_write(path, lambda f: torch.save(checkpoint, f))


class ThroughputMonitor(Callback):
    """Logs training throughput `img_s` (images per second over all ranks, loading and optimiser included)
    as a moving average over the last `window` batches; time spent in validation is left out."""

    def __init__(self, window: int = 20):
        self.window = window
        self._intervals: collections.deque = collections.deque(maxlen=window)
        self._last: float | None = None

    def _reset(self, *args: Any) -> None:
        self._last = None

    on_train_start = on_validation_start = _reset

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        images = len(batch[1]) * trainer.world_size
        if self._last is not None:
            self._intervals.append((now - self._last, images))
        self._last = now
        if self._intervals:
            seconds = sum(dt for dt, _ in self._intervals)
            pl_module.log("img_s", sum(n for _, n in self._intervals) / max(seconds, 1e-9), prog_bar=True,
                          batch_size=len(batch[1]))


class ProgressBar(TQDMProgressBar):
    """tqdm bar with loss, lr, img/s and the combined validation accuracy; no version number."""

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        if "lr" in items:
            items["lr"] = f"{float(items['lr']):.2e}"
        if "img_s" in items:
            items["img_s"] = f"{float(items['img_s']):.1f}"
        return items


class RunCheckpoints(Callback):
    """`last.ckpt` every `every_n_steps` optimiser steps and at the end of training; `best.ckpt` whenever
    `monitor` (higher is better) improves after a validation. Files go through the trainer's CheckpointIO
    (atomic here) and are written by rank 0 only; every rank takes the same decisions (the monitored value is
    already reduced over ranks), so the collective save never hangs."""

    def __init__(self, dirpath: str | os.PathLike, every_n_steps: int, monitor: str | None = None):
        self.dirpath = os.fspath(dirpath)
        self.every_n_steps = int(every_n_steps)
        self.monitor = monitor
        self.best_score: float | None = None
        self.best_step: int | None = None
        self._last_saved_step = -1

    @property
    def last_path(self) -> str:
        return os.path.join(self.dirpath, "last.ckpt")

    @property
    def best_path(self) -> str:
        return os.path.join(self.dirpath, "best.ckpt")

    def _save_last(self, trainer: Trainer) -> None:
        if trainer.global_step != self._last_saved_step:
            trainer.save_checkpoint(self.last_path, weights_only=False)
            self._last_saved_step = trainer.global_step

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_saved_step = trainer.global_step  # a resumed run's last.ckpt is already this step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0:
            self._save_last(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self.monitor is None or trainer.state.fn != "fit":
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = float(value)
        if self.best_score is None or value > self.best_score:
            self.best_score, self.best_step = value, trainer.global_step
            trainer.save_checkpoint(self.best_path, weights_only=False)
            if self._last_saved_step == trainer.global_step:  # last.ckpt of this step predates the new best
                trainer.save_checkpoint(self.last_path, weights_only=False)
            if trainer.is_global_zero:
                logger.info("step %d: %s %.2f, new best -> %s", trainer.global_step, self.monitor, value, self.best_path)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        trainer.save_checkpoint(self.last_path, weights_only=False)  # final state, validations included

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_step": self.best_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_step = state_dict.get("best_step")
