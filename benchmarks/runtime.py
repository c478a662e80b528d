"""Inference speed of the export: torch fp32, torch bf16, ONNX Runtime fp32 and int8, on this CPU.

--models takes any mix of:
    master-small              the bundled weights, on real IIIT5K/train crops (words end where the model ends them)
    a weights file            (.safetensors / .ckpt, e.g. EasyOCR's english_g2 from `masterocr import easyocr-g2`):
                              real weights on real IIIT5K/train crops, with the preprocessing the weights ask for
                              (english_g2: height 64, aspect kept, edge-padded canvases; batches sorted by aspect
                              ratio and padded to their widest, as `masterocr eval` and EasyOCR batch them)
    a config name             random weights at the configured size (master, parseq, vitstr, crnn, trba,
                              seq2seq-fsns, ...) on random images; attention decoders run every step's real
                              compute, then EOS is forced at word lengths drawn from IIIT5K/train labels, as
                              benchmarks/decode.py does (PARSeq: greedy without its refinement pass, which the
                              forcing cannot steer; ViTSTR and CRNN cost the same for any word)
Paths: torch fp32 and bf16 (autocast), ORT fp32, OpenVINO bf16 and bf16-checked (when openvino is installed;
bf16-checked only on trained weights, with its re-read share in the notes), ORT int8 (`--int8`: calibrated
convolutions and dynamic MatMul/Gemm/LSTM) and, when calibration images are used, ORT int8 conv (`--int8-ops
conv`: the convolutions only).
Timed: preprocessed batches to texts (encoder, decoding, reading the texts out; no attention maps). Batch 1 is
the mean over --batch1-images single images, a larger batch the mean over --images images in batches of that
size. Paths are interleaved (each round runs every path once) and the best round is kept, so a busy machine
slows every path alike. The token ids of every path are compared with torch fp32's on the timed images. The
export files' sizes are listed. --levers times ONNX Runtime options on the bundled model instead.

    python benchmarks/runtime.py                  # master-small and master 48x160 (several minutes on 2 cores)
    python benchmarks/runtime.py --models master-small easyocr-g2.safetensors --batches 1 32
    python benchmarks/runtime.py --models parseq vitstr crnn trba seq2seq-fsns --repeats 3
    python benchmarks/runtime.py --levers         # what each ONNX Runtime option buys

int8 exports are calibrated on IIIT5K/train (256 images; without ../shared/data, on rendered words); with
--calibration none their convolutions stay fp32 (what english_g2 measures better with, see the README).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import ForcedLength, length_histogram  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TRAIN = DATA / "IIIT5K" / "train"
EASYOCR = {1: 14.8, 32: 96.0}  # EasyOCR's english_g2 on this CPU (issue 16): ms at batch 1, img/s at batch 32


# ---- inputs ---------------------------------------------------------------------------------------------

CROPS = [TRAIN]  # where the timed crops come from (--crops)


def real_arrays(rec, count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` crops of --crops (default IIIT5K/train; seeded choice) preprocessed by `rec`, or rendered words
    when the data is absent."""
    folder = CROPS[0]
    if (folder / "labels.tsv").is_file():
        lines = (folder / "labels.tsv").read_text(encoding="utf-8").splitlines()
        # Upright: the transform itself (rec.preprocess gives a tall crop's two views to a tall-reading model).
        chosen = random.Random(seed).sample(lines, count)
        return [rec.transform.array(str(folder / line.split("\t")[0])) for line in chosen]
    sys.path.insert(0, str(ROOT / "tests"))
    from wordimages import render_word

    words = ["open", "street", "cafe", "hotel", "exit", "bank", "london", "sale"]
    return [rec.transform.array(render_word(words[i % len(words)])) for i in range(count)]


