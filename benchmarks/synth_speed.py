"""Synthetic word rendering speed: images per second per core at 32x100 and 48x160 with the default effects.

One process, one thread. Times are CPU seconds of this process (time.process_time), so the figures are per
core even on a busy machine; wall-clock figures are printed beside them. "cold" is a fresh renderer drawing
each glyph on first use; "warm" is after the glyph cache is filled (a long training run's steady state);
"+tensor" adds the ImageTransform (resize to HxW, normalise) that training applies.

    python benchmarks/synth_speed.py [--count 1000] [--charset 94] [--fonts DIR ...]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from masterocr.data.image import ImageTransform  # noqa: E402
from masterocr.data.synth import SyntheticDataset  # noqa: E402


def measure(fn, n: int, start: int) -> tuple[float, float]:
    """-> (images per CPU second, images per wall second) for fn(i), i in start .. start+n-1."""
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(start, start + n):
        fn(i)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return n / max(cpu, 1e-9), n / max(wall, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="images per measurement (default 1000)")
    parser.add_argument("--charset", default="94")
    parser.add_argument("--fonts", action="append", help="font file/folder (default: system fonts)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = []
    for height, width in ((32, 100), (48, 160)):
        t0 = time.perf_counter()
        ds = SyntheticDataset(args.charset, transform=ImageTransform(height, width), seed=args.seed,
                              fonts=args.fonts)
        setup = time.perf_counter() - t0
        n = args.count
        cold = measure(ds.render, n, 0)
        t0 = time.perf_counter()
        glyphs = ds.renderer.preload_glyphs()
        preload = time.perf_counter() - t0
        warm = measure(ds.render, n, n)
        tensor = measure(ds.__getitem__, n, 2 * n)
        rows.append((f"{height}x{width}", len(ds.renderer.fonts), glyphs, setup, preload, cold, warm, tensor))

    print(f"synthetic words, charset {args.charset}, default effects, 1 process / 1 thread, "
          f"{args.count} images per cell; images/s per core (CPU time), wall-clock in brackets")
    head = f"{'size':>7} | {'fonts':>5} | {'setup s':>7} | {'preload s':>9} | {'cold':>13} | {'warm':>13} | " \
           f"{'warm+tensor':>13}"
    print(head)
    print("-" * len(head))
    for size, fonts, glyphs, setup, preload, cold, warm, tensor in rows:
        cells = " | ".join(f"{c:5.0f} ({w:5.0f})" for c, w in (cold, warm, tensor))
        print(f"{size:>7} | {fonts:>5} | {setup:7.1f} | {preload:9.1f} | {cells}")
    print(f"target: >= 400 images/s per core (warm+tensor / cold ratio at 32x100: "
          f"{rows[0][7][0] / rows[0][5][0]:.2f})")


if __name__ == "__main__":
    main()
