"""PARSeq inference speed on CPU: our decoding (cached AR, NAR, cloze refinement) against strhub's own code.

Rows (PARSeq-S, 32x128, random weights; the issue's table): batch 64 throughput with AR + 1 refinement and
with NAR + 1 refinement, batch 1 latency with AR (and 1 refinement) and with NAR (and 1 refinement), and
batch 64 NAR + 1 refinement under bf16 autocast.

Word lengths, as in benchmarks/decode.py: a random model never stops at a realistic length, so every pass
runs the real decoder and then the EOS logit is forced up at each word's sampled length (IIIT5K train label
lengths, mean ~5 characters; the batch-1 word has the mean length) and down before it, for both
implementations alike. Our AR decoding drops ended rows as it goes and refines only up to each reading's
EOS; strhub's loop runs until the whole batch has ended. `--lengths max` forces no EOS at all: every word is
25 characters long (26 steps), the issue's worst case.

With `--strhub DIR` (a checkout of baudm/parseq; its timm import needs torchvision or an import-only stub
of it on sys.path), strhub's PARSeq is built with the same random weights (mapped by our strhub importer),
and both run side by side in this one process, interleaved round by round (best of --repeats rounds each),
on the same images: the table gives the ratio (ours / strhub, higher is better) and whether the output
tokens (up to EOS) are identical.

    python benchmarks/parseq_decode.py --strhub ../parseq [--threads 2] [--repeats 5] [--lengths max]

With `--weights parseq` (a bundled name or a .safetensors), both run trained weights (strhub's model gets them
through the inverse of our importer, checked by importing them back) on real crops (`--images`, default the
first 64 of ../shared/data/IIIT5K/train, our pipeline's 32x128 tensors) and nothing is forced: every word ends
where the model reads its EOS, the realistic case. `--onnx DIR` (an export of the same weights, `masterocr
export parseq -o DIR`) adds our torch-free runtime on ONNX Runtime fp32 as a third column, same images, and
`--checked` adds the runtime's bf16-checked reading (the encoder in bf16 through OpenVINO, every word with a
close call read again in fp32), on every row: its tokens are compared with strhub's fp32 tokens (the bf16 row
runs strhub once more in fp32, untimed, for that), its re-read share is given.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as benchmarks/decode.py: idle threads sleep

import torch  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import ForcedLength, length_histogram  # noqa: E402

from masterocr.config import load_config  # noqa: E402
from masterocr.decoding import decode  # noqa: E402
from masterocr.models import build_model  # noqa: E402

STRHUB_94 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
ROWS = [  # (label, batch, method, refine, bf16)
    ("b64 AR + 1 refine", 64, "greedy", 1, False),
    ("b64 NAR + 1 refine", 64, "nar", 1, False),
    ("b1 AR + 1 refine", 1, "greedy", 1, False),
    ("b1 NAR + 1 refine", 1, "nar", 1, False),
    ("b64 NAR + 1 refine bf16", 64, "nar", 1, True),
]


class ForcedParseq(ForcedLength):
    """benchmarks/decode.py's forced-length wrapper, with PARSeq's parallel and cloze passes forced too."""

    def __init__(self, model, lengths):
        super().__init__(model, lengths)
        self.refine_iters = model.refine_iters

    def _positions(self, logits):
        return torch.arange(logits.shape[1]).unsqueeze(0)

    def decode_parallel(self, memory, steps, need_weights=False):
        logits, attn = self.model.decode_parallel(memory, steps, need_weights)
        return self._force(logits, self._positions(logits), self.lengths[: memory.shape[0]]), attn

    def refine(self, memory, token_ids, need_weights=False):
        logits, attn = self.model.refine(memory, token_ids, need_weights)
        return self._force(logits, self._positions(logits), self.lengths[: memory.shape[0]]), attn


class ForcedHead(nn.Module):
    """strhub's head, forced the same way. strhub calls it once per AR step on (B, 1, D) (position = the call's
    index since `reset`) and once per parallel or cloze pass on (B, T, D) (positions 0..T-1). It holds the
    head's own parameters (strhub finds its device through them)."""

    def __init__(self, head: nn.Linear, eos_id: int):
        super().__init__()
        self.weight, self.bias, self.eos_id = head.weight, head.bias, eos_id
        self.lengths = torch.zeros(0, dtype=torch.long)
        self.calls = 0

    def reset(self, lengths):
        self.lengths, self.calls = lengths, 0

    def forward(self, x):
        logits = nn.functional.linear(x, self.weight, self.bias)
        if x.shape[1] == 1:
            positions = torch.full((1, 1), self.calls)
            self.calls += 1
        else:
            positions = torch.arange(x.shape[1]).unsqueeze(0)
        eos = torch.where(positions == self.lengths[: x.shape[0]].unsqueeze(1), 1e4, -1e4).to(logits.dtype)
        logits = logits.clone()
        logits[..., self.eos_id] = eos
        return logits


