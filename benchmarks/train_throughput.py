"""Training throughput on this CPU, and the training engine's overhead over a bare PyTorch loop.

Table 1: throughput of full training steps (forward, the model's own training loss (teacher forcing, PARSeq's
permutation language modelling, ...), backward, gradient clipping, AdamW step) for master, master-small and
master-tiny at 32x100 and 48x160 (models with a fixed ViT input: their own size, or --sizes), batch 32: fp32, bf16 autocast, and bf16 autocast with
channels_last tensors, as images per CPU-second on one thread, plus wall-clock img/s of bf16 + channels_last
on `--threads` threads (the prototype's reference setting). A bare PyTorch loop on fixed random batches (the
data pipeline is not measured).

Table 2 (one thread by default): the same model, batches and precision through `masterocr train`'s engine (Lightning Trainer built
by masterocr.training.runner.build_trainer, RecognitionModule, loggers, throughput monitor, progress bar)
against the bare loop, in alternating rounds. Overhead = 1 - engine / bare, from wall-clock img/s (best
round of each) and from CPU time per image (this process, all threads; median round), which other processes
on a shared machine disturb much less than wall-clock time.

On a shared machine other processes slow wall-clock figures down unevenly (two OpenMP threads wait for each
other whenever one is descheduled); CPU-second figures on one thread are the stable ones. The load average
at the start and end is printed; compare ratios from one run.

    python benchmarks/train_throughput.py [--threads 2] [--min-time 6] [--models master-small ...]
    python benchmarks/train_throughput.py --skip-overhead --models parseq-tiny parseq-tiny@model.encoder_depth=6
(`name@key=value@...`: a config with overrides.)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the `masterocr` command sets it (see cli/main.py)

import torch  # noqa: E402

from masterocr.config import load_config, to_dict  # noqa: E402
from masterocr.models import build_model  # noqa: E402

SIZES = [(32, 100), (48, 160)]
VARIANTS = [("fp32", False, False), ("bf16", True, False), ("bf16+CL", True, True)]


def make_batches(tokenizer, count: int, batch: int, height: int, width: int, seed: int = 0):
    """Fixed random images (B, 3, H, W) and random words of 3-10 characters from the model's charset."""
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    chars = tokenizer.charset
    return [(torch.rand(batch, 3, height, width, generator=g) * 2 - 1,
             ["".join(rng.choice(chars) for _ in range(rng.randint(3, 10))) for _ in range(batch)])
            for _ in range(count)]


def build(spec: str, height: int, width: int, seed: int = 0):
    """A model from `name[@key=value...]` at height x width, in training mode, with its config."""
    name, *overrides = spec.split("@")
    torch.manual_seed(seed)
    cfg = to_dict(load_config(name, [*overrides, f"model.img_size=[{height},{width}]"]))
    return build_model(cfg["model"]).train(), cfg


def model_sizes(spec: str, sizes) -> list[tuple[int, int]]:
    """--sizes, else SIZES for CNN models and the configured size for models with a fixed ViT input."""
    if sizes:
        return sizes
    name, *overrides = spec.split("@")
    model_cfg = load_config(name, overrides).model
    return [tuple(model_cfg.img_size)] if "patch_size" in model_cfg else SIZES


def bare_step(model, optimizer, images, labels, bf16: bool, channels_last: bool, objective=None) -> None:
    """One training step in plain PyTorch: what the engine's step computes, without the engine."""
    from masterocr.training.objectives import build_objective

    if objective is None:
        objective = build_objective(model, {})
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = objective(model, images, labels)[0]
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def bare_throughput(name, height, width, bf16, channels_last, batch, min_time, batches=None, steps=None
                    ) -> tuple[float, float]:
    """(img/s wall, img per CPU second) of the bare loop after one warm-up step; runs `steps` steps, or until
    min_time seconds (at least 2 steps)."""
    model, _ = build(name, height, width)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    from masterocr.training.objectives import build_objective

    objective = build_objective(model, {})
    batches = batches or make_batches(model.tokenizer, 4, batch, height, width)
    bare_step(model, optimizer, *batches[0], bf16, channels_last, objective)  # warm-up (allocations, kernels)
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while True:
        images, labels = batches[(done + 1) % len(batches)]
        bare_step(model, optimizer, images, labels, bf16, channels_last, objective)
        done += 1
        elapsed = time.perf_counter() - start
        if (steps is not None and done >= steps) or (steps is None and done >= 2 and elapsed >= min_time):
            return done * batch / elapsed, done * batch / (time.process_time() - cpu)


