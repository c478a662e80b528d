"""Synthetic word rendering speed: per core, through a DataLoader, and per effect; this tree against another
commit in the same run.

Six measurements (each can be skipped):

  per core   one process, one thread, CPU seconds (time.process_time), so the figures are per core even on
             a busy machine; "cold" is a fresh renderer drawing each glyph on first use, "warm" after the glyph
             cache is filled and --warm-words words laid out (a long run's steady state: `warm`),
             "+tensor" adds the ImageTransform training applies.
  loader     what training sees: a DataLoader over SyntheticDataset (batch 64, the standard collate) with
             --workers worker processes of one thread each, glyph caches warmed first; words per wall second
             and per worker. With --against REF the same is measured for the renderer of commit REF (exported
             to a temporary folder with `git archive`), alternating rounds REF, this tree, REF, ..., so both
             see the same machine load.
  paired     with --against REF only: two persistent processes (REF and this tree, one thread each, warm
             caches) render the same chunks of indices, one after the other in alternating order; the ratio of
             their CPU times per chunk (median and quartiles) resolves differences of a few percent that the
             load swings between loader rounds hide on a shared machine.
  deferred   the GPU route's ceiling: CPU per word with the photographic pixel effects switched off (as if a GPU
             applied them per batch), with the float tensor and with a uint8 one, against the default.
  ops        each pixel operation of the renderer (synth/imageops) per call on crops of its sizes, with OpenCV
             and with its Pillow/NumPy fallback (a child with OpenCV hidden).
  profile    per effect, the marginal cost of a word with the effect forced on (p=1) against forced off
             (p=0), all others at their defaults, the two interleaved in chunks over the same indices; and the
             expected cost per word at the default probability (marginal x p). Also for REF with --against.

The machine's load average is printed at the start and end: on a shared machine, compare ratios from one run.

    python benchmarks/synth_speed.py [--against HEAD~3] [--workers 2] [--rounds 2] [--batches 60]
        [--skip per-core loader paired profile deferred ops] [--size 32x100] [--chunks 30]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in a child process whose PYTHONPATH is this tree or an exported commit: only APIs both have.
LOADER_CHILD = textwrap.dedent("""
    import json, os, sys, time
    import torch
    torch.set_num_threads(1)
    from torch.utils.data import DataLoader
    from masterocr.data.datasets import collate
    from masterocr.data.image import ImageTransform
    from masterocr.data.synth import SyntheticDataset, build_fonts

    height, width, workers, batches, seed = (int(a) for a in sys.argv[1:6])
    fonts = build_fonts("94")          # checked once here, passed to the workers (the font cache is on disk)
    ds = SyntheticDataset("94", transform=ImageTransform(height, width), seed=seed, length=10**9, fonts=fonts)

    def init(_):
        torch.set_num_threads(1)
        renderer = torch.utils.data.get_worker_info().dataset.renderer
        warm(renderer, WARM_WORDS)   # the steady state of a long run

    warm_batches = 4 * workers
    loader = DataLoader(ds, batch_size=64, num_workers=workers, collate_fn=collate, worker_init_fn=init,
                        sampler=range(10**9), prefetch_factor=4, persistent_workers=True)
    it = iter(loader)
    for _ in range(warm_batches):
        next(it)
    pids = [w.pid for w in getattr(it, "_workers", [])]

    def worker_cpu():  # user + system seconds of the worker processes, from /proc (Linux)
        total = 0.0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    cpu0, t0 = worker_cpu(), time.perf_counter()
    for _ in range(batches):
        images = next(it)[0]
    wall, cpu = time.perf_counter() - t0, worker_cpu() - cpu0
    assert images.shape == (64, 3, height, width), images.shape
    import masterocr
    print(json.dumps({"words": batches * 64, "wall": wall, "worker_cpu": cpu, "package": masterocr.__file__}))