def strhub_parseq(strhub_dir: str):
    """strhub's PARSeq-S (random weights, its own init) and its tokenizer."""
    sys.path.insert(0, str(Path(strhub_dir).resolve()))
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    from strhub.data.utils import Tokenizer
    from strhub.models.parseq.model import PARSeq

    tokenizer = Tokenizer(STRHUB_94)
    torch.manual_seed(0)
    model = PARSeq(len(tokenizer), 25, (32, 128), (4, 8), 384, 6, 4, 12, 12, 4, 1, True, 1, 0.1).eval()
    return model, tokenizer


def ours_from(strhub_model) -> nn.Module:
    """Our PARSeq with strhub's weights, through the strhub importer."""
    from masterocr.importers import run_importer

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "parseq.pt"
        torch.save(strhub_model.state_dict(), path)
        imported = run_importer("strhub", path)
    model = build_model(imported.model_cfg)
    model.load_state_dict(imported.tensors)
    return model.eval()


def strhub_state(model: nn.Module) -> dict:
    """Our PARSeq's state dict in strhub's names (the inverse of importers/strhub.py): q/k/v projections
    concatenated into in_proj, the decoder's layers and norms renamed."""
    sd = model.state_dict()
    theirs = {key: value for key, value in sd.items() if key.startswith("encoder.")}
    depth = len({k.split(".")[1] for k in sd if k.startswith("decoder.")})
    for i in range(depth):
        src, dst = f"decoder.{i}.", f"decoder.layers.{i}."
        for attn in ("self_attn", "cross_attn"):
            for p in ("weight", "bias"):
                theirs[f"{dst}{attn}.in_proj_{p}"] = torch.cat([sd[f"{src}{attn}.{n}_proj.{p}"] for n in "qkv"])
                theirs[f"{dst}{attn}.out_proj.{p}"] = sd[f"{src}{attn}.out_proj.{p}"]
        for ours, name in (("mlp.fc1", "linear1"), ("mlp.fc2", "linear2"), ("norm1", "norm1"),
                           ("norm2", "norm2"), ("norm_q", "norm_q"), ("norm_c", "norm_c")):
            for p in ("weight", "bias"):
                theirs[f"{dst}{name}.{p}"] = sd[f"{src}{ours}.{p}"]
    for p in ("weight", "bias"):
        theirs[f"decoder.norm.{p}"] = sd[f"norm.{p}"]
        theirs[f"head.{p}"] = sd[f"head.{p}"]
    theirs["text_embed.embedding.weight"] = sd["embed.weight"]
    theirs["pos_queries"] = sd["pos_queries"]
    return theirs


def trained_pair(weights: str, strhub_model: nn.Module) -> nn.Module:
    """Our trained PARSeq, and the same weights loaded into strhub's model (strict), imported back as a check."""
    from masterocr.weights import load_model

    model, cfg = load_model(weights)
    model = model.float().eval()
    if model.tokenizer.charset != STRHUB_94 or list(cfg["img_size"]) != [32, 128]:
        raise SystemExit(f"{weights}: the comparison needs PARSeq-S at 32x128 with charset 94")
    strhub_model.load_state_dict(strhub_state(model), strict=True)
    back = ours_from(strhub_model).state_dict()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items()), "strhub mapping round trip"
    return model


def real_images(folder: str, count: int) -> torch.Tensor:
    from masterocr.data.datasets import build_dataset
    from masterocr.data.image import ImageTransform

    data = build_dataset(folder, ImageTransform(32, 128))
    return torch.stack([data[i][0] for i in range(min(count, len(data)))])


