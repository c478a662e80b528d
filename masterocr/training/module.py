"""The LightningModule that trains any model from `build_model`; the model itself stays a pure nn.Module.

Loss: the objective the model asks for (training/objectives.py: teacher-forced cross-entropy with an optional
auxiliary CTC head, CTC, ...). Training-only heads live on the objective, not on the model, so they are
dropped at inference and never saved into weights.

Validation decodes greedily and reports, per validation set and combined (sample-weighted): word accuracy
and 1-NED under the 36-character benchmark protocol and under the model's own charset protocol, with a few
sample predictions (image, prediction, truth) drawn into TensorBoard.

Checkpoints carry, besides Lightning's state: the full resolved run config (plain dict), the EMA weights, and
the RNG states, so `--resume` continues the exact run and the file loads with torch.load(weights_only=True).
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any, Mapping

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.accelerators import CPUAccelerator
from torch import nn

from masterocr.charset import BUILTIN_CHARSETS, get_protocol
from masterocr.evaluation import Metrics, apply_protocol
from masterocr.training.callbacks import TrainingDiverged
from masterocr.training.objectives import build_objective
from masterocr.training.optim import EMA, build_optimizer, build_scheduler, effective_warmup, scaled_lr
from masterocr.weights import CKPT_CONFIG_KEY, CKPT_EMA_KEY

logger = logging.getLogger(__name__)

CKPT_RNG_KEY = "masterocr_rng"
CKPT_EMA_STATE_KEY = "masterocr_ema"
VAL_METRIC = "val/acc"  # combined 36-protocol word accuracy (%), what "best" checkpoints maximise


def charset_protocol(charset: str) -> str:
    """The evaluation protocol matching a model's charset: "36"/"62"/"94" for those sets, else "raw"."""
    for name, chars in BUILTIN_CHARSETS.items():
        if set(charset) == set(chars):
            return name
    if set(charset) <= set(BUILTIN_CHARSETS["94"]):
        return "94"
    return "raw"


def omp_threads() -> int | None:
    """OMP_NUM_THREADS when it is set to a positive number: the user's thread count, honoured by
    train.num_threads=auto (under DDP on CPU Lightning sets it to cores / processes itself)."""
    try:
        value = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        return None
    return value if value > 0 else None


def cpu_threads(num_workers: int, processes_per_node: int) -> int:
    """Compute threads per training process so that processes x threads + loader workers fit the cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, processes_per_node) - num_workers)


# ---- RNG state in checkpoints (plain tensors and tuples only: weights_only-safe) --------------------------

def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ---- sample images for TensorBoard -----------------------------------------------------------------------

def sample_sheet(images: torch.Tensor, predictions: list[str], labels: list[str]) -> np.ndarray:
    """Images (B, C, H, W) in [-1, 1] with 'pred' and 'true' lines under each, stacked: (H', W', 3) uint8."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    rows = []
    for image, pred, label in zip(images, predictions, labels):
        arr = ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        crop = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).convert("RGB")
        lines = [f"pred: {pred}", f"true: {label}", "ok" if pred == label else "WRONG"]
        width = max([crop.width] + [int(font.getlength(t)) + 8 for t in lines])
        row = Image.new("RGB", (width, crop.height + 14 * len(lines) + 6), "white")
        row.paste(crop, (0, 0))
        draw = ImageDraw.Draw(row)
        for i, text in enumerate(lines):
            colour = "black" if i < 2 else ("green" if pred == label else "red")
            draw.text((4, crop.height + 3 + 14 * i), text, fill=colour, font=font)
        rows.append(row)
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height
    return np.asarray(sheet)


# ---- the module --------------------------------------------------------------------------------------------

