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
                    "strategy/precision; torchrun and SLURM launches are detected.",
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
    p.add_argument("--quiet", action="store_true", help="warnings and errors only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from masterocr.training.runner import default_output, resolve_run_config, train

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.resume and args.finetune:
        raise ValueError("--resume continues a run with its optimiser state; --finetune starts a new one: pick one")
    cfg = resolve_run_config(args.config, args.overrides, resume=args.resume, finetune=args.finetune)
    output = args.output or default_output(args.config, args.resume)
    summary = train(cfg, output, resume=args.resume)
    if summary.get("is_global_zero", True):
        print(json.dumps(summary))
    return 130 if summary.get("interrupted") else 0
