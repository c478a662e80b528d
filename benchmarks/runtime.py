"""Inference speed of the export: torch fp32, torch bf16, ONNX Runtime fp32 and int8, on this CPU.

For the bundled model (master-small, 32x100, real weights, real IIIT5K/train crops so words end where the model
ends them) and `master` at 48x160 (random weights; every step runs the real decoder, then EOS is forced at word
lengths drawn from IIIT5K/train labels, as benchmarks/decode.py does), it times preprocessed batches to token ids
(encoder + cached greedy decoding, no attention maps): batch 1 latency (ms) and batch 64 throughput (img/s).
Paths are interleaved (each repeat runs every path once) and the best of the repeats is kept, so a busy machine
slows every path alike. The tokens of every path are compared with torch fp32's on the timed batches.
The export files' sizes are listed. --levers times ONNX Runtime options on the bundled model instead.

    python benchmarks/runtime.py                  # the table (several minutes on 2 cores)
    python benchmarks/runtime.py --levers         # what each ONNX Runtime option buys
    python benchmarks/runtime.py --models master-small --repeats 5

int8 exports are calibrated on IIIT5K/train (256 images); without ../shared/data, on rendered words.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import ForcedLength, length_histogram  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TRAIN = DATA / "IIIT5K" / "train"


# ---- inputs ---------------------------------------------------------------------------------------------

def real_images(transform, count: int) -> np.ndarray:
    """`count` IIIT5K/train crops (seeded choice) preprocessed, or rendered words when the data is absent."""
    if (TRAIN / "labels.tsv").is_file():
        lines = (TRAIN / "labels.tsv").read_text(encoding="utf-8").splitlines()
        paths = [str(TRAIN / line.split("\t")[0]) for line in random.Random(0).sample(lines, count)]
        return np.stack([transform.array(p) for p in paths])
    sys.path.insert(0, str(ROOT / "tests"))
    from wordimages import render_word

    words = ["open", "street", "cafe", "hotel", "exit", "bank", "london", "sale"]
    return np.stack([transform.array(render_word(words[i % len(words)])) for i in range(count)])


def calibration_source(tmp: str) -> list[str]:
    if TRAIN.is_dir():
        return [str(TRAIN)]
    folder = Path(tmp) / "calibration"
    folder.mkdir(exist_ok=True)
    sys.path.insert(0, str(ROOT / "tests"))
    from wordimages import render_word

    for i, w in enumerate(["open", "street", "cafe", "hotel", "exit", "bank", "london", "sale"] * 4):
        render_word(w).save(folder / f"{i}.png")
    return [str(folder)]


# ---- the paths ------------------------------------------------------------------------------------------

class ForcedStep:
    """A runtime decoder step that ends word i after lengths[i] characters; the decoder still runs fully.

    Greedy decoding drops ended rows from the running batch; the rows still running are those whose word has
    not ended, so the step follows them from the number of rows it is given."""

    def __init__(self, step, eos: int, lengths: np.ndarray):
        self.step, self.eos, self.lengths = step, eos, lengths
        self.rows = np.arange(len(lengths))

    def __call__(self, tokens, position, past, memory_kv):
        if len(tokens) != len(self.rows):  # rows were dropped after the previous step
            self.rows = self.rows[self.lengths[self.rows] >= position]
        logits, present, attn = self.step(tokens, position, past, memory_kv)
        logits = logits.copy()
        logits[:, self.eos] = np.where(position == self.lengths[self.rows], 1e4, -1e4)
        return logits, present, attn


def ort_reader(rec, lengths: np.ndarray | None):
    """images (B, C, H, W) -> token ids through an OnnxRecognizer, optionally with forced word lengths."""
    from masterocr.runtime import decoding

    def run(images):
        memory_kv = rec.encoder.run(rec._memory_outputs, {"images": images})
        step = rec.step
        if lengths is not None:
            step = ForcedStep(rec.step, rec.spec.eos, lengths[: len(images)])
        ids, probs, _ = decoding.greedy(step, memory_kv, rec.spec, rec.spec.max_steps, False)
        return decoding.finish(ids, probs, None, rec.spec, (1, 1))[0]  # PAD after EOS, as torch's
    return run


def torch_reader(model, lengths: torch.Tensor | None, bf16: bool):
    from masterocr.decoding import decode

    def run(images):
        x = torch.from_numpy(images).contiguous(memory_format=torch.channels_last)
        m = model if lengths is None else ForcedLength(model, lengths[: len(images)])
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return decode(m, x, need_attention=False).token_ids.numpy()
    return run


def time_paths(paths: dict, images: np.ndarray, repeats: int) -> tuple[dict, dict]:
    """Best wall time per path over `repeats` interleaved rounds (one warm-up round first), and token ids."""
    best = {name: float("inf") for name in paths}
    tokens = {name: run(images) for name, run in paths.items()}  # warm-up
    for _ in range(repeats):
        for name, run in paths.items():
            start = time.perf_counter()
            tokens[name] = run(images)
            best[name] = min(best[name], time.perf_counter() - start)
    return best, tokens


def same_tokens(a: np.ndarray, b: np.ndarray, pad: int) -> int:
    """Rows whose token sequences are equal (batches may have run a different number of steps)."""
    t = max(a.shape[1], b.shape[1])
    a = np.pad(a, ((0, 0), (0, t - a.shape[1])), constant_values=pad)
    b = np.pad(b, ((0, 0), (0, t - b.shape[1])), constant_values=pad)
    return int((a == b).all(1).sum())


# ---- models ---------------------------------------------------------------------------------------------

def prepare(name: str, tmp: str, calibration: list[str]):
    """(label, weights path, fp32 export dir, int8 export dir, random weights?) for a model name."""
    from masterocr.config import load_config
    from masterocr.export import export_model
    from masterocr.models import build_model
    from masterocr.weights import save_weights

    if name == "master-small":
        weights, random_weights, label = "master-small", False, "master-small (bundled) 32x100"
    else:
        torch.manual_seed(0)
        cfg = load_config(name).model
        weights = os.path.join(tmp, f"{name}.safetensors")
        if not os.path.isfile(weights):
            save_weights(build_model(cfg).eval(), cfg, weights)
        random_weights = True
        label = f"{name} (random) {cfg.img_size[0]}x{cfg.img_size[1]}"
    fp32 = os.path.join(tmp, f"{name}-fp32")
    int8 = os.path.join(tmp, f"{name}-int8")
    start = time.time()
    if not os.path.isfile(os.path.join(fp32, "decoder_step.onnx")):  # --exports keeps them between runs
        export_model(weights, fp32)
    if not os.path.isfile(os.path.join(int8, "decoder_step.onnx")):
        export_model(fp32, int8, int8=True, calibration=calibration)
    print(f"exports of {name} ready in {time.time() - start:.0f} s", file=sys.stderr)
    return label, weights, fp32, int8, random_weights


def size_mb(folder: str) -> str:
    sizes = {p.name: p.stat().st_size / 1e6 for p in Path(folder).glob("*.onnx")}
    return " + ".join(f"{sizes[n]:.1f}" for n in ("encoder.onnx", "decoder_step.onnx")) + f" = {sum(sizes.values()):.1f} MB"


def table(args, tmp: str, calibration: list[str]) -> None:
    import masterocr

    rng = random.Random(0)
    hist, source = length_histogram(25)
    lengths = np.array(rng.choices(list(hist), weights=list(hist.values()), k=64))
    lengths[0] = round(sum(k * v for k, v in hist.items()) / sum(hist.values()))
    print(f"forced word lengths (random weights) from {source}: batch 1 {lengths[0]} chars, batch 64 mean "
          f"{lengths.mean():.2f}")
    header = (f"{'model':<32}{'batch':>6}{'path':>11}{'ms/img':>9}{'img/s':>8}{'x torch fp32':>14}"
              f"{'same tokens':>13}")
    rows, sizes = [], []
    for name in args.models:
        label, weights, fp32, int8, random_weights = prepare(name, tmp, calibration)
        sizes.append((label, weights, fp32, int8))
        torch_rec = masterocr.load(weights)
        forced_t = torch.from_numpy(lengths) if random_weights else None
        forced_n = lengths if random_weights else None
        paths = {
            "torch fp32": torch_reader(torch_rec.model, forced_t, False),
            "torch bf16": torch_reader(torch_rec.model, forced_t, True),
            "ort fp32": ort_reader(masterocr.load(fp32, threads=args.threads), forced_n),
            "ort int8": ort_reader(masterocr.load(int8, threads=args.threads), forced_n),
        }
        transform = torch_rec.transform
        for batch in args.batches:
            if random_weights:
                images = np.random.default_rng(0).standard_normal(
                    (batch, 3, *torch_rec.img_size), dtype=np.float32)
            else:
                images = real_images(transform, 64)[:batch] if batch > 1 else real_images(transform, 1)
            best, tokens = time_paths(paths, images, args.repeats if batch == 1 else max(1, args.repeats // 2))
            pad = torch_rec.tokenizer.pad_id
            for path, seconds in best.items():
                same = same_tokens(tokens[path], tokens["torch fp32"], pad)
                rows.append(f"{label:<32}{batch:>6}{path:>11}{1000 * seconds / batch:>9.1f}{batch / seconds:>8.1f}"
                            f"{best['torch fp32'] / seconds:>13.2f}x{same:>8}/{batch:<4}")
                print(rows[-1], file=sys.stderr, flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f}; torch {torch.__version__}, {args.threads} threads; "
          f"onnxruntime {__import__('onnxruntime').__version__}")
    print(header)
    print("-" * len(header))
    print("\n".join(rows))
    print("\nexport sizes (encoder + decoder step):")
    for label, weights, fp32, int8 in sizes:
        print(f"  {label:<32} fp32 {size_mb(fp32):<28} int8 {size_mb(int8)}")


# ---- levers ---------------------------------------------------------------------------------------------

class BoundStep:
    """The decoder step through IO binding: the memory K/V are bound once per batch as OrtValues and the
    present caches stay OrtValues fed back as the next past (no NumPy round trip), until rows are dropped."""

    def __init__(self, session, layers: int):
        from masterocr.runtime.format import memory_kv_names, past_names, present_names

        self.session, self.past, self.memory = session, past_names(layers), memory_kv_names(layers)
        self.present = present_names(layers)
        self._bound = None

    def __call__(self, tokens, position, past, memory_kv):
        import onnxruntime as ort

        binding = self.session.io_binding()
        binding.bind_cpu_input("tokens", tokens)
        binding.bind_cpu_input("position", np.array(position, np.int64))
        for name, value in zip(self.past, past):
            if isinstance(value, _Cache):
                binding.bind_ortvalue_input(name, value.value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        if self._bound is None or self._bound[0] is not memory_kv:
            self._bound = (memory_kv, [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for v in memory_kv])
        for name, value in zip(self.memory, self._bound[1]):
            binding.bind_ortvalue_input(name, value)
        for name in ["logits", *self.present, "attention"]:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        out = binding.get_outputs()
        return out[0].numpy(), [_Cache(v) for v in out[1:-1]], out[-1].numpy()


class _Cache:
    """A present cache kept as an OrtValue; selecting rows (dropping ended rows) makes it an array."""

    def __init__(self, value):
        self.value = value

    def __getitem__(self, index):
        return self.value.numpy()[index]


def levers(args, tmp: str, calibration: list[str]) -> None:
    import masterocr
    from masterocr.export import export_model
    from masterocr.runtime import SessionOptions
    from masterocr.runtime.recognizer import OnnxRecognizer

    fp32 = os.path.join(tmp, "fp32")
    fixed = os.path.join(tmp, "fixed")
    export_model("master-small", fp32)
    export_model("master-small", fixed, cache="fixed")
    enc_int8 = os.path.join(tmp, "int8-dynamic")
    export_model(fp32, enc_int8, int8=True)  # no calibration: convolutions fp32, MatMul int8
    int8 = os.path.join(tmp, "int8")
    export_model(fp32, int8, int8=True, calibration=calibration)
    t = args.threads

    def rec(folder, **opts):
        return OnnxRecognizer(folder, options=SessionOptions(**{"threads": t, **opts}))

    def reader(r, step=None):
        from masterocr.runtime import decoding

        def run(images):
            memory_kv = r.encoder.run(r._memory_outputs, {"images": images})
            ids, probs, _ = decoding.greedy(step or r.step, memory_kv, r.spec, r.spec.max_steps, False)
            return decoding.finish(ids, probs, None, r.spec, (1, 1))[0]
        return run

    base = rec(fp32)
    # Step graph through ONNX Runtime's transformer optimizer (it fuses what it recognises: here only the
    # residual adds into SkipLayerNormalization, no attention pattern), and an fp16 encoder (fp32 inputs).
    import onnx
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from masterocr.runtime.graphs import make_session
    from masterocr.runtime.recognizer import SessionStep

    fused_path, fp16_path = os.path.join(tmp, "step_fused.onnx"), os.path.join(tmp, "encoder_fp16.onnx")
    d = base.metadata["decoder"]
    optimizer.optimize_model(os.path.join(fp32, "decoder_step.onnx"), model_type="bert", num_heads=d["heads"],
                             hidden_size=d["heads"] * d["head_dim"], opt_level=0).save_model_to_file(fused_path)
    onnx.save(convert_float_to_float16(onnx.load(os.path.join(fp32, "encoder.onnx")), keep_io_types=True), fp16_path)
    fused = rec(fp32)
    fused.step = SessionStep(make_session(Path(fused_path), SessionOptions(threads=t)), base.spec.layers)
    fp16 = rec(fp32)
    fp16.encoder = make_session(Path(fp16_path), SessionOptions(threads=t))
    int8_rec = rec(int8)
    mixed = rec(int8)  # int8 encoder, fp32 decoder step
    mixed.step = base.step
    variants = {
        "ort fp32 (all opts, 2 thr, no spin)": reader(base),
        "  optimization basic": reader(rec(fp32, optimization="basic")),
        "  optimization extended": reader(rec(fp32, optimization="extended")),
        "  optimization disabled": reader(rec(fp32, optimization="disabled")),
        "  spinning threads": reader(rec(fp32, spinning=True)),
        "  1 thread": reader(rec(fp32, threads=1)),
        "  fixed-size cache": reader(rec(fixed)),
        "  io binding (OrtValue cache)": reader(base, BoundStep(base.step.session, base.spec.layers)),
        "  step fused (transformers optimizer)": reader(fused),
        "  fp16 encoder": reader(fp16),
        "int8 MatMul only (conv fp32)": reader(rec(enc_int8)),
        "int8 static conv + MatMul": reader(int8_rec),
        "int8 encoder, fp32 step": reader(mixed),
    }
    torch_rec = masterocr.load("master-small")
    variants["torch fp32"] = torch_reader(torch_rec.model, None, False)
    for batch in args.batches:
        images = real_images(torch_rec.transform, 64)[:batch] if batch > 1 else real_images(torch_rec.transform, 1)
        best, tokens = time_paths(variants, images, args.repeats if batch == 1 else max(1, args.repeats // 2))
        print(f"\nmaster-small 32x100, batch {batch}, load average {os.getloadavg()[0]:.2f}")
        for name, seconds in best.items():
            same = same_tokens(tokens[name], tokens["torch fp32"], torch_rec.tokenizer.pad_id)
            print(f"  {name:<40}{1000 * seconds / batch:>9.2f} ms/img{batch / seconds:>9.1f} img/s"
                  f"{best['ort fp32 (all opts, 2 thr, no spin)'] / seconds:>7.2f}x ort fp32   "
                  f"same tokens {same}/{batch}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["master-small", "master"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--repeats", type=int, default=6, help="interleaved timed rounds at batch 1 (half at 64)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--levers", action="store_true", help="time ONNX Runtime options on the bundled model")
    parser.add_argument("--exports", metavar="DIR", help="keep the exports here and reuse them in later runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import platform
    import subprocess

    cpu = next((line.split(":", 1)[1].strip() for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name")),
        platform.processor())
    print(f"CPU: {cpu} ({os.cpu_count()} cores visible), load average at the start {os.getloadavg()[0]:.2f}")
    tmp = args.exports or tempfile.mkdtemp(prefix="masterocr-runtime-bench-")
    os.makedirs(tmp, exist_ok=True)
    try:
        calibration = calibration_source(tmp)
        (levers if args.levers else table)(args, tmp, calibration)
    finally:
        if not args.exports:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
