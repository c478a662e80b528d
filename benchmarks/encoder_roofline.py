"""How close the encoder runs to this CPU's fp32 limit, and the largest batch-1 speed-up ONNX Runtime fp32 could show.

Issue 17 asks ORT fp32 at batch 1 for >= 1.5x torch fp32. For `master` at 48x160 the read is mostly the
ResNet-31 encoder: this script counts its multiply-adds (hooks on every Conv2d/Linear while it encodes one image),
times the encoder graph and a whole read (forced word lengths, as benchmarks/runtime.py does for random weights)
in torch fp32 and ONNX Runtime fp32, and the encoder compiled by OpenVINO in f32 when it is installed (another
fp32 kernel library on the same graph). It sets the encoder's GFLOP/s beside two references on the same threads:
a large fp32 GEMM in torch and a large MatMul in ONNX Runtime. The ceiling printed last is torch's whole read
over ORT's encoder alone: the ratio ORT would reach if its decoding cost nothing. Then, for attention models, what
ORT's decoding may cost for 1.5x against its floor: each batch-1 decoder step reads all of the step graph's fp32
weights once, timed as a torch sum over as many floats.

Paths are interleaved, one warm-up, best of --repeats rounds of --images images each (a busy machine slows all
alike).

    python benchmarks/encoder_roofline.py                    # master at 48x160, random weights, 2 threads
    python benchmarks/encoder_roofline.py --model master-small --exports /tmp/exports
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import length_histogram  # noqa: E402
from runtime import cpu_name, ort_reader, prepare, time_paths, torch_reader  # noqa: E402


def encoder_flops(model, images: torch.Tensor) -> float:
    """Floating-point operations (2 per multiply-add) of the convolutions and linear layers of one encode()."""
    total = [0]

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total[0] += 2 * output.numel() * k
        else:
            total[0] += 2 * output.numel() * module.in_features

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    hooks = [m.register_forward_hook(count) for m in layers]
    with torch.no_grad():
        model.encode(images)
    for h in hooks:
        h.remove()
    return float(total[0])


def gemm_references(threads: int, n: int = 1536) -> dict[str, float]:
    """GFLOP/s of an n x n x n fp32 matrix product in torch and in ONNX Runtime (best of 10)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    a, b = np.random.default_rng(0).random((2, n, n), dtype=np.float32)
    info = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "abc"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm", info[:2], info[2:])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                   .SerializeToString(), so, providers=["CPUExecutionProvider"])
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    runs = {"torch GEMM": lambda: ta @ tb, "ORT MatMul": lambda: session.run(None, {"a": a, "b": b})}
    out = {}
    for name, run in runs.items():
        run()
        best = min(_seconds(run) for _ in range(10))
        out[name] = 2 * n ** 3 / best / 1e9
    return out


def weight_read_seconds(path: Path) -> tuple[float, float]:
    """-> (MB of the graph's fp32 weights, best seconds of a torch sum over that many floats): the least a batch-1
    decoder step can cost, since each step reads every weight once."""
    import onnx

    count = sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)
    floats = torch.ones(count)
    floats.sum()
    return 4 * count / 1e6, min(_seconds(floats.sum) for _ in range(20))


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="master", help="config name (random weights) or bundled name")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=4, help="random images per timed round")
    parser.add_argument("--repeats", type=int, default=8, help="interleaved timed rounds")
    parser.add_argument("--exports", metavar="DIR", help="keep the exports here (as benchmarks/runtime.py does)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import masterocr

    tmp = args.exports or tempfile.mkdtemp(prefix="masterocr-roofline-")
    os.makedirs(tmp, exist_ok=True)
    m = prepare(args.model, tmp, None)
    torch_rec = masterocr.load(m.weights)
    ort_rec = masterocr.load(m.fp32, threads=args.threads)
    model = torch_rec.model.eval()
    shape = (1, int(ort_rec.metadata["in_channels"]), *ort_rec.img_size)
    rng = np.random.default_rng(0)
    images = [rng.standard_normal(shape, dtype=np.float32) for _ in range(args.images)]
    flops = encoder_flops(model, torch.from_numpy(images[0]))

    hist, source = length_histogram(25)
    mean_length = round(sum(k * v for k, v in hist.items()) / sum(hist.values()))
    forced = np.array([mean_length]) if m.random_weights else None
    torch_read = torch_reader(torch_rec, torch.from_numpy(forced) if forced is not None else None, False)
    ort_read = ort_reader(ort_rec, forced)

    def torch_encoder(x):  # what the encoder graph computes: memory and every layer's cross-attention K/V
        with torch.no_grad():
            model.init_cache(model.encode(torch.from_numpy(x).contiguous(memory_format=torch.channels_last)))

    paths = {
        "torch encoder": torch_encoder,
        "ORT encoder": lambda x: ort_rec.encoder.run(ort_rec._memory_outputs, {"images": x}),
        "torch read": torch_read,
        "ORT read": ort_read,
    }
    if importlib.util.find_spec("openvino") is not None:  # another fp32 kernel library on the same graph
        import openvino

        core = openvino.Core()
        compiled = core.compile_model(core.read_model(str(Path(m.fp32) / "encoder.onnx")), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
            "INFERENCE_NUM_THREADS": args.threads})
        request = compiled.create_infer_request()
        paths["OpenVINO f32 encoder"] = lambda x: request.infer({"images": x})
    totals, _ = time_paths(paths, images, args.repeats)  # interleaved rounds, best total per path
    best = {name: seconds / len(images) for name, seconds in totals.items()}
    refs = gemm_references(args.threads)

    size = "x".join(map(str, ort_rec.img_size))
    print(f"CPU: {cpu_name()}, {args.threads} threads, load average {os.getloadavg()[0]:.2f}; {m.label} {size}, batch 1"
          + (f", forced word length {mean_length} (mean of {source})" if forced is not None else ""))
    print(f"encoder: {flops / 1e9:.2f} GFLOP (convolutions and linear layers)")
    for name in paths:
        rate = f"{flops / best[name] / 1e9:7.1f} GFLOP/s" if "encoder" in name else ""
        print(f"  {name:<21}{1000 * best[name]:8.1f} ms  {rate}")
    for name, rate in refs.items():
        print(f"  {name:<21}{'':>11}{rate:7.1f} GFLOP/s (1536^3 fp32 reference)")
    print(f"ORT / torch: encoder {best['torch encoder'] / best['ORT encoder']:.2f}x, "
          f"whole read {best['torch read'] / best['ORT read']:.2f}x; "
          f"decoding: torch {1000 * (best['torch read'] - best['torch encoder']):.1f} ms, "
          f"ORT {1000 * (best['ORT read'] - best['ORT encoder']):.1f} ms")
    print(f"ceiling (ORT decoding at zero cost): {best['torch read'] / best['ORT encoder']:.2f}x")
    step = Path(m.fp32) / "decoder_step.onnx"
    if forced is not None and step.exists():  # attention models: what decoding may cost for 1.5x, and its floor
        mb, seconds = weight_read_seconds(step)
        steps = int(forced[0]) + 1
        budget = best["torch read"] / 1.5 - best["ORT encoder"]
        print(f"ORT decoding allowed for 1.5x: {1000 * budget:.1f} ms for {steps} steps; each step reads {mb:.1f} MB "
              f"of fp32 weights, {1000 * seconds:.2f} ms for a sum over them ({mb / 1000 / seconds:.1f} GB/s), "
              f"so {steps} steps take at least {1000 * steps * seconds:.1f} ms")


if __name__ == "__main__":
    main()
