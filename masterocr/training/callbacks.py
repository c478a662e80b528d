"""Callbacks and plugins: atomic checkpoint files, throughput (img/s), a progress bar without noise, stopping
on SIGINT/SIGTERM with a checkpoint, and a metrics.csv that a resumed run continues."""

from __future__ import annotations

import collections
import csv
import logging
import os
import signal
import threading
import time
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from masterocr.weights import atomic_write, non_finite

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

    @property
    def last_saved_step(self) -> int:
        """The step last.ckpt holds (-1 before this run wrote one, the resumed step on --resume)."""
        return self._last_saved_step

    def _save(self, trainer: Trainer, path: str) -> None:
        problem = non_finite(trainer.lightning_module.state_dict())
        if problem:  # never overwrite a good checkpoint with broken weights
            raise TrainingDiverged(f"step {trainer.global_step}: the weights went non-finite ({problem}); "
                                   f"{path} was not written")
        trainer.save_checkpoint(path, weights_only=False)

    def _save_last(self, trainer: Trainer) -> None:
        if trainer.global_step != self._last_saved_step:
            self._save(trainer, self.last_path)
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
            self._save(trainer, self.best_path)
            if self._last_saved_step == trainer.global_step:  # last.ckpt of this step predates the new best
                self._save(trainer, self.last_path)
            if trainer.is_global_zero:
                logger.info("step %d: %s %.2f, new best -> %s", trainer.global_step, self.monitor, value, self.best_path)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save(trainer, self.last_path)  # final state, validations included
        self._last_saved_step = trainer.global_step

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "best_step": self.best_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_step = state_dict.get("best_step")


# ---- stopping: signals and divergence ---------------------------------------------------------------------

class TrainingStopped(Exception):
    """A run stopped by SIGINT/SIGTERM. `checkpoint` (last.ckpt at `step`, a step boundary) continues it
    exactly with --resume; None when a second signal stopped it before a checkpoint could be written."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        name = signal.Signals(signum).name
        where = (f"saved {checkpoint} at step {step}" if checkpoint else
                 f"stopped at step {step} without saving (the last periodic checkpoint stays as it was)")
        super().__init__(f"{name} received: {where}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports a killed process


class TrainingDiverged(Exception):
    """The loss, the gradients or the weights became NaN or infinite: the run stops before anything
    non-finite reaches the weights or a file."""


class StopOnSignal(Callback):
    """First SIGINT (Ctrl-C) or SIGTERM: finish the running optimiser step (and a validation due after it),
    write last.ckpt, stop (TrainingStopped). A second signal stops at once without writing (the last
    checkpoint stays as it was).

    The handlers are installed when training starts (replacing Lightning's SIGTERM notice, which would stop a
    run mid-validation without a checkpoint, and exit 0) and restored by `restore()`. Under DDP every rank learns of a
    signal any rank received at the next step, so all of them save and stop at the same step.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, checkpoints: RunCheckpoints):
        self.checkpoints = checkpoints
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._seen_step = -1
        self._stopping = False
        self._trainer: Trainer | None = None

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:  # the second one: stop now
            step = self._trainer.global_step if self._trainer is not None else 0
            self.restore()
            raise TrainingStopped(signum, step, None)
        self.signum = signum
        logger.warning("%s received: stopping after the running step with a checkpoint (send it again to stop "
                       "at once without one)", signal.Signals(signum).name)

    def install(self) -> None:
        """Handle SIGINT/SIGTERM from now on (call before fitting; training start installs them again)."""
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may handle signals (e.g. training started from a worker thread)
        for sig in self.SIGNALS:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)  # the first one installed over is what restore() puts back

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._trainer = trainer
        self._seen_step = trainer.global_step
        self.install()  # again: Lightning registers its own SIGTERM handler when fitting starts; replace it
        if self.signum is not None:  # a signal during set-up or the sanity check: no step to finish
            raise TrainingStopped(self.signum, trainer.global_step, None)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        stepped = trainer.global_step != self._seen_step  # a checkpoint between accumulated batches would not resume exactly
        self._seen_step = trainer.global_step
        stop = self.signum is not None
        if trainer.world_size > 1:  # a collective on every batch of every rank, so the ranks always agree
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop and stepped:
            # Saved where the periodic checkpoints are (the point Lightning resumes exactly from); the run
            # stops at the next batch, so this step's metrics are logged and a validation due now still runs.
            self.checkpoints._save_last(trainer)
            self._stopping = True

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        if self._stopping:
            raise TrainingStopped(self.signum or signal.SIGTERM, trainer.global_step, self.checkpoints.last_path)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self.restore()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.restore()


# ---- metrics.csv that --resume continues ------------------------------------------------------------------

class _ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer, but an existing metrics.csv is continued instead of deleted: rows of the steps
    from `resume_step` on (logged by the part of the run being redone; a row's step is the optimiser step
    count before that step) are dropped, the earlier ones kept, new rows appended."""

    def __init__(self, log_dir: str, resume_step: int):
        self._resume_step = int(resume_step)
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            rows = [row for row in reader if _step_of(row) < self._resume_step]
        with open(self.metrics_file_path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = fields  # new rows go under the same header (widened if new keys appear)


def _step_of(row: dict) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0


class ContinuedCSVLogger(CSVLogger):
    """CSVLogger whose metrics.csv a resumed run continues (see _ContinuedWriter); a fresh run starts one."""

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        if self._resume_step is None:
            return super().experiment
        os.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _ContinuedWriter(self.log_dir, self._resume_step)
        return self._experiment