def until_eos(ids: torch.Tensor, eos: int) -> list[list[int]]:
    rows = []
    for row in ids.tolist():
        rows.append(row[: row.index(eos) + 1] if eos in row else row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strhub", metavar="DIR", help="a baudm/parseq checkout to compare with, side by side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per row, best kept")
    parser.add_argument("--lengths", choices=["realistic", "max"], default="realistic")
    parser.add_argument("--rows", nargs="+", type=int, help="row numbers to run (1-5; default all)")
    parser.add_argument("--weights", help="trained PARSeq-S weights (bundled name or file): real crops, no forcing")
    parser.add_argument("--onnx", metavar="DIR", help="with --weights: an export of them, timed on ONNX Runtime")
    parser.add_argument("--checked", action="store_true", help="with --onnx: add the bf16-checked runtime")
    parser.add_argument("--images", default=str(Path(__file__).resolve().parents[2] / "shared/data/IIIT5K/train"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.weights and not args.strhub:
        raise SystemExit("--weights compares with strhub: give --strhub DIR too")
    if args.weights:
        theirs, tokenizer = strhub_parseq(args.strhub)
        model = trained_pair(args.weights, theirs)
        forced_head = None
    elif args.strhub:
        theirs, tokenizer = strhub_parseq(args.strhub)
        model = ours_from(theirs)
        forced_head = ForcedHead(theirs.head, tokenizer.eos_id)
        theirs.head = forced_head
    else:
        torch.manual_seed(0)
        model, theirs = build_model(load_config("parseq").model).eval(), None

    rng = random.Random(0)
    hist, source = length_histogram(25)
    lengths = torch.tensor(rng.choices(list(hist), weights=list(hist.values()), k=64))
    lengths[0] = round(sum(k * v for k, v in hist.items()) / sum(hist.values()))
    if args.lengths == "max":
        lengths[:] = 99  # never forced: EOS is pushed down at every step, so every read takes 26 steps
        source = "none (every word 25 characters, 26 steps)"
    forced = model if args.weights else ForcedParseq(model, lengths)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "unknown CPU") if os.path.exists("/proc/cpuinfo") else "unknown CPU"
    print(f"{cpu}; torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.2f} at "
          f"start; PARSeq-S 32x128, {'trained' if args.weights else 'random'} weights; best of {args.repeats} interleaved rounds")
    if args.weights:
        images = real_images(args.images, 64)
        print(f"trained weights {args.weights}; the first {len(images)} crops of {args.images}, nothing forced")
    elif args.lengths == "max":
        print(f"word lengths: {source}")
    else:
        print(f"word lengths: {source}; batch-1 word {lengths[0].item()} chars; batch of 64: mean "
              f"{lengths.float().mean():.2f}, max {lengths.max().item()}")
    header = "| row | ours ms/batch | ours img/s | strhub ms/batch | strhub img/s | ours / strhub | same tokens |"
    onnx = None
    if args.onnx:
        from masterocr.runtime.recognizer import OnnxRecognizer

        header += " ORT fp32 ms/batch | ORT / strhub | ORT same tokens |"
        if args.checked:
            header += " bf16-checked ms/batch | checked / strhub | same tokens as strhub fp32 | read again |"
    print(header)
    print("|---|---:|---:|---:|---:|---:|---|" + ("---:|---:|---|" if args.onnx else "")
          + ("---:|---:|---|---:|" if args.onnx and args.checked else ""))
    if not args.weights:
        torch.manual_seed(1)
        images = torch.rand(64, 3, 32, 128) * 2 - 1
    for number, (label, batch, method, refine, bf16) in enumerate(ROWS, 1):
        if args.rows and number not in args.rows:
            continue
        x = images[:batch]

        def ours():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return decode(forced, x, method=method, refine_iters=refine, need_attention=False).token_ids

        def strhub():
            theirs.decode_ar, theirs.refine_iters = method == "greedy", refine
            if forced_head is not None:
                forced_head.reset(lengths[:batch])
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return theirs(tokenizer, x).argmax(-1)

        runners = {"ours": ours} if theirs is None else {"ours": ours, "strhub": strhub}
        if args.onnx and not bf16:
            onnx = OnnxRecognizer(args.onnx, decode_method=method, refine_iters=refine, threads=args.threads)
            array = x.numpy()
            runners["onnx"] = lambda: torch.from_numpy(onnx.decode(array, need_attention=False)[0])
        if args.onnx and args.checked:
            checked = OnnxRecognizer(args.onnx, decode_method=method, refine_iters=refine, threads=args.threads,
                                     precision="bf16-checked")
            checked_array = x.numpy()
            runners["checked"] = lambda: torch.from_numpy(checked.decode(checked_array, need_attention=False)[0])
        best = {name: float("inf") for name in runners}
        out = {name: fn() for name, fn in runners.items()}  # warm-up
        for _ in range(args.repeats):
            for name, fn in runners.items():
                start = time.perf_counter()
                out[name] = fn()
                best[name] = min(best[name], time.perf_counter() - start)
        o = best["ours"]
        if theirs is None:
            print(f"| {label} | {1000 * o:.1f} | {batch / o:.1f} | | | | |", flush=True)
            continue
        s = best["strhub"]
        same = until_eos(out["ours"], model.tokenizer.eos_id) == until_eos(out["strhub"], tokenizer.eos_id)
        line = (f"| {label} | {1000 * o:.1f} | {batch / o:.1f} | {1000 * s:.1f} | {batch / s:.1f} | {s / o:.2f}x | "
                f"{'yes' if same else 'NO'} |")
        if "onnx" in best:
            r = best["onnx"]
            same_ort = until_eos(out["onnx"], model.tokenizer.eos_id) == until_eos(out["strhub"], tokenizer.eos_id)
            line += f" {1000 * r:.1f} | {s / r:.2f}x | {'yes' if same_ort else 'NO'} |"
        elif args.onnx:
            line += " | | |"
        if "checked" in best:
            c = best["checked"]
            reference = out["strhub"]
            if bf16:  # strhub's fp32 tokens: what the checked reading promises
                theirs.decode_ar, theirs.refine_iters = method == "greedy", refine
                with torch.no_grad():
                    reference = theirs(tokenizer, x).argmax(-1)
            same_c = until_eos(out["checked"], model.tokenizer.eos_id) == until_eos(reference, tokenizer.eos_id)
            line += (f" {1000 * c:.1f} | {s / c:.2f}x | {'yes' if same_c else 'NO'} | "
                     f"{100 * checked.rows_reread / max(checked.rows_read, 1):.1f}% |")
        print(line, flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f} (2 cores)")


if __name__ == "__main__":
    main()
