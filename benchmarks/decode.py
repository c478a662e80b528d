"""MASTER inference speed on CPU: cached vs full-recompute greedy decoding, fp32 vs bf16 autocast.

For each model (master, master-small), input size (48x160, 32x100), batch size (1: latency, 64: throughput)
and precision, it times the encoder (CNN + positions) and the decoder separately, best of --repeats runs
(wall clock, so a busy machine makes every figure worse, never better), and prints:

    ms/img   end-to-end milliseconds per image (encoder + decoder), the latency at batch 1
    img/s    images per second, the throughput at batch 64
    dec %    the decoder's share of the end-to-end time
    xfull    how much faster cached decoding is than full recompute, decoder only and end to end

Word lengths. A random model never stops at a realistic length (its arg-max is close to a constant token, and
biasing the EOS logit gives either immediate stops or none: one bias fits no batch). So the random model is
wrapped by `ForcedLength`: every step runs the real decoder (all its compute), then the EOS logit is forced
up at the word's sampled length and down before it. Lengths are sampled from IIIT5K train label lengths (or
the same histogram built in when the data is absent), mean ~5 characters. The batch-1 word has the mean
length, so it takes 6 steps. A batch of 64 runs until its longest word ends; cached decoding drops ended rows
from the running batch as it goes, full recompute does not. Every configuration uses the same lengths.

Speed settings: channels_last tensors for the CNN and BatchNorm folded into the convs (inference only); switch
them off with --no-channels-last / --no-fold-bn. Decoding runs under no_grad, not inference_mode: under
autocast, inference mode re-casts every decoder weight at every step.

    python benchmarks/decode.py                 # the full table (several minutes on 2 cores)
    python benchmarks/decode.py --quick         # master, 48x160, fewer repeats
    python benchmarks/decode.py --threads 1     # per-core figures (steadier on a shared machine)
    python benchmarks/decode.py --models master --sizes 48x160 --batches 64 --dtypes bf16 --modes cached
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning. On a machine whose cores are shared with other processes,
# spinning threads starve the thread doing the work: measured here, 2 threads were 5-100x slower with the
# default policy (decoding, made of many small ops, worst). Set before torch loads the OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from masterocr.config import load_config  # noqa: E402
from masterocr.decoding import decode_memory  # noqa: E402
from masterocr.models import build_model  # noqa: E402
from masterocr.models.layers import fold_batchnorm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LENGTH_FILE = ROOT.parent / "shared" / "data" / "IIIT5K" / "train" / "labels.tsv"
# IIIT5K train label lengths (count per length), used when the data is absent.
BUILTIN_LENGTHS = {1: 65, 2: 257, 3: 343, 4: 358, 5: 310, 6: 228, 7: 181, 8: 91, 9: 78, 10: 34, 11: 27, 12: 12,
                   13: 5, 14: 6, 17: 2, 18: 1, 19: 1, 22: 1}


def length_histogram(max_length: int) -> tuple[dict[int, int], str]:
    if LENGTH_FILE.is_file():
        hist: dict[int, int] = {}
        for line in LENGTH_FILE.read_text(encoding="utf-8").splitlines():
            parts = line.split("\t")
            if len(parts) == 2 and 0 < len(parts[1]) <= max_length:
                hist[len(parts[1])] = hist.get(len(parts[1]), 0) + 1
        if hist:
            return hist, f"{LENGTH_FILE.parent.parent.name} train labels"
    return {k: v for k, v in BUILTIN_LENGTHS.items() if k <= max_length}, "built-in IIIT5K histogram"


class ForcedCache:
    """The wrapped model's cache plus each row's word length, reordered together (row dropping, beams)."""

    def __init__(self, inner, lengths: torch.Tensor):
        self.inner, self.lengths = inner, lengths

    def reorder(self, index: torch.Tensor, memory: bool = True) -> "ForcedCache":
        return ForcedCache(self.inner.reorder(index, memory=memory), self.lengths.index_select(0, index))


class ForcedLength(nn.Module):
    """A model whose decoder does all its real work but ends word i after lengths[i] characters."""

    def __init__(self, model: nn.Module, lengths: torch.Tensor):
        super().__init__()
        self.model, self.lengths = model, lengths
        self.tokenizer, self.max_steps, self.num_classes = model.tokenizer, model.max_steps, model.num_classes
        self.in_channels = model.in_channels

    def feature_size(self, h, w):
        return self.model.feature_size(h, w)

    def encode(self, images):
        return self.model.encode(images)

    def init_cache(self, memory, max_steps=None):
        return ForcedCache(self.model.init_cache(memory, max_steps), self.lengths[: memory.shape[0]])

    def _force(self, logits: torch.Tensor, positions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """logits (B, ..., C); positions broadcastable to (B, ...): EOS wins exactly at position == length."""
        lengths = lengths.reshape(-1, *([1] * (logits.dim() - 2)))
        eos = torch.where(positions == lengths, 1e4, -1e4).to(logits.dtype)
        logits = logits.clone()
        logits[..., self.tokenizer.eos_id] = eos
        return logits

    def decode_step(self, tokens, position, cache, need_weights=True):
        logits, attn = self.model.decode_step(tokens, position, cache.inner, need_weights)
        return self._force(logits, position.reshape(1), cache.lengths), attn

    def decode_full(self, memory, tokens, need_weights=False):
        logits, attn = self.model.decode_full(memory, tokens, need_weights)
        positions = torch.arange(tokens.shape[1]).unsqueeze(0)
        return self._force(logits, positions, self.lengths[: memory.shape[0]]), attn


def best_time(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of `repeats` calls (after one warm-up call) and the last result."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def run_config(model, size, batch, dtype, modes, lengths, repeats, channels_last):
    """Encoder and decoder timings for one configuration. Each call enters its own autocast context, as a
    caller reading a batch would, so casting weights to bf16 is part of the measured time."""
    torch.manual_seed(0)
    images = torch.randn(batch, model.in_channels, *size)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    forced = ForcedLength(model, lengths[:batch])
    feature_size = model.feature_size(*size)
    bf16 = dtype == "bf16"

    def encode():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model.encode(images)

    rows = []
    # no_grad, not inference_mode: inside inference mode autocast re-casts the decoder weights at every step.
    with torch.no_grad():
        enc_t, memory = best_time(encode, repeats)
        for mode in modes:
            def run_decoder():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    return decode_memory(forced, memory, feature_size, use_cache=mode == "cached")

            dec_t, result = best_time(run_decoder, repeats)
            rows.append(dict(mode=mode, enc=enc_t, dec=dec_t, steps=result.token_ids.shape[1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["master", "master-small"])
    parser.add_argument("--sizes", nargs="+", default=["48x160", "32x100"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--modes", nargs="+", default=["cached", "full"], choices=["cached", "full"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement, best kept")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-channels-last", action="store_true", help="keep NCHW tensors for the CNN")
    parser.add_argument("--no-fold-bn", action="store_true",
                        help="keep BatchNorm separate instead of folding it into the convs (inference only)")
    parser.add_argument("--quick", action="store_true", help="master at 48x160 only, 2 repeats")
    args = parser.parse_args()
    if args.quick:
        args.models, args.sizes, args.repeats = ["master"], ["48x160"], 2
    torch.set_num_threads(args.threads)
    channels_last = not args.no_channels_last

    rng = random.Random(0)
    max_label = load_config(args.models[0]).model.max_label_length
    hist, source = length_histogram(max_label)
    lengths = torch.tensor(rng.choices(list(hist), weights=list(hist.values()), k=max(args.batches)))
    # The batch-1 word has the mean length (rounded), so latency is that of a typical word.
    lengths[0] = round(sum(k * v for k, v in hist.items()) / sum(hist.values()))
    print(f"torch {torch.__version__}, {args.threads} threads, channels_last={channels_last}, "
          f"BN folded={not args.no_fold_bn}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"word lengths from {source}: batch-1 word has {lengths[0].item()} chars; batch of "
          f"{max(args.batches)}: mean {lengths.float().mean():.2f}, max {lengths.max().item()} chars; "
          f"best of {args.repeats} runs")
    header = (f"{'model':<13}{'size':>7}{'batch':>6}{'dtype':>6}{'decode':>8}{'steps':>6}{'enc ms':>10}"
              f"{'dec ms':>10}{'ms/img':>9}{'img/s':>8}{'dec %':>7}{'xfull dec':>10}{'xfull e2e':>10}")
    print(header)
    print("-" * len(header))
    for name in args.models:
        model = build_model(load_config(name).model).eval()
        if not args.no_fold_bn:
            fold_batchnorm(model)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        for size_s in args.sizes:
            size = tuple(int(v) for v in size_s.split("x"))
            for batch in args.batches:
                for dtype in args.dtypes:
                    rows = run_config(model, size, batch, dtype, args.modes, lengths, args.repeats, channels_last)
                    full = next((r for r in rows if r["mode"] == "full"), None)
                    for r in rows:
                        total = r["enc"] + r["dec"]
                        speedup_dec = speedup_e2e = ""
                        if full is not None and r["mode"] == "cached":
                            speedup_dec = f"{full['dec'] / r['dec']:.1f}x"
                            speedup_e2e = f"{(full['enc'] + full['dec']) / total:.2f}x"
                        print(f"{name:<13}{size_s:>7}{batch:>6}{dtype:>6}{r['mode']:>8}{r['steps']:>6}"
                              f"{1000 * r['enc']:>10.1f}{1000 * r['dec']:>10.1f}{1000 * total / batch:>9.1f}"
                              f"{batch / total:>8.2f}{100 * r['dec'] / total:>7.1f}{speedup_dec:>10}"
                              f"{speedup_e2e:>10}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f} (2 cores; above ~2 other processes share them)")


if __name__ == "__main__":
    main()
