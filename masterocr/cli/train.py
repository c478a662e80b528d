"""`masterocr train`: one command from a 2-core CPU to many GPU nodes (PyTorch Lightning underneath)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

EPILOG = """examples:
  masterocr train --config master-tiny data.train='[{path: data/train}]' data.val='[{name: val, path: data/val}]'
  masterocr train --config finetune-real --finetune runs/master-synth/weights/best.safetensors
  masterocr train --resume runs/finetune-real/checkpoints/last.ckpt
  torchrun --nnodes 2 --nproc-per-node 4 ... -m masterocr.cli.main train --config train-synth-lmdb \\
      train.devices=4 train.num_nodes=2
  srun masterocr train --config train-synth-lmdb train.devices=4 train.num_nodes=2   (in an sbatch script)
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train or fine-tune a model from a YAML config",
        description="Train a model from a YAML config (`base:` inheritance; key=value overrides such as "
                    "train.batch_size=32). The resolved config is saved in the run folder and in every "
                    "checkpoint. Devices, precision and DDP come from train.accelerator/devices/num_nodes/"
                    "strategy/precision; torchrun and SLURM launches are detected. Ctrl-C or SIGTERM finishes "
                    "the running step, writes checkpoints/last.ckpt and exits 130/143 (--resume continues "
                    "exactly); a second signal stops at once. A loss or gradient that turns NaN/inf stops the "
                    "run (exit 1) before anything non-finite is written.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="config name (e.g. master-small, finetune-real) or YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=1e-4")
    p.add_argument("--resume", metavar="CKPT",
                   help="continue a run exactly (step, optimiser, schedule, RNG, data position) from a checkpoint")
    p.add_argument("--finetune", metavar="WEIGHTS",
                   help="start a new run from these weights only (bundled name, .safetensors or .ckpt): the model "
                        "takes their architecture and the config's charset, which may differ (shared characters "
                        "keep their rows, new ones start fresh)")
    p.add_argument("--output", metavar="DIR", help="run folder (default runs/<config name>, or the resumed run's)")
    p.add_argument("--quiet", action="store_true", help="warnings and errors only, no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from masterocr.training.callbacks import TrainingDiverged
    from masterocr.training.runner import default_output, resolve_run_config, train

    if args.resume and args.finetune:
        raise ValueError("--resume continues a run with its optimiser state; --finetune starts a new one: pick one")
    cfg = resolve_run_config(args.config, args.overrides, resume=args.resume, finetune=args.finetune)
    output = args.output or default_output(args.config, args.resume)
    try:
        summary = train(cfg, output, resume=args.resume, progress=not args.quiet)
    except TrainingDiverged as e:
        print(f"masterocr train: error: {e}", file=sys.stderr)
        return 1
    if summary.get("already_finished"):
        print(f"masterocr train: {summary['message']}", file=sys.stderr)
    elif summary.get("signal"):
        where = (f"checkpoint {summary['stopped_checkpoint']} at step {summary['global_step']}; continue with "
                 f"--resume {summary['stopped_checkpoint']}" if summary.get("stopped_checkpoint")
                 else f"stopped at step {summary['global_step']} without saving (the last periodic checkpoint, if "
                      "any, stays as it was)")
        print(f"masterocr train: {summary['signal']}: {where}", file=sys.stderr)
    if summary.get("is_global_zero", True):
        print(json.dumps(summary))
    if summary.get("signal"):
        return int(summary["exit_code"])
    return 130 if summary.get("interrupted") else 0
