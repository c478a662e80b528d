"""How much of the bundled model's encoder can be int8 without changing a token? A selective int8 search.

The full `--int8` export (every convolution statically int8, MatMul dynamic) reads master-small at batch 1 in
about a third of the fp32 time but changes about 2% of the test words' tokens. This script looks for the
convolutions whose int8 form changes nothing, choosing ONLY on a training split (IIIT5K/train by default):

 1. calibrate once (256 IIIT5K/train images, MinMax, the export's settings; cached);
 2. sensitivity: each convolution quantized alone, the relative error it puts into the encoder's outputs
    (the decoder's memory keys/values) on --probe training images, and its share of the fp32 encoder time
    (ONNX Runtime's profiler);
 3. order the convolutions by error per millisecond saved, and find the longest prefix of that order whose
    int8 encoder (the decoder step stays fp32) gives fp32's tokens on every word of the selection set
    (binary search, then confirmed);
 4. time fp32, the selection and the full int8 encoder at batch 1 (`--threads`, interleaved rounds, best
    kept), and, measured only, count the words of IIIT5K/test and SVT/test whose tokens the selection changes.

    python benchmarks/int8_select.py --threads 1              # search with one thread
    python benchmarks/int8_select.py --threads 2 --exports DIR # reuse the exports and the calibration cache

Prints the chosen convolutions (ONNX node names of encoder.onnx) so the result can be rebuilt.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import zlib
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def selection_images(rec, root: Path, limit: int = 0, seed: int = 0) -> list[np.ndarray]:
    lines = (root / "labels.tsv").read_text(encoding="utf-8").splitlines()
    if limit:
        lines = random.Random(seed).sample(lines, min(limit, len(lines)))
    return [rec.preprocess(str(root / line.split("\t")[0])) for line in lines]


def quantize(fp32: Path, out: Path, nodes: list[str], cache: Path, calibration: np.ndarray) -> None:
    """Static QDQ int8 of the given Conv nodes only (the export's settings), calibration from `cache`."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = [calibration[i: i + 32] for i in range(0, len(calibration), 32)]

        def get_next(self):
            return {"images": self.batches.pop(0)} if self.batches else None

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                    nodes_to_quantize=nodes, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    calibration_cache_path=str(cache))


