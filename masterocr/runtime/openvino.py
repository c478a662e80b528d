"""OpenVINO as a second engine for the exported graphs: bf16 on CPUs with bf16 units (AMX, AVX512-BF16).

ONNX Runtime's CPU provider has no bf16 convolutions or matrix products; OpenVINO compiles the same ONNX files
with bf16 kernels, which on an AMX Xeon run the image encoder 4-5x faster than fp32. Only the graph that does the
heavy work (the encoder, or the single graph of CTC and parallel models) goes to OpenVINO; decoder steps stay on
ONNX Runtime, whose per-call overhead is the lower one for such small graphs.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np

INSTALL_HINT = "pip install openvino (or pip install 'masterocr[openvino]')"


def _openvino():
    try:
        import openvino
    except ImportError:
        raise ModuleNotFoundError(f"bf16 reading on the runtime needs OpenVINO, which is not installed: "
                                  f"{INSTALL_HINT}", name="openvino") from None
    return openvino


_CORE = []


def _core():
    """One OpenVINO Core for the process, never released. Each Core's CPU plugin installs an alternate signal
    stack (about 20 KB) on the thread that creates it; with a Core per graph, the test suite died of a kernel
    SIGSEGV in the next signal handled on that thread (a child's SIGCHLD) once earlier graphs were gone: the
    thread's signal stack pointed at memory no longer there. One Core installs it once and keeps it."""
    if not _CORE:
        _CORE.append(_openvino().Core())
    return _CORE[0]


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 natively here (otherwise a bf16 hint runs in fp32)."""
    return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


class OpenVinoGraph:
    """One exported graph compiled by OpenVINO for the CPU in bf16, called like an ONNX Runtime session:
    run(output_names, feeds) -> list of arrays. Thread safe: one infer request, used under a lock (OpenVINO's
    requests are not re-entrant; its own threads parallelise each call), and outputs are copied out of the
    request's buffers, which the next call overwrites."""

    def __init__(self, path: str | Path, threads: int | None = None):
        from masterocr.runtime.graphs import ExportFolderError

        if not cpu_has_bf16():
            warnings.warn("this CPU has no bf16 units OpenVINO uses: the bf16 graph runs in fp32", stacklevel=3)
        config = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = _core()
        try:
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses with multi-line reports
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportFolderError(f"{path}: OpenVINO cannot compile this graph ({message})") from None
        self.ports = {o.get_any_name(): o for o in self.compiled.outputs}
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            results = self._request.infer(feeds)
            return [np.array(results[self.ports[name]], copy=True) for name in (output_names or self.ports)]


__all__ = ["OpenVinoGraph", "cpu_has_bf16", "INSTALL_HINT"]
