"""One training run from a resolved config: the model, the data, the Lightning Trainer, checkpoints, exports.

Devices follow Lightning: `train.accelerator/devices/num_nodes/strategy/precision`. Under `torchrun` or SLURM
(`srun`) every process runs this same code and Lightning reads the rank from the environment; with
`devices: N` on one machine Lightning launches the N processes itself. On CPU, bf16 autocast is the default
precision and the compute threads per process are set so that processes x threads + loader workers fit the
cores (oversubscription was measured to cost 3-6x).

Run folder (`--output`, default runs/<config name>):
    config.yaml             the fully resolved config (also inside every checkpoint)
    checkpoints/last.ckpt   every train.checkpoint_every_steps and at the end; resume with --resume
    checkpoints/best.ckpt   best combined validation accuracy (36 protocol)
    tensorboard/, csv/metrics.csv
    weights/final.safetensors (+ .json), weights/best.safetensors: model weights only, for distribution
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from masterocr.config import apply_overrides, load_config, to_dict

if TYPE_CHECKING:
    import lightning.pytorch as pl

logger = logging.getLogger(__name__)

TRAIN_DEFAULTS: dict[str, Any] = {
    "seed": 42,
    "batch_size": 64,                 # per device (process)
    "val_batch_size": None,           # default: batch_size
    "accumulate_grad_batches": 1,
    "max_steps": 100_000,             # optimiser steps; null to train by max_epochs
    "max_epochs": None,
    "max_time": None,                 # wall-clock budget in seconds: training stops there, and the lr schedule
                                      # ends at whichever of max_steps or max_time comes first
    "optimizer": "adamw",             # adam | adamw
    "lr": 4.0e-4,                     # peak lr at lr_reference_batch images per optimiser step
    "lr_reference_batch": 512,
    "lr_scaling": "sqrt",             # sqrt | linear | none: how lr follows the global batch
    "weight_decay": 0.0,
    "betas": [0.9, 0.999],
    "schedule": "onecycle",           # onecycle | cosine | constant
    "warmup": 0.05,                   # fraction of the steps (< 1) or a number of steps
    "min_lr_ratio": 0.01,             # final lr / peak lr
    "gradient_clip": 5.0,             # max gradient norm; 0 or null: off
    "label_smoothing": 0.0,
    "aux_ctc_weight": 0.0,            # > 0: joint CTC-attention training on the encoder memory
    "plm_permutations": 6,            # PARSeq: factorisation orders per batch (canonical first, mirrored pairs)
    "ema": False,
    "ema_decay": 0.9999,
    "init_weights": None,             # weights to start from (what --finetune sets)
    "accelerator": "auto",            # auto | cpu | gpu
    "devices": "auto",
    "num_nodes": 1,
    "strategy": "auto",               # auto | ddp | ...
    "precision": "auto",              # auto: bf16-mixed on CPU and bf16 GPUs, 16-mixed on older GPUs; or 32-true
    "num_threads": "auto",            # CPU compute threads per process
    "channels_last": "auto",          # auto: on with mixed precision (faster convolutions on CPU and GPU)
    "val_every_steps": 1000,
    "checkpoint_every_steps": 1000,
    "log_every_steps": 50,
    "progress_refresh": "auto",       # batches between progress-bar updates (auto: 1 on a terminal, else 50)
    "sample_images": 8,               # validation samples drawn into TensorBoard per set
    "num_sanity_val_steps": 2,
    "export_dtype": "fp32",           # weights/*.safetensors precision: fp32 | fp16
    "deterministic": False,
}

DATA_DEFAULTS: dict[str, Any] = {
    "train": [],                      # [{path: ..., weight: ...} | {synthetic: {length, seed, config}, weight}]
    "val": [],                        # [{name: ..., path: ...}]
    "augment": "parseq",              # parseq | light | none | {preset, num_ops, ops: {...}}
    "keep_aspect": False,
    "remove_whitespace": False,
    "epoch_size": None,               # draws per epoch (default: all samples of all sources)
    "num_workers": "auto",
    "prefetch_factor": 2,
    "short_words_first": None,        # {steps, start_length}: synthetic labels capped short at first
    "rotate90": 0.0,                  # share of training crops (real and synthetic) turned 90/180/270 degrees
    "tall_turn": 0.0,                 # > 0: crops this many times taller than wide turned 90 degrees (train + val)
}


# ---- config ------------------------------------------------------------------------------------------------

def with_defaults(cfg: DictConfig | Mapping) -> DictConfig:
    """Fill `train:` / `data:` defaults under a config; unknown keys there are an error naming them."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    for section, defaults in (("train", TRAIN_DEFAULTS), ("data", DATA_DEFAULTS)):
        given = cfg.get(section) or {}
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ValueError(f"unknown {section} config key(s) {unknown}; known: {sorted(defaults)}")
    if "model" not in cfg:
        raise ValueError("config has no `model:` section (start from a model config, e.g. `base: master.yaml`)")
    return OmegaConf.merge({"train": TRAIN_DEFAULTS, "data": DATA_DEFAULTS}, cfg)