def conv_times(path: Path, images: list[np.ndarray], threads: int) -> dict[str, float]:
    """ms per image of each Conv node of an fp32 encoder at batch 1 (ONNX Runtime's profiler; fused names
    map back to the node they start from)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.enable_profiling = True
    so.profile_file_prefix = str(path.parent / "profile")
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    for x in images:
        session.run(None, {"images": x[None]})
    events = json.load(open(session.end_profiling()))
    graph = onnx.load(str(path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    by_name = {node.name: node for node in graph.node}
    times = {node.name: 0.0 for node in graph.node if node.op_type == "Conv"}

    def conv_of(name: str) -> str | None:
        """The Conv a profiled kernel runs: ORT's NCHWc pass renames a Conv (+ the Relu/Add fused into it)
        after the last node it absorbed, without the "node_" prefix."""
        node = by_name.get(name) or by_name.get(f"node_{name}")
        while node is not None and node.op_type != "Conv":
            node = next((producer[i] for i in node.input if i in producer), None)
        return None if node is None else node.name

    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["args"].get("op_name") == "Conv":
            conv = conv_of(e["name"][: -len("_kernel_time")].removesuffix("_nchwc"))
            if conv in times:
                times[conv] += e["dur"] / 1000 / len(images)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="master-small")
    parser.add_argument("--selection", default=str(DATA / "IIIT5K" / "train"), help="a TRAINING split")
    parser.add_argument("--probe", type=int, default=128, help="training images for the per-convolution errors")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--exports", metavar="DIR", help="keep the exports and calibration cache here")
    parser.add_argument("--test", nargs="*", default=[str(DATA / "IIIT5K" / "test"), str(DATA / "SVT" / "test")])
    args = parser.parse_args()

    import masterocr
    from masterocr.export import export_model
    from masterocr.export.quantize import calibration_images, refuse_test_split
    from masterocr.runtime import SessionOptions
    from masterocr.runtime.graphs import make_session

    refuse_test_split(args.selection)
    tmp = Path(args.exports or tempfile.mkdtemp(prefix="masterocr-int8-select-"))
    tmp.mkdir(parents=True, exist_ok=True)
    fp32_dir = tmp / "fp32"
    if not (fp32_dir / "encoder.onnx").is_file():
        export_model(args.model, fp32_dir)
    encoder = fp32_dir / "encoder.onnx"
    options = SessionOptions(threads=args.threads)
    rec = masterocr.load(fp32_dir, options=options)
    fp32_encoder = rec.encoder
    calibration = calibration_images([str(DATA / "IIIT5K" / "train")], rec.metadata, 256)
    cache = tmp / "calibration.cache"
    print(f"model {args.model}; {args.threads} thread(s); load average {os.getloadavg()[0]:.2f}", flush=True)

    def encoder_session(nodes: list[str]):
        out = tmp / f"enc-{len(nodes)}-{zlib.crc32(' '.join(nodes).encode())}.onnx"
        if not out.is_file():
            quantize(encoder, out, nodes, cache, calibration)
        return make_session(out, options)

    def tokens(session, images: list[np.ndarray]) -> list[np.ndarray]:
        rec.encoder = session
        out = []
        for i in range(0, len(images), 64):
            ids = rec.decode(rec.collate(images[i: i + 64]), need_attention=False)[0]
            out += [row[: list(row).index(rec.spec.eos) + 1] if rec.spec.eos in row else row for row in ids]
        return out

    # 2. sensitivity
    import onnx

    convs = [n.name for n in onnx.load(str(encoder)).graph.node if n.op_type == "Conv"]
    every = encoder_session(convs)  # calibrates every convolution's tensors once, into the cache
    probe = np.stack(selection_images(rec, Path(args.selection), args.probe, seed=1))
    ms = conv_times(encoder, list(probe[:16]), args.threads)
    names = rec._memory_outputs
    reference = fp32_encoder.run(names, {"images": probe})
    scores = {}
    start = time.time()
    for conv in convs:
        out = encoder_session([conv]).run(names, {"images": probe})
        error = max(float(np.linalg.norm(a - b) / np.linalg.norm(b)) for a, b in zip(out, reference))
        scores[conv] = error / max(ms[conv], 1e-3)
    order = sorted(convs, key=scores.get)
    print(f"per-convolution errors on {len(probe)} training images in {time.time() - start:.0f} s; fp32 conv time "
          f"{sum(ms.values()):.1f} ms/img", flush=True)

    # 3. the longest harmless prefix on the selection set
    images = selection_images(rec, Path(args.selection))
    rec.encoder = fp32_encoder
    want = tokens(fp32_encoder, images)

    def changed(k: int) -> int:
        got = tokens(encoder_session(order[:k]), images)
        return sum(len(a) != len(b) or (a != b).any() for a, b in zip(got, want))

    full = changed(len(order))
    print(f"all {len(order)} convolutions int8: {full} of {len(images)} selection words change", flush=True)
    low, high = (len(order), len(order)) if full == 0 else (0, len(order))  # changed(low) == 0 < changed(high)
    while high - low > 1:
        mid = (low + high) // 2
        c = changed(mid)
        print(f"  first {mid} convolutions: {c} words change", flush=True)
        low, high = (mid, high) if c == 0 else (low, mid)
    chosen = order[:low]
    saved = sum(ms[c] for c in chosen)
    print(f"chosen: {low} of {len(order)} convolutions ({saved:.1f} of {sum(ms.values()):.1f} ms of fp32 conv time "
          f"at batch 1): {chosen}", flush=True)

    # 4. timing at batch 1 and test agreement (measured only)
    variants = {"fp32 encoder": fp32_encoder, f"int8 {low} convs": encoder_session(chosen), "int8 all convs": every}
    if low == len(order):
        del variants["int8 all convs"]
    timed = images[:16]
    best = {k: float("inf") for k in variants}
    for _ in range(args.rounds):
        for key, session in variants.items():
            rec.encoder = session
            t = time.perf_counter()
            for x in timed:
                rec.decode(x[None], need_attention=False)
            best[key] = min(best[key], (time.perf_counter() - t) / len(timed))
    print(f"batch 1, encoder + fp32 decoder step, {args.threads} thread(s), load {os.getloadavg()[0]:.2f}: "
          + ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in best.items()), flush=True)
    for root in args.test:
        if not (Path(root) / "labels.tsv").is_file():
            continue
        test = selection_images(rec, Path(root))
        ref = tokens(fp32_encoder, test)
        for key in list(variants)[1:]:
            got = tokens(variants[key], test)
            diff = sum(len(a) != len(b) or (a != b).any() for a, b in zip(got, ref))
            print(f"  {Path(root).parent.name}/{Path(root).name}: {key}: {diff} of {len(test)} words change tokens",
                  flush=True)


if __name__ == "__main__":
    main()