def workload(rec, batch: int, count: int, random_images: bool) -> list[np.ndarray]:
    """`count` images in batches of `batch` (B, C, H, W): real crops sorted by aspect ratio when the model
    keeps it, each batch collated (padded to its widest); or random images of the configured size."""
    if random_images:
        rng = np.random.default_rng(0)
        shape = (int(rec.metadata["in_channels"]), *rec.img_size)
        return [rng.standard_normal((min(batch, count - i), *shape), dtype=np.float32) for i in range(0, count, batch)]
    arrays = [np.asarray(a, np.float32) for a in real_arrays(rec, count)]
    if rec.keep_aspect:
        arrays.sort(key=lambda a: a.shape[-1])
    return [rec.collate(arrays[i: i + batch]) for i in range(0, count, batch)]


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
    """images (B, C, H, W) -> token ids through an OnnxRecognizer (texts read out too), optionally with
    forced word lengths."""
    step = rec.step

    def run(images):
        if lengths is not None:
            rec.step = ForcedStep(step, rec.spec.eos, lengths[: len(images)])
        ids, probs, chosen, _ = rec.decode(images, need_attention=False)
        if rec.kind == "ctc":
            rec.tokenizer.decode(probs)
        else:
            rec.tokenizer.decode_chosen(ids, chosen)
        return ids
    return run


def torch_reader(rec, lengths: torch.Tensor | None, bf16: bool):
    from masterocr.decoding import decode

    model = rec.model if lengths is None else ForcedLength(rec.model, lengths)

    def run(images):
        x = torch.from_numpy(images).contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            result = decode(model, x, need_attention=False)
        result.decoded(rec.tokenizer)
        return result.token_ids.numpy()
    return run


def time_paths(paths: dict, batches: list[np.ndarray], repeats: int) -> tuple[dict, dict]:
    """Best wall time per path over `repeats` interleaved rounds (one warm-up round first), each round reading
    every batch once; and each path's token ids per batch."""
    best = {name: float("inf") for name in paths}
    tokens = {name: [run(b) for b in batches] for name, run in paths.items()}  # warm-up
    for _ in range(repeats):
        for name, run in paths.items():
            start = time.perf_counter()
            tokens[name] = [run(b) for b in batches]
            best[name] = min(best[name], time.perf_counter() - start)
    return best, tokens


def cpu_name() -> str:
    """The CPU's model name as lscpu gives it (every timing table names its CPU)."""
    import platform
    import subprocess

    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")),
                platform.processor())


def same_tokens(a: np.ndarray, b: np.ndarray, pad: int) -> int:
    """Rows whose token sequences are equal (batches may have run a different number of steps)."""
    t = max(a.shape[1], b.shape[1])
    a = np.pad(a, ((0, 0), (0, t - a.shape[1])), constant_values=pad)
    b = np.pad(b, ((0, 0), (0, t - b.shape[1])), constant_values=pad)
    return int((a == b).all(1).sum())


# ---- models ---------------------------------------------------------------------------------------------

@dataclass
class Prepared:
    label: str
    weights: str
    fp32: str
    int8: str
    int8conv: str | None  # --int8-ops conv (calibrated convolutions only), when calibration images are given
    random_weights: bool


def prepare(name: str, tmp: str, calibration: list[str]) -> Prepared:
    """The weights and their fp32 and int8 exports for a --models entry (see the module docstring)."""
    from masterocr.config import load_config
    from masterocr.export import export_model
    from masterocr.models import build_model
    from masterocr.weights import bundled_names, save_weights

    stem = Path(name).stem
    if name in bundled_names():
        weights, random_weights, label = name, False, f"{name} (bundled)"
    elif os.path.isfile(name):
        weights, random_weights, label = name, False, stem
    else:
        torch.manual_seed(0)
        overrides = ["model.charset=94"] if name.startswith("seq2seq") else []  # no FSNS charset file needed
        cfg = load_config(name, overrides).model
        weights = os.path.join(tmp, f"{stem}.safetensors")
        if not os.path.isfile(weights):
            save_weights(build_model(cfg).eval(), cfg, weights)
        random_weights, label = True, f"{name} (random)"
    fp32 = os.path.join(tmp, f"{stem}-fp32")
    int8 = os.path.join(tmp, f"{stem}-int8")
    start = time.time()
    if not any(Path(fp32).glob("*.onnx")):  # --exports keeps them between runs
        export_model(weights, fp32)
    if not any(Path(int8).glob("*.onnx")):
        export_model(fp32, int8, int8=True, calibration=calibration)
    int8conv = os.path.join(tmp, f"{stem}-int8conv") if calibration else None
    if int8conv and not any(Path(int8conv).glob("*.onnx")):
        export_model(fp32, int8conv, int8=True, calibration=calibration, int8_ops="conv")
    print(f"exports of {name} ready in {time.time() - start:.0f} s", file=sys.stderr)
    return Prepared(label, weights, fp32, int8, int8conv, random_weights)