""")

PAIRED_CHILD = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads(1)
    from masterocr.data.image import ImageTransform
    from masterocr.data.synth import SyntheticDataset

    height, width = (int(a) for a in sys.argv[1:3])
    ds = SyntheticDataset("94", transform=ImageTransform(height, width), seed=0)
    warm(ds.renderer, WARM_WORDS)
    for i in range(200):  # past the first-use costs (fonts opened)
        ds[i]
    import masterocr
    print(masterocr.__file__, flush=True)
    for line in sys.stdin:  # "start count" -> CPU seconds for ds[start:start + count]
        start, count = (int(v) for v in line.split())
        t = time.process_time()
        for i in range(start, start + count):
            ds[i]
        print(time.process_time() - t, flush=True)
""")

PROFILE_CHILD = textwrap.dedent("""
    import json, sys, time
    import torch
    torch.set_num_threads(1)
    from masterocr.data.image import ImageTransform
    from masterocr.data.synth import SyntheticDataset, build_fonts
    from masterocr.data.synth.config import EFFECT_NAMES, build_config

    height, width, count, chunk = (int(a) for a in sys.argv[1:5])
    fonts = build_fonts("94")
    transform = ImageTransform(height, width)

    def dataset(config):
        return SyntheticDataset("94", transform=transform, seed=0, fonts=fonts, config=config)

    base = dataset(None)
    warm(base.renderer, WARM_WORDS)

    def cost(ds, start, n):
        t = time.process_time()
        for i in range(start, start + n):
            ds[i]
        return time.process_time() - t

    def default_cost():
        total = 0.0
        for start in range(0, count, chunk):
            total += cost(base, 10_000 + start, chunk)
        return 1e3 * total / count

    rows = {"default": default_cost()}
    defaults = build_config(None).effects
    for name in EFFECT_NAMES:
        on, off = dataset([f"effects.{name}.p=1.0"]), dataset([f"effects.{name}.p=0.0"])
        t_on = t_off = 0.0
        for start in range(0, count, chunk):  # interleaved: load changes hit both alike
            t_on += cost(on, 10_000 + start, chunk)
            t_off += cost(off, 10_000 + start, chunk)
        rows[name] = [getattr(defaults, name).p, 1e3 * t_on / count, 1e3 * t_off / count]
    import masterocr
    rows["package"] = masterocr.__file__
    print(json.dumps(rows))
""")


def warm(renderer, words: int) -> None:
    """A long run's steady state: glyphs drawn and backgrounds loaded (warm_up), and the kerning of the letter
    pairs `words` sampled words meet looked up (each pair is a FreeType call the first time a process meets it,
    about 35,000 of them in the first 20,000 words). Uses only methods every benchmarked commit has."""
    import numpy as np

    getattr(renderer, "warm_up", renderer.preload_glyphs)()
    rng = np.random.default_rng(20240611)  # not a dataset's stream
    for _ in range(words):
        text, _, font = renderer._text_and_font(rng)
        renderer._layout(text, font, renderer.font_size, rng)


def with_warm(code: str) -> str:
    """A child's code with `warm` and WARM_WORDS (from the environment) defined first."""
    return ("import os\nWARM_WORDS = int(os.environ['WARM_WORDS'])\n" + inspect.getsource(warm) + code)


