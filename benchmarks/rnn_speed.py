"""Recognition speed of the recurrent recognizers next to master-small on CPU: batch-1 latency, batch-64
throughput, fp32 and bf16; and the imported EasyOCR english_g2 against EasyOCR's own figures.

What is timed is what `Recognizer.predict` does with preprocessed images: `decode` (CNN, sequence model,
decoder) and reading the texts out (`DecodeResult.decoded`: CTC collapse and P(text), or the attention
tokens), under no_grad, each call in its own autocast context. Image decoding and resizing are not timed
(the same pipeline for every model). Models are prepared as `masterocr.load` prepares them: eval mode,
BatchNorm folded into the convolutions, channels_last.

    crnn, crnn-small, trba, seq2seq-fsns   random weights at their configured input size; the attention
                                           decoders run realistic word lengths (benchmarks/decode.py's
                                           ForcedLength: every step's full compute, EOS forced at the word's
                                           length drawn from IIIT5K/train's label lengths)
    master-small                           the bundled weights, same forced lengths
    crnn-small (bundled)                   the shipped CRNN, when masterocr/weights/crnn-small.safetensors exists
    easyocr-g2 (--easyocr-g2 FILE)         english_g2 imported (.pth, converted in memory, or the .safetensors
                                           `masterocr import` wrote) on real IIIT5K/test crops with EasyOCR's
                                           preprocessing: batch 1 over --g2-images crops (each its own canvas),
                                           and batches of 32 sorted by aspect ratio, as EasyOCR's figures
                                           (14.8 ms per word at batch 1, 96 img/s at batch 32, 2 threads)

The machine is shared: every configuration is timed once per round, rounds interleave the models, and the
best of --rounds is kept (a busy machine makes figures worse, never better). Ratios to master-small come
from the same rounds. The load average is printed before and after. Next to wall time, the process's CPU
time (all its threads) per image: on a loaded machine it stays near what a quiet machine's wall time would
be at --threads 1 (at 2 threads it adds both threads' time), so `--threads 1` gives the steadier per-core
figure to hold against a quiet machine's numbers.

    python benchmarks/rnn_speed.py --easyocr-g2 /path/to/english_g2.pth
    python benchmarks/rnn_speed.py --quick                     # one round, fewer crops
    python benchmarks/rnn_speed.py --models crnn trba --dtypes bf16 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benchmarks/decode.py: idle threads must not spin

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import ForcedLength, length_histogram  # noqa: E402

from masterocr.config import load_config  # noqa: E402
from masterocr.decoding import decode  # noqa: E402
from masterocr.models import build_model  # noqa: E402
from masterocr.models.layers import fold_batchnorm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IIIT5K_TEST = ROOT.parent / "shared" / "data" / "IIIT5K" / "test"
EASYOCR_BATCH1_MS, EASYOCR_BATCH32_IMG_S = 14.8, 96.0  # the figures for EasyOCR itself, 2 threads


def prepare(model):
    model.eval()
    fold_batchnorm(model)
    return model.to(memory_format=torch.channels_last)


def config_model(name: str):
    overrides = ["model.charset=94"] if name.startswith("seq2seq") else []  # runs without the FSNS charset file
    return prepare(build_model(load_config(name, overrides).model))


def weights_model(path):
    from masterocr.weights import load_model

    return prepare(load_model(path)[0])


def g2_recognizer(path: str):
    """The imported english_g2 as a Recognizer (its preprocessing from the import, not from a file's metadata)."""
    from masterocr.importers.easyocr import PREPROCESSING, import_english_g2
    from masterocr.recognizer import Recognizer, load

    if path.endswith(".safetensors"):
        return load(path)
    imported = import_english_g2(path)
    model = build_model(imported.model_cfg)
    model.load_state_dict(imported.tensors)
    return Recognizer(prepare(model), imported.model_cfg, **PREPROCESSING)


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: every thread's) of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def reader(model, images, dtype):
    """A function reading `images` (B, C, H, W) once: decode + texts, in its own autocast context."""
    def run():
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            result = decode(model, images, need_attention=False)
        return result.decoded(model.tokenizer)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=["master-small", "crnn", "crnn-small", "trba", "seq2seq-fsns"])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best of them is kept")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--easyocr-g2", metavar="FILE", help="english_g2.pth or its imported .safetensors")
    parser.add_argument("--g2-images", type=int, default=96, help="IIIT5K/test crops for the english_g2 timings")
    parser.add_argument("--quick", action="store_true", help="one round, 32 crops")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.g2_images = 1, 32
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    # Word lengths for the attention decoders: the batch-1 word has the mean length.
    rng = random.Random(0)
    hist, source = length_histogram(25)
    lengths = torch.tensor(rng.choices(list(hist), weights=list(hist.values()), k=max(args.batches)))
    lengths[0] = round(sum(k * v for k, v in hist.items()) / sum(hist.values()))

    jobs = {}  # (label, batch, dtype) -> function reading once
    info = {}  # label -> (parameters, input description)
    bundled = ROOT / "masterocr" / "weights"
    for name in args.models:
        if name == "master-small":
            model = weights_model(bundled / "master-small.safetensors")
            label = "master-small (bundled)"
        else:
            model = config_model(name)
            label = name
        info[label] = (sum(p.numel() for p in model.parameters()), "x".join(map(str, model.img_size)) +
                       (" grey" if model.in_channels == 1 else ""))
        runnable = model if getattr(model, "decoding", "autoregressive") == "ctc" else ForcedLength(model, lengths)
        runnable.tokenizer = model.tokenizer
        for batch in args.batches:
            torch.manual_seed(0)
            images = torch.randn(batch, model.in_channels, *model.img_size).contiguous(
                memory_format=torch.channels_last)
            for dtype in args.dtypes:
                jobs[(label, batch, dtype)] = reader(runnable, images, dtype)
    if (bundled / "crnn-small.safetensors").is_file() and "crnn-small" in args.models:
        model = weights_model(bundled / "crnn-small.safetensors")
        info["crnn-small (bundled)"] = info["crnn-small"]
        for batch in args.batches:
            images = torch.randn(batch, 1, *model.img_size).contiguous(memory_format=torch.channels_last)
            for dtype in args.dtypes:
                jobs[("crnn-small (bundled)", batch, dtype)] = reader(model, images, dtype)

    g2_jobs = {}
    if args.easyocr_g2:
        if not (IIIT5K_TEST / "labels.tsv").is_file():
            sys.exit(f"{IIIT5K_TEST}: the english_g2 timings read real crops; the folder is absent")
        rec = g2_recognizer(args.easyocr_g2)
        info["easyocr-g2 (imported)"] = (sum(p.numel() for p in rec.model.parameters()), "64 x aspect grey")
        files = [IIIT5K_TEST / line.split("\t")[0] for line in
                 (IIIT5K_TEST / "labels.tsv").read_text(encoding="utf-8").splitlines()]
        crops = [rec.preprocess(f) for f in random.Random(1).sample(files, args.g2_images)]
        by_aspect = sorted(crops, key=lambda t: t.shape[-1])
        batches32 = [rec.collate(by_aspect[i: i + 32]).contiguous(memory_format=torch.channels_last)
                     for i in range(0, len(by_aspect), 32)]
        singles = [t.unsqueeze(0).contiguous(memory_format=torch.channels_last) for t in crops]
        for dtype in args.dtypes:
            one = [reader(rec.model, t, dtype) for t in singles]
            many = [reader(rec.model, b, dtype) for b in batches32]
            g2_jobs[(1, dtype)] = (lambda fs=one: [f() for f in fs], len(singles))
            g2_jobs[(32, dtype)] = (lambda fs=many: [f() for f in fs], len(crops))

    print(f"torch {torch.__version__}, {args.threads} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"{args.rounds} interleaved round(s), best kept; load average before {load_before[0]:.2f} / "
          f"{load_before[1]:.2f} (1 / 5 min)")
    print(f"attention decoders: word lengths from {source}, batch-1 word {lengths[0].item()} characters, "
          f"batch-64 mean {lengths.float().mean():.2f}")
    inf = (float("inf"), float("inf"))
    best: dict = {key: inf for key in jobs}  # (wall, CPU) seconds per call, each the best over the rounds
    g2_best: dict = {key: inf for key in g2_jobs}  # per image
    for fn in list(jobs.values()) + [fn for fn, _ in g2_jobs.values()]:
        fn()  # warm-up: weight casts, allocator
    for _ in range(args.rounds):
        for key, fn in jobs.items():
            best[key] = tuple(map(min, best[key], timed(fn)))
        for key, (fn, n) in g2_jobs.items():
            g2_best[key] = tuple(min(b, t / n) for b, t in zip(g2_best[key], timed(fn)))

    header = (f"{'model':<24}{'params':>8}  {'input':<17}{'batch':>6}{'dtype':>6}{'ms/img':>9}{'img/s':>8}"
              f"{'cpu ms/img':>11}{'x master-small':>16}")
    print(header)
    print("-" * len(header))
    for (label, batch, dtype), (wall, cpu) in best.items():
        ref = best.get(("master-small (bundled)", batch, dtype))
        ratio = f"{ref[0] / wall:.1f}x" if ref and label != "master-small (bundled)" else ""
        params, size = info[label]
        print(f"{label:<24}{params / 1e6:>7.2f}M  {size:<17}{batch:>6}{dtype:>6}{1000 * wall / batch:>9.2f}"
              f"{batch / wall:>8.1f}{1000 * cpu / batch:>11.2f}{ratio:>16}")
    if g2_jobs:
        print(f"\neasyocr-g2 (imported) on {args.g2_images} IIIT5K/test crops, EasyOCR's preprocessing "
              f"(height 64, aspect kept, edge-padded canvas); EasyOCR's own figures: {EASYOCR_BATCH1_MS} ms at batch 1, "
              f"{EASYOCR_BATCH32_IMG_S:.0f} img/s at batch 32 sorted by aspect")
        for dtype in args.dtypes:
            (one, one_cpu), (many, many_cpu) = g2_best[(1, dtype)], g2_best[(32, dtype)]
            print(f"  {dtype}: batch 1 {1000 * one:.2f} ms/word wall, {1000 * one_cpu:.2f} ms CPU "
                  f"({EASYOCR_BATCH1_MS / (1000 * one):.2f}x EasyOCR's speed by wall time); batch 32 {1 / many:.1f} "
                  f"img/s wall, {1 / many_cpu:.1f} img per CPU-second ({(1 / many) / EASYOCR_BATCH32_IMG_S:.2f}x "
                  f"EasyOCR's by wall time)")
    load_after = os.getloadavg()
    print(f"\nload average after {load_after[0]:.2f} / {load_after[1]:.2f} (2 cores: above ~2, other processes "
          f"share them and every figure is slower than on a quiet machine)")


if __name__ == "__main__":
    main()
