"""What the reliability checks cost: CLI start-up per command, and the per-step finite checks of training.

1. Start-up: wall time of `masterocr --version`, `--help`, `read --help` and `metrics` (on a two-line file)
   in fresh processes, median of --repeats, and whether torch was imported.
2. Training: one optimiser step of a model (forward, backward, AdamW) at batch --batch on one thread, against
   the checks RecognitionModule adds to every step: the loss is finite, and the total gradient norm is
   finite (torch.nn.utils.get_total_norm over all gradients, before the optimiser step). bf16 autocast as the
   CPU recipes train.

    python benchmarks/reliability_overhead.py [--model master-small] [--batch 32] [--repeats 5] [--tree DIR]

--tree times the start-up of another checkout (e.g. an older one) for comparison.

Timings depend on the machine and its load: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's masterocr, not an installed one


def startup(repeats: int, tree: Path = ROOT) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("p.tsv", "l.tsv"):
            Path(tmp, name).write_text("a.png\tcat\nb.png\tdog\n")
        commands = {"--version": ["--version"], "--help": ["--help"], "read --help": ["read", "--help"],
                    "metrics": ["metrics", f"{tmp}/p.tsv", f"{tmp}/l.tsv"]}
        env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
        print("| command | median ms | torch imported |\n|---|---:|---|")
        for label, argv in commands.items():
            code = ("import sys, io, contextlib\nfrom masterocr.cli.main import main\n"
                    "with contextlib.redirect_stdout(io.StringIO()):\n"
                    f"    try: main({argv!r})\n    except SystemExit: pass\n"
                    "print('torch' in sys.modules)")
            times, imported = [], ""
            for _ in range(repeats):
                start = time.perf_counter()
                out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                     cwd=tmp)  # not the current folder: `-c` puts it first on sys.path
                times.append(time.perf_counter() - start)
                imported = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-200:]
            print(f"| masterocr {label} | {1000 * statistics.median(times):.0f} | {imported} |")
        baseline = []
        for _ in range(repeats):  # noqa: B007
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import torch"], env=env, cwd=tmp)
            baseline.append(time.perf_counter() - start)
        print(f"| python -c 'import torch' (for scale) | {1000 * statistics.median(baseline):.0f} | True |")


def training_checks(model_name: str, batch: int, repeats: int) -> None:
    import torch
    import torch.nn.functional as F

    from masterocr.config import load_config
    from masterocr.models import build_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(load_config(model_name).model).train()
    tok = model.tokenizer
    height, width = model.img_size
    images = torch.randn(batch, model.in_channels, height, width)
    targets = tok.encode(["word"] * batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(images, targets[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets[:, 1:].reshape(-1),
                                   ignore_index=tok.pad_id)
        optimizer.zero_grad()
        loss.backward()
        return loss

    def checks(loss: torch.Tensor) -> bool:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        return bool(torch.isfinite(loss.detach()).all()) and bool(
            torch.isfinite(torch.nn.utils.get_total_norm(grads, foreach=True)))

    step_times, check_times = [], []
    for i in range(repeats + 1):
        start = time.perf_counter()
        loss = step()
        optimizer.step()
        mid = time.perf_counter()
        loss = step()  # fresh gradients for the check, as before an optimiser step
        start_check = time.perf_counter()
        for _ in range(10):
            assert checks(loss)
        end = time.perf_counter()
        if i:  # the first round warms up
            step_times.append(mid - start)
            check_times.append((end - start_check) / 10)
    n = sum(p.numel() for p in model.parameters())
    s, c = statistics.median(step_times), statistics.median(check_times)
    print(f"\n{model_name} ({n / 1e6:.2f} M parameters), batch {batch} at {height}x{width}, 1 thread, bf16 autocast:")
    print(f"| optimiser step | finite checks | checks / step |\n|---:|---:|---:|\n"
          f"| {1000 * s:.1f} ms | {1000 * c:.2f} ms | {100 * c / s:.2f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="master-small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tree", type=Path, default=ROOT, help="checkout whose start-up is timed (default: this one)")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"load average at start: {load:.2f}\n")
    print(f"start-up of {args.tree}:")
    startup(args.repeats, args.tree)
    if not args.skip_training:
        training_checks(args.model, args.batch, args.repeats)


if __name__ == "__main__":
    main()