# Each imageops call on crops of the renderer's sizes, timed in a child with OpenCV and in one without it.
OPS_CHILD = textwrap.dedent("""
    import json, sys, time
    if sys.argv[1] == "pillow":
        sys.modules["cv2"] = None  # as if OpenCV were not installed: imageops falls back to Pillow/NumPy
    import numpy as np
    from masterocr.data.synth import imageops as ops
    ops.single_threaded()
    rng = np.random.default_rng(0)
    crop = (rng.random((32, 130, 3)) * 255).astype(np.uint8)
    masks = (rng.random((44, 150, 2)) * 255).astype(np.uint8)
    m = np.array([[0.9, 0.05, -3.0], [0.02, 0.8, -2.0], [1e-4, 2e-4, 1.0]])
    kernel = np.zeros((5, 5), np.float32)
    kernel[2] = 0.2
    table = (rng.random((3, 256)) * 255).astype(np.uint8)
    mx, my = (a.astype(np.float32) for a in np.meshgrid(np.linspace(0, 149, 140), np.linspace(0, 43, 40)))
    cases = {"warp, 2 masks 44x150 -> 32x120": lambda: ops.warp(masks, m, (120, 32)),
             "remap (curve) 40x140": lambda: ops.remap(masks[:, :, 0].copy(), mx, my),
             "resize 32x130 -> 32x100, cubic": lambda: ops.resize(crop, (100, 32), "cubic"),
             "Gaussian blur, sigma 1.2": lambda: ops.gaussian_blur(crop, 1.2),
             "motion blur, 5 taps": lambda: ops.correlate(crop, kernel),
             "colour look-up": lambda: ops.lookup(crop, table),
             "JPEG round trip, quality 50": lambda: ops.jpeg(crop, 50)}
    out = {}
    for name, fn in cases.items():
        fn()
        best = float("inf")
        for _ in range(5):  # the best of 5 rounds: the least disturbed by other processes
            t = time.process_time()
            for _ in range(200):
                fn()
            best = min(best, (time.process_time() - t) / 200)
        out[name] = 1e6 * best
    out["backend"] = ops.BACKEND
    print(json.dumps(out))
""")