class RecognitionModule(LightningModule):
    """Trains `model` (any build_model result) with the `train:` section of `config` (the full run config)."""

    def __init__(self, model: nn.Module, config: Mapping[str, Any], val_names: list[str] | None = None):
        super().__init__()
        self.model = model
        self.config = dict(config)
        t = dict(self.config.get("train") or {})
        self.train_cfg = t
        self.tokenizer = model.tokenizer
        self.channels_last = bool(t.get("channels_last", False))
        self.val_names = list(val_names or [])
        self.protocols = ["36"]
        own = charset_protocol(self.tokenizer.charset)
        if own != "36":
            self.protocols.append(own)
        self.num_sample_images = int(t.get("sample_images", 8))

        self.objective = build_objective(model, t)

        self.ema: EMA | None = EMA(model, float(t.get("ema_decay", 0.9999))) if t.get("ema", False) else None
        self._ema_step = -1
        self._ema_backup: dict | None = None
        self._pending_rng: Mapping | None = None
        self._val_metrics: list[list[Metrics]] = []
        self._val_samples: dict[int, tuple] = {}

    # ---- setup ---------------------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        if isinstance(self.trainer.accelerator, CPUAccelerator):
            workers = self.trainer.datamodule._loader_kwargs()["num_workers"] if self.trainer.datamodule else 0
            threads = self.train_cfg.get("num_threads", "auto")
            source = "train.num_threads"
            if threads in (None, "auto"):
                threads, source = omp_threads(), "OMP_NUM_THREADS"
                if threads is None:
                    threads, source = cpu_threads(workers, self.trainer.num_devices), "cores"
            torch.set_num_threads(int(threads))
            if self.global_rank == 0:
                logger.info("CPU: %d compute thread(s) per process (from %s), %d loader worker(s)", int(threads),
                            source, workers)
        if self.channels_last:  # before the strategy wraps the model in DDP, whose buckets follow param strides
            self.model.to(memory_format=torch.channels_last)

    def on_fit_start(self) -> None:
        if self.ema is not None:
            self.ema.shadow = {k: v.to(self.device) for k, v in self.ema.shadow.items()}

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    # ---- training ------------------------------------------------------------------------------------------

    def compute_loss(self, images: torch.Tensor, labels: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """images (B, C, H, W), labels -> (total loss, parts for logging)."""
        return self.objective(self.model, self._images(images), labels)

    def training_step(self, batch, batch_idx: int):
        images, labels, _ = batch
        if not labels:
            logger.warning("training batch %d held no readable image; skipped", batch_idx)
            return self._empty_batch_loss() if self.trainer.world_size > 1 else None
        loss, parts = self.compute_loss(images, labels)
        diverged = not bool(torch.isfinite(loss.detach()).all())
        if self.trainer.world_size > 1:  # every rank stops together, or the others would hang in all-reduce
            diverged = self.trainer.strategy.reduce_boolean_decision(diverged, all=False)
        if diverged:
            raise TrainingDiverged(f"step {self.global_step + 1}: the loss is {float(loss.detach().float()):g} "
                                   "(not finite); the run stopped before it could reach the weights")
        bs = len(labels)
        self.log("loss", loss.detach(), prog_bar=True, batch_size=bs)
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=bs)
        self.log("lr", self.optimizers().param_groups[0]["lr"], prog_bar=True, batch_size=bs)
        return loss

    def _empty_batch_loss(self) -> torch.Tensor:
        """A zero loss that reaches every trainable parameter. Under DDP each rank must run backward so the
        gradient all-reduce sees every parameter; a rank that skipped its step would hang the others."""
        return sum((p.sum() for p in self.parameters() if p.requires_grad), torch.zeros((), device=self.device)) * 0.0

    def on_before_optimizer_step(self, optimizer) -> None:
        # Non-finite gradients would turn the weights into NaN (clipping multiplies inf by 0). A GradScaler
        # (fp16 training) skips such steps itself and lowers its scale, so it is left to do that.
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads and not bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, foreach=True))):
            raise TrainingDiverged(f"step {self.global_step + 1}: the gradients are not finite; the run stopped "
                                   "before they could reach the weights")

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None and self.global_step != self._ema_step:  # once per optimiser step
            self._ema_step = self.global_step
            self.ema.update(self.model)

    def on_train_start(self) -> None:
        if self._pending_rng is not None:  # resumed: continue the random streams where the checkpoint left them
            set_rng_state(self._pending_rng)
            self._pending_rng = None
            if self.global_rank == 0:
                logger.info("resumed at step %d (epoch %d)", self.global_step, self.current_epoch)

    # ---- optimisation --------------------------------------------------------------------------------------

    def global_batch(self) -> int:
        return int(self.train_cfg.get("batch_size", 64)) * self.trainer.accumulate_grad_batches * self.trainer.world_size

    def configure_optimizers(self):
        t = self.train_cfg
        lr = scaled_lr(float(t.get("lr", 4e-4)), self.global_batch(), int(t.get("lr_reference_batch", 512)),
                       str(t.get("lr_scaling", "sqrt")))
        modules = [self.model, self.objective]
        optimizer = build_optimizer(modules, str(t.get("optimizer", "adamw")), lr, float(t.get("weight_decay", 0.0)),
                                    tuple(t.get("betas", (0.9, 0.999))))
        total = int(self.trainer.estimated_stepping_batches)
        warmup = t.get("warmup", 0.05)
        warmup_steps = int(warmup * total) if isinstance(warmup, float) and warmup < 1 else int(warmup)
        schedule = str(t.get("schedule", "onecycle"))
        effective = effective_warmup(schedule, total, warmup_steps)
        if effective < warmup_steps and self.global_rank == 0:
            logger.warning("train.warmup=%s is %d steps, longer than %s of this %d-step run: warm-up cut to %d "
                           "steps", warmup, warmup_steps, "half" if schedule == "onecycle" else "all", total,
                           effective)
        warmup_steps = effective
        scheduler = build_scheduler(optimizer, schedule, total, warmup_steps, float(t.get("min_lr_ratio", 0.01)),
                                    time_done=self._time_budget_spent() if t.get("max_time") else None)
        if self.global_rank == 0:
            logger.info("optimiser %s: peak lr %.3g (train.lr %.3g at batch %s, global batch %d, %s scaling), "
                        "%s schedule over %d steps, %d warm-up", t.get("optimizer", "adamw"), lr,
                        float(t.get("lr", 4e-4)), t.get("lr_reference_batch", 512), self.global_batch(),
                        t.get("lr_scaling", "sqrt"), t.get("schedule", "onecycle"), total, warmup_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _time_budget_spent(self):
        """A callable: the share of train.max_time spent so far, read from Lightning's Timer (which a resumed
        run restores from its checkpoint)."""
        from lightning.pytorch.callbacks import Timer

        timer = next(c for c in self.trainer.callbacks if isinstance(c, Timer))
        budget = float(self.train_cfg["max_time"])
        return lambda: min(1.0, timer.time_elapsed("train") / budget)

    # ---- validation ----------------------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        n = max(1, len(self.val_names))
        self._val_metrics = [[Metrics(name=self._val_name(i)) for _ in self.protocols] for i in range(n)]
        self._val_samples = {}
        if self.ema is not None:
            self._ema_backup = self.ema.copy_to(self.model)

    def _val_name(self, i: int) -> str:
        return self.val_names[i] if i < len(self.val_names) else f"val{i}"

    def predict_texts(self, images: torch.Tensor) -> list[str]:
        from masterocr.decoding import decode

        result = decode(self.model, self._images(images), need_attention=False)  # the model's default decoding
        return [d.text for d in result.decoded(self.tokenizer)]

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        images, labels, _, keep = batch
        if not labels:
            return
        predictions = self.predict_texts(images)
        for p, protocol in enumerate(self.protocols):
            clean = get_protocol(protocol)
            metrics = self._val_metrics[dataloader_idx][p]
            for pred, label, k in zip(predictions, labels, keep.tolist()):
                truth = apply_protocol(label, protocol, self.tokenizer.max_length)
                if not k:
                    continue
                if truth is None:
                    metrics.dropped += 1
                    continue
                metrics.add(clean(pred), truth)
        if batch_idx == 0 and self.global_rank == 0 and dataloader_idx not in self._val_samples:
            k = self.num_sample_images
            self._val_samples[dataloader_idx] = (images[:k].detach().cpu(), predictions[:k], labels[:k])

    def on_validation_epoch_end(self) -> None:
        # (sets, protocols, [samples, correct, ned_sum]) summed over ranks: exact metrics on any world size.
        # Every rank then logs the same values (sync_dist averages identical numbers; it keeps Lightning quiet).
        sums = torch.tensor([[[m.num_samples, m.correct, m.ned_sum] for m in row] for row in self._val_metrics],
                            dtype=torch.float64, device=self.device)
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        sums = sums.cpu()
        for i in range(sums.shape[0]):
            name = self._val_name(i)
            for p, protocol in enumerate(self.protocols):
                n, correct, ned = sums[i, p].tolist()
                suffix = "" if protocol == "36" else f"_{protocol}"
                if n:
                    self.log(f"val/{name}/acc{suffix}", 100.0 * correct / n, sync_dist=True)
                    self.log(f"val/{name}/ned{suffix}", 100.0 * (1.0 - ned / n), sync_dist=True)
        total = sums.sum(0)  # (protocols, 3)
        for p, protocol in enumerate(self.protocols):
            n, correct, ned = total[p].tolist()
            suffix = "" if protocol == "36" else f"_{protocol}"
            acc = 100.0 * correct / n if n else 0.0
            self.log(f"val/acc{suffix}", acc, prog_bar=protocol == "36", sync_dist=True)
            self.log(f"val/ned{suffix}", 100.0 * (1.0 - ned / n) if n else 0.0, sync_dist=True)
        if self.global_rank == 0 and not self.trainer.sanity_checking:
            self._log_samples()
        if self._ema_backup is not None:
            self.model.load_state_dict(self._ema_backup)
            self._ema_backup = None

    def _log_samples(self) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger

        for lg in self.loggers:
            if not isinstance(lg, TensorBoardLogger):
                continue
            for i, (images, preds, labels) in sorted(self._val_samples.items()):
                name = self._val_name(i)
                lg.experiment.add_image(f"samples/{name}", sample_sheet(images, preds, labels), self.global_step,
                                        dataformats="HWC")
                rows = "\n".join(f"| {p} | {t} | {'ok' if p == t else 'wrong'} |" for p, t in zip(preds, labels))
                lg.experiment.add_text(f"samples/{name}", "| predicted | true | |\n|---|---|---|\n" + rows,
                                       self.global_step)

    # ---- checkpoints -------------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CKPT_CONFIG_KEY] = self.config
        checkpoint[CKPT_RNG_KEY] = rng_state()
        if self.ema is not None:
            checkpoint[CKPT_EMA_KEY] = {k: v.detach().cpu().clone() for k, v in self.ema.shadow.items()}
            checkpoint[CKPT_EMA_STATE_KEY] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("aux_ctc.")]:  # checkpoints from before objectives.py
            state["objective.aux_ctc.head." + key[len("aux_ctc."):]] = state.pop(key)
        if self.ema is not None and CKPT_EMA_KEY in checkpoint:
            self.ema.load(checkpoint[CKPT_EMA_KEY], checkpoint.get(CKPT_EMA_STATE_KEY, {}))
        self._pending_rng = checkpoint.get(CKPT_RNG_KEY)


def describe_parameters(module: nn.Module) -> str:
    n = sum(p.numel() for p in module.parameters())
    return f"{n / 1e6:.2f} M parameters" if n >= 1e5 else f"{n} parameters"


__all__ = ["RecognitionModule", "VAL_METRIC", "charset_protocol", "cpu_threads", "sample_sheet",
           "describe_parameters"]