def read_checkpoint_config(path: str | os.PathLike) -> dict:
    """The resolved run config stored in a training checkpoint (weights_only load, memory-mapped)."""
    from masterocr.weights import CKPT_CONFIG_KEY, WeightsError, load_torch_file

    try:
        ckpt = load_torch_file(path, mmap=True)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--resume {e}") from None
    except WeightsError as e:
        raise WeightsError(f"--resume {e}") from None
    cfg = ckpt.get(CKPT_CONFIG_KEY) if isinstance(ckpt, dict) else None
    if not isinstance(cfg, dict):
        raise ValueError(f"--resume {path}: not a masterocr training checkpoint (no config inside)")
    return cfg


def resolve_run_config(config: str | None, overrides: Sequence[str] = (), resume: str | None = None,
                       finetune: str | None = None) -> DictConfig:
    """The run's config: --config + overrides, or on --resume the checkpoint's own config + overrides."""
    if resume:
        if config:
            logger.warning("--resume: using the config saved in %s; --config %s is ignored (overrides apply)",
                           resume, config)
        saved = read_checkpoint_config(resume)
        cfg = apply_overrides(OmegaConf.create(saved), overrides)
        _check_resumable(resume, saved, to_dict(cfg))
    else:
        if not config:
            raise ValueError("--config is required (a config name such as master-small, or a YAML file)")
        cfg = load_config(config, overrides)
    cfg = with_defaults(cfg)
    if finetune:
        cfg.train.init_weights = str(finetune)
    if cfg.train.init_weights and not resume:
        cfg.model = finetune_model_config(cfg.model, cfg.train.init_weights)
    return cfg


def _check_resumable(resume: str, saved: Mapping, new: Mapping) -> None:
    """ValueError for overrides a resumed run cannot honour: another model (the checkpoint's weights and
    optimiser state are for its own), or a longer onecycle schedule (its total is fixed when it starts)."""
    old_model, new_model = saved.get("model") or {}, new.get("model") or {}
    changed = sorted(k for k in set(old_model) | set(new_model) if old_model.get(k) != new_model.get(k))
    if changed:
        raise ValueError(f"--resume {resume}: the model cannot change when a run continues "
                         f"({', '.join('model.' + k for k in changed)}): the checkpoint's weights and optimiser "
                         f"state are for its own model. Start a new run from its weights instead: "
                         f"--finetune {resume} with the new model settings")
    old_t, new_t = saved.get("train") or {}, new.get("train") or {}
    if str(new_t.get("schedule", "onecycle")) == "onecycle" and old_t.get("max_steps") != new_t.get("max_steps"):
        raise ValueError(f"--resume {resume}: train.max_steps cannot change under the onecycle schedule (its "
                         f"length is fixed when the run starts); --finetune {resume} starts a new schedule")


def checkpoint_step(path: str | os.PathLike) -> int:
    """The optimiser step a training checkpoint was saved at."""
    from masterocr.weights import load_torch_file

    ckpt = load_torch_file(path, mmap=True)
    return int(ckpt.get("global_step", 0)) if isinstance(ckpt, dict) else 0


def absolute_paths(cfg: DictConfig, base: str | os.PathLike | None = None) -> DictConfig:
    """Relative paths of the config that name existing files or folders (data sources, synthetic renderer
    configs and fonts, a charset file, init_weights) made absolute against `base` (default: the current
    directory, where they are opened), so the config saved with a run means the same from anywhere."""
    base = Path(base or os.getcwd())

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not os.path.isabs(value) and (base / value).exists():
            return str((base / value).resolve())
        return value

    def fix_list(value: Any) -> Any:
        return [fix(v) for v in value] if OmegaConf.is_list(value) or isinstance(value, list) else fix(value)

    for section in ("train", "val"):
        sources = cfg.data.get(section) or []
        for i, source in enumerate(sources):
            if isinstance(source, str):
                sources[i] = fix(source)
                continue
            if source.get("path") is not None:
                source.path = fix_list(source.path)
            synthetic = source.get("synthetic")
            if OmegaConf.is_dict(synthetic):
                if isinstance(synthetic.get("config"), str):
                    synthetic.config = fix(synthetic.config)
                if synthetic.get("fonts") is not None:
                    synthetic.fonts = fix_list(synthetic.fonts)
    if isinstance(cfg.model.get("charset"), str) and os.path.isfile(base / cfg.model.charset):
        cfg.model.charset = fix(cfg.model.charset)
    if isinstance(cfg.train.get("init_weights"), str):
        cfg.train.init_weights = fix(cfg.train.init_weights)
    return cfg