def ops_table(args) -> None:
    """imageops per call, OpenCV against its Pillow/NumPy fallback (this tree only)."""
    rows = {backend: child(OPS_CHILD, str(ROOT), 0, backend) for backend in ("opencv", "pillow")}
    assert rows["opencv"].pop("backend") == "opencv" and rows["pillow"].pop("backend") == "pillow"
    print("\nimageops per call (us of CPU, best of 5 rounds of 200, one thread): OpenCV against the Pillow/NumPy "
          "fallback")
    print("| operation | OpenCV | Pillow/NumPy | ratio |\n|---|---:|---:|---:|")
    for name, us in rows["opencv"].items():
        print(f"| {name} | {us:.1f} | {rows['pillow'][name]:.1f} | {rows['pillow'][name] / us:.1f}x |")


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def export(ref: str, dest: str) -> str:
    """The masterocr package of commit `ref`, unpacked under `dest` (for its PYTHONPATH)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "masterocr"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return dest


def child_command(code: str, pythonpath: str, warm_words: int, *args) -> tuple[list[str], dict]:
    """(argv, environment) of a one-thread child running `code` (with `warm`) on the tree at `pythonpath`; run it
    in that tree: `python -c` puts the working directory first on sys.path."""
    env = dict(os.environ, PYTHONPATH=pythonpath, OMP_NUM_THREADS="1", WARM_WORDS=str(warm_words))
    return [sys.executable, "-c", with_warm(code), *map(str, args)], env


def child(code: str, pythonpath: str, warm_words: int, *args) -> dict:
    argv, env = child_command(code, pythonpath, warm_words, *args)
    out = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=pythonpath)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child failed ({pythonpath}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def paired(trees, args, height: int, width: int) -> None:
    """Both renderers on the same chunks, alternately; prints REF's CPU time over this tree's per chunk."""
    import statistics

    procs = []
    for _, path in trees:
        argv, env = child_command(PAIRED_CHILD, path, args.warm_words, height, width)
        proc = subprocess.Popen(argv, env=env, cwd=path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().startswith(path)  # the tree asked for
        procs.append(proc)
    n = args.chunk
    ratios, totals = [], [0.0, 0.0]
    for c in range(args.chunks):
        seconds = [0.0, 0.0]
        for k in ((0, 1) if c % 2 == 0 else (1, 0)):  # who goes first alternates
            procs[k].stdin.write(f"{100_000 + c * n} {n}\n")
            procs[k].stdin.flush()
            seconds[k] = float(procs[k].stdout.readline())
            totals[k] += seconds[k]
        ratios.append(seconds[0] / seconds[1])
    for proc in procs:
        proc.stdin.close()
        proc.wait()
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    (ref, _), (name, _) = trees
    print(f"\npaired, in one process each ({args.chunks} chunks of {n} words, same indices, {height}x{width} tensors, "
          f"warm caches): {ref} {1e3 * totals[0] / (args.chunks * n):.3f} ms/word, {name} "
          f"{1e3 * totals[1] / (args.chunks * n):.3f} ms/word of CPU; speed-up {ref} / {name}: median chunk "
          f"{statistics.median(ratios):.3f}x (quartiles {q1:.3f}-{q3:.3f}), all chunks {totals[0] / totals[1]:.3f}x")


def per_core(args, height: int, width: int) -> None:
    import torch

    from masterocr.data.image import ImageTransform
    from masterocr.data.synth import SyntheticDataset

    torch.set_num_threads(1)

    def measure(fn, n: int, start: int) -> tuple[float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        for i in range(start, start + n):
            fn(i)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        return n / max(cpu, 1e-9), n / max(wall, 1e-9)

    t0 = time.perf_counter()
    ds = SyntheticDataset("94", transform=ImageTransform(height, width), seed=0)
    setup = time.perf_counter() - t0
    n = args.count
    cold = measure(ds.render, n, 0)
    t0 = time.perf_counter()
    warm(ds.renderer, args.warm_words)
    preload = time.perf_counter() - t0
    warmed = measure(ds.render, n, n)
    tensor = measure(ds.__getitem__, n, 2 * n)
    print(f"\nper core ({height}x{width}, 1 process / 1 thread, {n} words per cell; words/s per CPU second, "
          f"wall in brackets): {len(ds.renderer.fonts)} fonts, setup {setup:.1f} s, warm-up {preload:.1f} s")
    print("| cold | warm | warm+tensor |\n|---:|---:|---:|")
    print("| " + " | ".join(f"{c:.0f} ({w:.0f})" for c, w in (cold, warmed, tensor)) + " |")


# What the issue allows moving to the GPU, applied per batch: the photographic pixel effects.
DEFERRABLE = ("lighting", "contrast", "colour_cast", "blur", "motion_blur", "noise", "jpeg")


def deferred(args, height: int, width: int) -> None:
    """The most the GPU route could give a worker: CPU time per word with DEFERRABLE switched off (as if a
    GPU applied them per batch at no cost to the worker), with the float tensor and with a uint8 one (the
    normalisation deferred too), against the default; interleaved chunks over the same indices."""
    import numpy as np
    import torch

    from masterocr.data.image import ImageTransform, resize
    from masterocr.data.synth import SyntheticDataset, build_fonts

    torch.set_num_threads(1)
    fonts = build_fonts("94")
    off = [f"effects.{name}.p=0" for name in DEFERRABLE]
    plain, stripped = (SyntheticDataset("94", transform=ImageTransform(height, width), seed=0, fonts=fonts,
                                        config=config) for config in (None, off))
    for ds in (plain, stripped):
        warm(ds.renderer, args.warm_words)

    def uint8_tensor(i: int):  # resized on the CPU, normalised later by whoever receives the batch
        image = resize(stripped.render(i)[0], height, width, False)
        return torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy())

    cases = {"default": plain.__getitem__, f"{len(DEFERRABLE)} pixel effects deferred": stripped.__getitem__,
             "same, uint8 tensor": uint8_tensor}
    times = {name: [] for name in cases}
    for c in range(args.chunks):
        start = c * args.chunk
        for name, fn in cases.items():
            cpu = time.process_time()
            for i in range(start, start + args.chunk):
                fn(i)
            times[name].append((time.process_time() - cpu) / args.chunk)
    print(f"\nthe GPU route's ceiling ({height}x{width}, 1 thread, {args.chunks} chunks of {args.chunk} words; "
          f"deferred: {', '.join(DEFERRABLE)}): median ms of CPU per word")
    print("| worker renders | ms/word | words per CPU second | vs default |\n|---|---:|---:|---:|")
    base = sorted(times["default"])[len(times["default"]) // 2]
    for name, values in times.items():
        median = sorted(values)[len(values) // 2]
        print(f"| {name} | {1000 * median:.3f} | {1 / median:.0f} | {base / median:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--against", metavar="REF", help="also measure the renderer of this commit, alternately")
    parser.add_argument("--size", default="32x100", help="HxW of the training tensors (default 32x100)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="loader rounds per renderer (default 2)")
    parser.add_argument("--batches", type=int, default=60, help="timed batches of 64 per loader round")
    parser.add_argument("--count", type=int, default=1000, help="words per per-core cell (default 1000)")
    parser.add_argument("--profile-count", type=int, default=400, help="words per effect setting in the profile")
    parser.add_argument("--chunks", type=int, default=30, help="paired chunks (default 30)")
    parser.add_argument("--chunk", type=int, default=200, help="words per paired chunk (default 200)")
    parser.add_argument("--warm-words", type=int, default=20_000,
                        help="words laid out before timing, to fill the kerning cache as a long run has (0: none)")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["per-core", "loader", "paired", "profile", "deferred", "ops"])
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.lower().split("x"))

    print(f"load average at start (1/5/15 min): {load()}; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="synth-speed-") as tmp:
        trees = [("this tree", str(ROOT))]
        if args.against:
            trees.insert(0, (args.against, export(args.against, tmp)))
        if "per-core" not in args.skip:
            per_core(args, height, width)
        if "loader" not in args.skip:
            results = {name: [] for name, _ in trees}
            for _ in range(args.rounds):
                for name, path in trees:
                    r = child(LOADER_CHILD, path, args.warm_words, height, width, args.workers, args.batches, 0)
                    assert r["package"].startswith(path), (r["package"], path)  # the tree asked for
                    results[name].append((r["words"] / r["wall"] / args.workers, r["words"] / r["worker_cpu"]))
                    print(f"  loader round: {name}: {results[name][-1][0]:.0f} words/s per worker (wall), "
                          f"{results[name][-1][1]:.0f} per worker CPU second (load {load()})", flush=True)
            print(f"\nthrough a DataLoader ({args.workers} workers, batch 64, {height}x{width} tensors, warm "
                  f"caches, {args.batches * 64} words per round): words/s per worker by the wall clock, and "
                  "words per CPU second of the workers (what a worker with a core of its own would render)")
            print("| renderer | per worker, wall (rounds) | per worker CPU second (rounds) | mean per CPU second |")
            print("|---|---|---|---:|")
            for name, rates in results.items():
                print(f"| {name} | {' / '.join(f'{w:.0f}' for w, _ in rates)} | "
                      f"{' / '.join(f'{c:.0f}' for _, c in rates)} | {sum(c for _, c in rates) / len(rates):.0f} |")
            if args.against:
                old, new = (sum(c for _, c in results[n]) / len(results[n]) for n, _ in trees)
                print(f"ratio this tree / {args.against} (per CPU second): {new / old:.2f}x")
        if args.against and "paired" not in args.skip:
            paired(trees, args, height, width)
        if "deferred" not in args.skip:
            deferred(args, height, width)
        if "ops" not in args.skip:
            ops_table(args)
        if "profile" not in args.skip:
            for name, path in trees:
                rows = child(PROFILE_CHILD, path, args.warm_words, height, width, args.profile_count, 50)
                assert rows.pop("package").startswith(path)  # the tree asked for
                print(f"\nper-effect profile, {name} (ms of CPU per word incl. the {height}x{width} tensor; "
                      f"{args.profile_count} words per setting): default mix {rows.pop('default'):.3f} ms/word")
                print("| effect | default p | forced on | forced off | marginal | expected at p |")
                print("|---|---:|---:|---:|---:|---:|")
                for effect, (p, on, off) in rows.items():
                    print(f"| {effect} | {p:.2f} | {on:.3f} | {off:.3f} | {on - off:+.3f} | {p * (on - off):+.3f} |")
    print(f"\nload average at end: {load()}")


if __name__ == "__main__":
    main()