def size_mb(folder: str) -> str:
    sizes = {p.stem: p.stat().st_size / 1e6 for p in sorted(Path(folder).glob("*.onnx"))}
    parts = " + ".join(f"{size:.1f}" for size in sizes.values())
    return (f"{parts} = " if len(sizes) > 1 else "") + f"{sum(sizes.values()):.1f} MB ({' + '.join(sizes)})"


def table(args, tmp: str, calibration: list[str]) -> None:
    import masterocr

    rng = random.Random(0)
    hist, source = length_histogram(25)
    count = max(args.images, max(args.batches))
    lengths = np.array(rng.choices(list(hist), weights=list(hist.values()), k=count))
    lengths[0] = round(sum(k * v for k, v in hist.items()) / sum(hist.values()))
    print(f"forced word lengths (random weights) from {source}: mean {lengths.mean():.2f}")
    header = (f"{'model':<34}{'size':>9}{'batch':>6}{'path':>14}{'ms/img':>9}{'img/s':>8}{'x torch fp32':>14}"
              f"{'same tokens':>13}")
    rows, sizes, notes = [], [], []
    bf16_available = importlib.util.find_spec("openvino") is not None and not args.no_bf16
    if bf16_available:
        from masterocr.runtime.openvino import cpu_has_bf16

        print(f"OpenVINO {__import__('openvino').__version__}, bf16 units: {cpu_has_bf16()}")
    for name in args.models:
        m = prepare(name, tmp, calibration)
        sizes.append(m)
        torch_rec = masterocr.load(m.weights)
        fp32 = masterocr.load(m.fp32, threads=args.threads)
        forced = m.random_weights and fp32.kind == "autoregressive"
        refine = {"refine_iters": 0} if forced else {}  # see the module docstring (PARSeq)
        size = "x".join(map(str, torch_rec.img_size)) + (" var" if torch_rec.transform.width_step else "")
        for batch in args.batches:
            n = args.batch1_images if batch == 1 else max(args.images, batch)
            forced_n = lengths[:batch] if forced else None
            paths = {
                "torch fp32": torch_reader(torch_rec, torch.from_numpy(forced_n) if forced else None, False),
                "torch bf16": torch_reader(torch_rec, torch.from_numpy(forced_n) if forced else None, True),
                "ort fp32": ort_reader(masterocr.load(m.fp32, threads=args.threads, **refine), forced_n),
                "ort int8": ort_reader(masterocr.load(m.int8, threads=args.threads, **refine), forced_n),
            }
            checked = None
            if bf16_available:  # the encoder in bf16 through OpenVINO; checked: close calls read again in fp32
                paths["ov bf16"] = ort_reader(masterocr.load(m.fp32, threads=args.threads, precision="bf16",
                                                             **refine), forced_n)
                if not forced:  # forced lengths make every gap meaningless
                    checked = masterocr.load(m.fp32, threads=args.threads, precision="bf16-checked")
                    paths["bf16-checked"] = ort_reader(checked, None)
            if m.int8conv:
                paths["ort int8 conv"] = ort_reader(masterocr.load(m.int8conv, threads=args.threads, **refine),
                                                    forced_n)
            batches = workload(fp32, batch, n, m.random_weights)
            best, tokens = time_paths(paths, batches, args.repeats if batch == 1 else max(1, args.repeats // 2))
            pad = getattr(torch_rec.tokenizer, "pad_id", 0)
            for path, seconds in best.items():
                same = sum(same_tokens(a, b, pad) for a, b in zip(tokens[path], tokens["torch fp32"]))
                rows.append(f"{m.label:<34}{size:>9}{batch:>6}{path:>14}{1000 * seconds / n:>9.1f}"
                            f"{n / seconds:>8.1f}{best['torch fp32'] / seconds:>13.2f}x{same:>8}/{n:<4}")
                print(rows[-1], file=sys.stderr, flush=True)
                if path == "bf16-checked":
                    notes.append(f"  {m.label} batch {batch}: bf16-checked read "
                                 f"{100 * checked.rows_reread / max(checked.rows_read, 1):.1f}% of the words again "
                                 f"in fp32 (margin {checked.check_margin})")
                if "easyocr" in m.label and batch in EASYOCR:
                    ratio = EASYOCR[1] / (1000 * seconds / n) if batch == 1 else (n / seconds) / EASYOCR[batch]
                    notes.append(f"  {m.label} {path} batch {batch}: {ratio:.2f}x EasyOCR's speed "
                                 f"({EASYOCR[1]} ms at batch 1, {EASYOCR[32]:.0f} img/s at batch 32)")
    print(f"\nload average {os.getloadavg()[0]:.2f}; torch {torch.__version__}, {args.threads} threads; "
          f"onnxruntime {__import__('onnxruntime').__version__}")
    print(header)
    print("-" * len(header))
    print("\n".join(rows))
    if notes:
        print("\n".join(["", "notes:"] + notes))
    print("\nexport sizes:")
    for m in sizes:
        print(f"  {m.label:<34} fp32 {size_mb(m.fp32):<48} int8 {size_mb(m.int8)}"
              + (f"  int8 conv {size_mb(m.int8conv)}" if m.int8conv else ""))


# ---- levers ---------------------------------------------------------------------------------------------

class BoundStep:
    """The decoder step through IO binding: the memory K/V are bound once per batch as OrtValues and the
    present caches stay OrtValues fed back as the next past (no NumPy round trip), until rows are dropped."""

    def __init__(self, session, io):
        self.session, self.past, self.memory, self.present = session, io.past, io.memory, io.present
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
    int8conv = os.path.join(tmp, "int8conv")
    export_model(fp32, int8conv, int8=True, calibration=calibration, int8_ops="conv")
    t = args.threads

    def rec(folder, **opts):
        return OnnxRecognizer(folder, options=SessionOptions(**{"threads": t, **opts}))

    def reader(r, step=None):
        if step is not None:
            r.step = step
        return ort_reader(r, None)

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
    fused.step = SessionStep(make_session(Path(fused_path), SessionOptions(threads=t)), base.io)
    fp16 = rec(fp32)
    fp16.encoder = make_session(Path(fp16_path), SessionOptions(threads=t))
    int8_rec = rec(int8)
    mixed = rec(int8)  # int8 encoder, fp32 decoder step
    mixed.step = base.step
    bound = rec(fp32)
    variants = {
        "ort fp32 (all opts, 2 thr, no spin)": reader(base),
        "  optimization basic": reader(rec(fp32, optimization="basic")),
        "  optimization extended": reader(rec(fp32, optimization="extended")),
        "  optimization disabled": reader(rec(fp32, optimization="disabled")),
        "  spinning threads": reader(rec(fp32, spinning=True)),
        "  1 thread": reader(rec(fp32, threads=1)),
        "  fixed-size cache": reader(rec(fixed)),
        "  io binding (OrtValue cache)": reader(bound, BoundStep(bound.step.session, bound.io)),
        "  step fused (transformers optimizer)": reader(fused),
        "  fp16 encoder": reader(fp16),
        "  denormals as zero": reader(rec(fp32, config={"session.set_denormal_as_zero": "1"})),
        "int8 MatMul only (conv fp32)": reader(rec(enc_int8)),
        "int8 static conv + MatMul": reader(int8_rec),
        "int8 encoder, fp32 step": reader(mixed),
        "int8 conv only (--int8-ops conv)": reader(rec(int8conv)),
    }
    torch_rec = masterocr.load("master-small")
    variants["torch fp32"] = torch_reader(torch_rec, None, False)
    breakdown(base, int8_rec, rec(int8conv), args)
    for batch in args.batches:
        batches = workload(base, batch, args.batch1_images if batch == 1 else max(args.images, batch), False)
        best, tokens = time_paths(variants, batches, args.repeats if batch == 1 else max(1, args.repeats // 2))
        print(f"\nmaster-small 32x100, batch {batch}, load average {os.getloadavg()[0]:.2f}")
        n = sum(len(b) for b in batches)
        for name, seconds in best.items():
            same = sum(same_tokens(a, b, torch_rec.tokenizer.pad_id) for a, b in zip(tokens[name], tokens["torch fp32"]))
            print(f"  {name:<40}{1000 * seconds / n:>9.2f} ms/img{n / seconds:>9.1f} img/s"
                  f"{best['ort fp32 (all opts, 2 thr, no spin)'] / seconds:>7.2f}x ort fp32   "
                  f"same tokens {same}/{n}", flush=True)


def breakdown(fp32, int8, int8conv, args) -> None:
    """Where batch-1 time goes: the encoder call, one decoder step, steps per image (median over images)."""
    from masterocr.runtime import decoding

    arrays = real_arrays(fp32, args.batch1_images)
    print(f"\nbatch-1 breakdown, master-small, {args.threads} thread(s), load average {os.getloadavg()[0]:.2f}")
    for name, r in (("ort fp32", fp32), ("ort int8 (--int8)", int8), ("ort int8 conv only", int8conv)):
        encoder, step, steps = [], [], 0
        for rep in range(max(1, args.repeats // 2)):
            for a in arrays:
                start = time.perf_counter()
                memory = r.encoder.run(r._memory_outputs, {"images": a[None]})
                encoder.append(time.perf_counter() - start)

                def timed(*inputs):
                    start = time.perf_counter()
                    out = r.step(*inputs)
                    step.append(time.perf_counter() - start)
                    return out

                ids = decoding.greedy(timed, memory, r.spec, r.spec.max_steps, False)[0]
                steps += ids.shape[1] if rep == 0 else 0
        print(f"  {name:<22} encoder {1000 * np.median(encoder):6.2f} ms   decoder step {1000 * np.median(step):5.2f} ms"
              f" x {steps / len(arrays):.2f} steps per word", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["master-small", "master"],
                        help="bundled names, weights files or config names (random weights); see above")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--images", type=int, default=64, help="images timed at each batch size above 1")
    parser.add_argument("--batch1-images", type=int, default=8, help="single images timed at batch 1")
    parser.add_argument("--repeats", type=int, default=6, help="interleaved timed rounds at batch 1 (half above)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--crops", type=Path, default=TRAIN,
                        help="labels.tsv folder the timed crops come from (default IIIT5K/train, which the bundled "
                             "model trained on: its readings are surer there, and bf16-checked reads fewer again)")
    parser.add_argument("--no-bf16", action="store_true", help="leave out the OpenVINO bf16 paths")
    parser.add_argument("--levers", action="store_true", help="time ONNX Runtime options on the bundled model")
    parser.add_argument("--exports", metavar="DIR", help="keep the exports here and reuse them in later runs")
    parser.add_argument("--calibration", default="auto",
                        help="int8 static convolutions calibrated on these images (auto: IIIT5K/train), or none")
    args = parser.parse_args()
    CROPS[0] = args.crops
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_name()} ({os.cpu_count()} cores visible), load average at the start {os.getloadavg()[0]:.2f}")
    tmp = args.exports or tempfile.mkdtemp(prefix="masterocr-runtime-bench-")
    os.makedirs(tmp, exist_ok=True)
    try:
        calibration = calibration_source(tmp) if args.calibration == "auto" else (
            None if args.calibration == "none" else [args.calibration])
        (levers if args.levers else table)(args, tmp, calibration)
    finally:
        if not args.exports:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