def finetune_model_config(model_cfg: DictConfig, weights: str) -> DictConfig:
    """The model to fine-tune: the architecture of `weights`, with the charset and label length of the run's
    config (rows of characters both charsets share are copied, see weights.finetune_state_dict)."""
    from masterocr.weights import read_model_config

    source = read_model_config(weights)
    merged = dict(source, charset=model_cfg.charset, max_label_length=model_cfg.max_label_length)
    changed = sorted(k for k in set(source) | set(model_cfg)
                     if k not in ("charset", "max_label_length") and source.get(k) != model_cfg.get(k))
    if changed:
        logger.warning("--finetune %s: the model follows the weights' architecture; config values replaced for %s",
                       weights, changed)
    return OmegaConf.create(merged)


def default_output(config: str | None, resume: str | None) -> Path:
    if resume:
        ckpt = Path(resume).resolve()
        if ckpt.parent.name == "checkpoints":
            return ckpt.parent.parent
    name = Path(config).stem if config else "run"
    return Path("runs") / name


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


# ---- devices -----------------------------------------------------------------------------------------------

def resolve_devices(t: Mapping[str, Any]) -> dict[str, Any]:
    """Trainer device arguments from `train:`; "auto" precision is bf16-mixed on CPU and bf16 GPUs."""
    accelerator = str(t["accelerator"])
    use_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if use_gpu and not torch.cuda.is_available():
        raise ValueError(f"train.accelerator={accelerator}: "
                         + ("this torch is built for CPU only" if torch.version.cuda is None
                            else "no CUDA GPU is visible to this process")
                         + f" (torch {torch.__version__}); use train.accelerator=cpu or auto")
    precision = str(t["precision"])
    if precision == "auto":
        precision = "bf16-mixed" if (not use_gpu or torch.cuda.is_bf16_supported()) else "16-mixed"
    channels_last = t["channels_last"]
    # auto: on with mixed precision, where oneDNN/cuDNN convolutions are fastest in NHWC (measured in
    # benchmarks/train_throughput.py); fp32 keeps the default layout.
    channels_last = ("mixed" in precision) if channels_last == "auto" else bool(channels_last)
    devices = t["devices"]
    if devices == "auto" and not use_gpu:
        devices = 1  # Lightning's "auto" on CPU is 1 process; ask for more explicitly (DDP on gloo)
    return {"accelerator": "gpu" if use_gpu else ("cpu" if accelerator == "auto" else accelerator),
            "devices": devices, "num_nodes": int(t["num_nodes"]), "strategy": t["strategy"],
            "precision": precision, "channels_last": channels_last}


# ---- the run -----------------------------------------------------------------------------------------------

def quiet_lightning() -> None:
    """Lightning's messages through the application's logging only: its own console handler printed every
    INFO line a second time, and its advertisement and model-summary precision notes are dropped. Its level
    follows the root logger's (so `--quiet` silences it)."""
    import lightning  # noqa: F401  (adds its console handler on import)

    level = logging.getLogger().getEffectiveLevel()
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        own = logging.getLogger(name)
        for handler in list(own.handlers):
            own.removeHandler(handler)
        own.propagate = True
        own.setLevel(level)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropAdverts) for f in target.filters):
            target.addFilter(_DropAdverts())
    warnings.filterwarnings("ignore", message=r"Precision .* is not supported by the model summary")


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def max_time_delta(value) -> "datetime.timedelta | None":
    """train.max_time (seconds, > 0, or null) as the Trainer's timedelta."""
    import datetime

    if value in (None, 0):
        return None
    seconds = float(value)
    if not seconds > 0:
        raise ValueError(f"train.max_time={value!r}: give a positive number of seconds, or null for no limit")
    return datetime.timedelta(seconds=seconds)