def engine_throughput(name, height, width, bf16, channels_last, batch, batches, steps, threads
                      ) -> tuple[float, float]:
    """(img/s wall, img per CPU second) of the same steps through the training engine (first step excluded,
    as in the bare loop)."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from masterocr.training.module import RecognitionModule
    from masterocr.training.runner import TRAIN_DEFAULTS, build_trainer

    class Clock(pl.Callback):
        def __init__(self):
            self.ends = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch_, batch_idx):
            self.ends.append((time.perf_counter(), time.process_time()))

    model, cfg = build(name, height, width)
    t = dict(TRAIN_DEFAULTS, batch_size=batch, max_steps=steps + 1, lr=1e-4, lr_scaling="none", warmup=1,
             num_threads=threads, channels_last=channels_last, progress_refresh=1, log_every_steps=50,
             gradient_clip=5.0, model_summary=False)
    module = RecognitionModule(model, {"model": cfg["model"], "train": t})
    clock = Clock()
    dev = {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto",
           "precision": "bf16-mixed" if bf16 else "32-true"}
    with tempfile.TemporaryDirectory() as out:
        trainer = build_trainer(t, dev, out, has_val=False, callbacks=[clock])
        stream = [(images, labels, [""] * len(labels)) for images, labels in
                  [batches[i % len(batches)] for i in range(steps + 1)]]
        with contextlib.redirect_stdout(sys.stderr):  # the progress bar runs (it is part of the engine) on stderr
            trainer.fit(module, train_dataloaders=DataLoader(stream, batch_size=None, shuffle=False))
    (wall0, cpu0), (wall1, cpu1) = clock.ends[0], clock.ends[-1]
    return steps * batch / (wall1 - wall0), steps * batch / (cpu1 - cpu0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--min-time", type=float, default=4.0, help="seconds per table-1 measurement (>= 2 steps)")
    parser.add_argument("--models", nargs="+", default=["master", "master-small", "master-tiny"])
    parser.add_argument("--overhead-models", nargs="+", default=["master-tiny", "master-small"])
    parser.add_argument("--overhead-steps", type=int, default=8)
    parser.add_argument("--overhead-threads", type=int, default=1,
                        help="threads for the overhead rounds (1: no OpenMP barriers, so CPU time stays meaningful "
                             "when other processes share the cores)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="wall-clock measurements per cell (best is kept)")
    parser.add_argument("--skip-table", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--sizes", nargs="+", metavar="HxW", type=lambda v: tuple(int(x) for x in v.split("x")),
                        help="input sizes for table 1 (default: 32x100 and 48x160; a ViT model's own size)")
    parser.add_argument("--one-thread-only", action="store_true",
                        help="table 1: only the 1-thread columns (skip the --threads wall-clock column)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")

    if not args.skip_table:
        print(f"\nTraining steps (bare loop: forward + backward + clip + AdamW), batch {args.batch}.\n"
              f"1 thread: images per CPU-second of this process (robust to other processes on the cores);\n"
              f"{args.threads} threads: wall-clock img/s, best of {args.repeats} (slowed by whatever else runs).")
        cols = [f"{v[0]} 1t" for v in VARIANTS] + [f"bf16+CL {args.threads}t"]
        header = f"| {'model':<13} | {'size':>6} | " + " | ".join(f"{c:>10}" for c in cols) + " | bf16+CL / fp32 |"
        print(header)
        print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
        for name in args.models:
            for h, w in model_sizes(name, args.sizes):
                torch.set_num_threads(1)
                per_cpu = [bare_throughput(name, h, w, bf16, cl, args.batch, args.min_time)[1]
                           for _, bf16, cl in VARIANTS]
                wall = float("nan")
                if not args.one_thread_only:
                    torch.set_num_threads(args.threads)
                    wall = max(bare_throughput(name, h, w, True, True, args.batch, args.min_time)[0]
                               for _ in range(args.repeats))
                print(f"| {name:<13} | {h:>2}x{w:<3} | " + " | ".join(f"{r:>10.1f}" for r in per_cpu + [wall])
                      + f" | {per_cpu[2] / per_cpu[0]:>13.2f}x |", flush=True)

    if args.skip_overhead:
        print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
        return
    torch.set_num_threads(args.overhead_threads)
    print(f"\nEngine overhead (bf16 + channels_last, 32x100, batch {args.batch}, {args.overhead_threads} thread(s), "
          f"{args.overhead_steps} steps, {args.rounds} alternating rounds; wall: best round, CPU: median round)")
    print("| model         | bare img/s | engine img/s | overhead (wall) | bare img/CPU-s | engine img/CPU-s | overhead (CPU) |")
    print("|---------------|-----------:|-------------:|----------------:|---------------:|-----------------:|---------------:|")
    for name in args.overhead_models:
        model, _ = build(name, 32, 100)
        batches = make_batches(model.tokenizer, 4, args.batch, 32, 100)
        bare, engine = [], []
        for _ in range(args.rounds):
            bare.append(bare_throughput(name, 32, 100, True, True, args.batch, 0, batches, args.overhead_steps))
            engine.append(engine_throughput(name, 32, 100, True, True, args.batch, batches, args.overhead_steps,
                                            args.overhead_threads))
        bw, ew = max(r[0] for r in bare), max(r[0] for r in engine)
        bc, ec = statistics.median(r[1] for r in bare), statistics.median(r[1] for r in engine)
        print(f"| {name:<13} | {bw:>10.1f} | {ew:>12.1f} | {100 * (1 - ew / bw):>14.1f}% | {bc:>14.1f} | "
              f"{ec:>16.1f} | {100 * (1 - ec / bc):>13.1f}% |", flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
