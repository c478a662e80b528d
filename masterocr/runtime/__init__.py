"""The torch-free runtime: read images with an exported model (masterocr.export) on ONNX Runtime.

Needs only onnxruntime, NumPy and Pillow; imports neither torch nor masterocr.models (a test enforces it).

    rec = masterocr.load("exports/master-small")       # or masterocr.runtime.load(...)
    rec.read("word.png").text
"""

from __future__ import annotations

import os

from masterocr.runtime.graphs import ExportFolderError, SessionOptions

_DEVICES = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def is_export_folder(path: str | os.PathLike | None) -> bool:
    """Whether `path` names a folder (exports are folders; weights are files or bundled names)."""
    return path is not None and os.path.isdir(path)


def providers_for(device: str) -> list[str]:
    """ONNX Runtime execution providers for a device name ("cpu", "cuda", "cuda:N")."""
    kind = str(device).split(":")[0]
    if kind not in _DEVICES:
        raise ValueError(f"device {device!r}: the runtime runs on {', '.join(_DEVICES)}")
    if kind == "cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise ValueError(f"device {device!r}: this onnxruntime has no CUDA execution provider "
                             "(install onnxruntime-gpu)")
        index = str(device).split(":")[1] if ":" in str(device) else "0"
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return list(_DEVICES[kind])


def load(folder: str | os.PathLike, device: str = "cpu", decode_method: str | None = None,
         beam_width: int | None = None, keep_aspect: bool | None = None, batch_size: int = 32,
         width: int | None = None, threads: int | None = None, precision: str | None = None,
         options: SessionOptions | None = None, refine_iters: int | None = None, orientation: str | None = None,
         check_margin: float | None = None):
    """An OnnxRecognizer for an export folder. `precision`: None or the export's own (fp32 or int8 graphs);
    an fp32 export also reads in "bf16" or "bf16-checked" (OpenVINO on the CPU; `check_margin` sets how close a
    call sends an image back to fp32). See OnnxRecognizer for the other arguments."""
    from masterocr.runtime.recognizer import DEFAULT_CHECK_MARGIN, OnnxRecognizer

    if options is None:
        options = SessionOptions(threads=threads, providers=providers_for(device))
    return OnnxRecognizer(folder, decode_method=decode_method, beam_width=beam_width, keep_aspect=keep_aspect,
                          batch_size=batch_size, width=width, options=options, refine_iters=refine_iters,
                          orientation=orientation, precision=precision,
                          check_margin=DEFAULT_CHECK_MARGIN if check_margin is None else check_margin)


__all__ = ["ExportFolderError", "SessionOptions", "is_export_folder", "load", "providers_for"]