def build_trainer(t: Mapping[str, Any], dev: Mapping[str, Any], output: str | os.PathLike, has_val: bool,
                  callbacks: list, resume_step: int | None = None, progress: bool = True) -> "pl.Trainer":
    """The Lightning Trainer for `train:` settings `t` and resolved devices `dev` (also used by the benchmark).
    resume_step: the step a resumed run continues from (its csv/metrics.csv is continued, not replaced);
    progress=False: no progress bar whatever train.progress_refresh says (--quiet)."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from masterocr.training.callbacks import AtomicCheckpointIO, ContinuedCSVLogger, ProgressBar, ThroughputMonitor

    accumulate = int(t["accumulate_grad_batches"])
    refresh = t["progress_refresh"]
    refresh = (1 if sys.stderr.isatty() else 50) if refresh == "auto" else int(refresh)
    refresh = refresh if progress else 0
    max_steps = int(t["max_steps"]) if t["max_steps"] else -1
    if max_steps < 0 and not t["max_epochs"]:
        raise ValueError("set train.max_steps or train.max_epochs")
    return pl.Trainer(
        accelerator=dev["accelerator"], devices=dev["devices"], num_nodes=dev["num_nodes"], strategy=dev["strategy"],
        precision=dev["precision"], max_steps=max_steps, max_epochs=int(t["max_epochs"]) if t["max_epochs"] else -1,
        max_time=max_time_delta(t.get("max_time")),
        accumulate_grad_batches=accumulate,
        gradient_clip_val=float(t["gradient_clip"]) if t["gradient_clip"] else None, gradient_clip_algorithm="norm",
        val_check_interval=int(t["val_every_steps"]) * accumulate if has_val else None,
        check_val_every_n_epoch=None if has_val else 1, limit_val_batches=None if has_val else 0,
        num_sanity_val_steps=int(t["num_sanity_val_steps"]) if has_val else 0,
        log_every_n_steps=int(t["log_every_steps"]),
        callbacks=list(callbacks) + [ThroughputMonitor()] + ([ProgressBar(refresh_rate=refresh)] if refresh > 0 else []),
        enable_progress_bar=refresh > 0,
        logger=[TensorBoardLogger(output, name="tensorboard", version=""),
                ContinuedCSVLogger(output, name="csv", version="", resume_step=resume_step)],
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # RecognitionData shards by rank itself
        default_root_dir=output, deterministic=bool(t["deterministic"]), benchmark=dev["accelerator"] == "gpu",
        enable_checkpointing=False,  # RunCheckpoints writes last/best
        enable_model_summary=bool(t.get("model_summary", True)),
    )


def train(cfg: DictConfig, output: str | os.PathLike, resume: str | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Train per `cfg` into `output`; returns a summary (steps, best score, files).

    SIGINT/SIGTERM end the run after the running step with last.ckpt written (summary "interrupted",
    "signal", "exit_code" 130/143). A resumed run whose checkpoint already reached train.max_steps trains
    nothing (summary "already_finished"). A loss, gradient or weight that turns NaN/inf raises
    TrainingDiverged before anything non-finite is written (the last checkpoint stays the last good one).
    """
    import lightning.pytorch as pl
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from masterocr.models import build_model
    from masterocr.training.callbacks import RunCheckpoints, StopOnSignal, TrainingDiverged, TrainingStopped
    from masterocr.training.data import RecognitionData
    from masterocr.training.module import VAL_METRIC, RecognitionModule, describe_parameters
    from masterocr.weights import load_for_finetune, save_weights

    quiet_lightning()
    output = Path(output)
    ckpt_dir = output / "checkpoints"
    if not resume and (ckpt_dir / "last.ckpt").exists():
        raise ValueError(f"{output} already holds a run ({ckpt_dir / 'last.ckpt'}); continue it with "
                         f"--resume {ckpt_dir / 'last.ckpt'} or choose another --output")
    resume_step = checkpoint_step(resume) if resume else None
    max_steps = int(cfg.train.max_steps) if cfg.train.max_steps else 0
    if resume and max_steps and resume_step >= max_steps:
        further = (f"--finetune {resume} starts a new run from its weights (a onecycle schedule cannot be "
                   "stretched)" if str(cfg.train.schedule) == "onecycle" else
                   f"raise train.max_steps, e.g. --resume {resume} train.max_steps={max_steps + max(1, max_steps // 2)}")
        return {"output": str(output), "global_step": resume_step, "is_global_zero": True, "interrupted": False,
                "already_finished": True, "last": str(resume),
                "message": f"{resume} is a finished run (step {resume_step} of train.max_steps={max_steps}): "
                           f"nothing to train. To train further, {further}"}
    if not resume:  # the saved config must mean the same from any directory --resume is run in
        absolute_paths(cfg)
    dev = resolve_devices(cfg.train)
    cfg.train.channels_last = dev["channels_last"]
    cfg.train.precision = dev["precision"]
    t = cfg.train
    config = to_dict(cfg)

    # With channels_last, the 1x1 GC-fusion convolutions on (B, C, 1, 1) maps get gradients whose strides differ
    # from their weights' only in size-1 dimensions (the same memory layout); DDP warns about it each step.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    # Lightning 2.6's own pytree helper builds torch's deprecated LeafSpec; nothing a user can act on.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning)
    pl.seed_everything(int(t.seed), workers=False, verbose=False)  # data randomness is seeded per sample
    if dev["accelerator"] == "gpu":
        torch.set_float32_matmul_precision("high")
    model = build_model(cfg.model)
    if t.init_weights and not resume:
        stats = load_for_finetune(model, t.init_weights)
        logger.info("initialised from %s: %d characters shared, %d new", t.init_weights, stats["shared_chars"],
                    stats["new_chars"])
    data = RecognitionData(config, model.tokenizer, model.img_size, model.in_channels)
    try:
        data.setup("fit")
    except FileNotFoundError as e:
        if not resume:
            raise
        raise FileNotFoundError(f"{e} (a relative path in the run's config is read from the current directory "
                                f"{os.getcwd()}: resume from the directory the run was started in, or override "
                                "the path, e.g. data.train.0.path=/abs/path)") from None
    module = RecognitionModule(model, config, val_names=data.val_names)
    logger.info("model %s: %s", cfg.model.name, describe_parameters(model))

    has_val = bool(data.val_sets)
    checkpoints = RunCheckpoints(ckpt_dir, int(t.checkpoint_every_steps), VAL_METRIC if has_val else None)
    stop = StopOnSignal(checkpoints)
    trainer = build_trainer(t, dev, output, has_val, [checkpoints, stop], resume_step=resume_step,
                            progress=progress)
    if trainer.is_global_zero:
        output.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(config), output / "config.yaml")
        logger.info("run folder %s", output)
    summary: dict[str, Any] = {"output": str(output)}
    stop.install()  # from here on a signal is ours to handle, also during set-up and the sanity check
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
    except TrainingStopped as e:
        summary.update(signal=signal_name(e.signum), exit_code=e.exit_code, stopped_checkpoint=e.checkpoint)
    except SIGTERMException:  # Lightning's own SIGTERM notice (e.g. under DDP, relayed from another rank)
        summary.update(signal="SIGTERM", exit_code=128 + signal.SIGTERM, stopped_checkpoint=None)
    except TrainingDiverged as e:
        last = checkpoints.last_path if os.path.exists(checkpoints.last_path) else None
        kept = (f"{last} (step {checkpoint_step(last)}) is the last good checkpoint" if last
                else "no checkpoint had been written yet")
        raise TrainingDiverged(f"{e}. Nothing non-finite was written: {kept}. Usual causes: a learning rate too "
                               f"high (train.lr={t.lr}), broken labels or images, fp16 overflow; start again with "
                               f"a lower train.lr (or --finetune the last good checkpoint with one)") from None
    finally:
        stop.restore()

    summary.update({"global_step": trainer.global_step, "world_size": trainer.world_size,
                    "is_global_zero": trainer.is_global_zero,
                    "interrupted": trainer.interrupted or "signal" in summary, "best_score": checkpoints.best_score,
                    "best_step": checkpoints.best_step, "last": checkpoints.last_path})
    if trainer.is_global_zero and not summary["interrupted"]:
        # The resize mode is part of how the model must be fed: store it with the weights.
        keep_aspect = bool(cfg.data.keep_aspect)
        feeding = {"keep_aspect": keep_aspect}
        if float(cfg.data.get("tall_turn") or 0.0) > 0:  # trained to read tall crops turned: read them so
            feeding["orientation"] = "tall"
        extra = {"global_step": trainer.global_step, "best_val_acc": checkpoints.best_score, **feeding}
        final = module.ema.shadow if module.ema is not None else model.state_dict()
        summary["final_weights"] = str(save_weights(final, cfg.model, output / "weights" / "final.safetensors",
                                                    dtype=str(t.export_dtype), extra=extra))
        if os.path.exists(checkpoints.best_path):
            from masterocr.weights import read_checkpoint

            tensors, model_cfg, _ = read_checkpoint(checkpoints.best_path)
            summary["best_weights"] = str(save_weights(tensors, model_cfg, output / "weights" / "best.safetensors",
                                                       dtype=str(t.export_dtype),
                                                       extra={"global_step": checkpoints.best_step,
                                                              "val_acc": checkpoints.best_score,
                                                              **feeding}))
    return summary
