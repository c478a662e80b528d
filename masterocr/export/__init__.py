"""torch -> ONNX: `export_model(weights, out_dir)` writes an export folder the torch-free runtime reads.

Each model family states how it exports in one file, `export/<family>.py`, registered in EXPORTERS by the model
config's `name` (what each writes is in its docstring):

    master, parseq   encoder + decoder step with a key/value cache (+ a refinement graph for PARSeq's NAR and
                     cloze passes)
    trba, seq2seq    encoder + decoder step over the recurrent state (TPS and BiLSTMs inside the encoder)
    vitstr           one graph: images -> logits of every position
    crnn             one graph: images -> CTC frame logits (dynamic width)

An exporter receives the loaded model and the metadata common to every graph, writes its graphs as plain ONNX
files and returns {role: path}; this module then writes the metadata into each graph, runs the ONNX checker
and, with int8=True, quantizes them (export/quantize.py). The folder format is described in
masterocr/runtime/format.py. A family without an exporter is refused with the list of those that have one.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from masterocr.runtime.format import DEFAULT_OPSET, FORMAT, FORMAT_VERSION, GRAPH_FILES, MAX_OPSET, METADATA_KEY, \
    MIN_OPSET

# model config name -> "module:function"(model, metadata, out_dir, opset, cache) -> {role: path}
EXPORTERS: dict[str, str] = {
    "master": "masterocr.export.master:export_master",
    "parseq": "masterocr.export.parseq:export_parseq",
    "vitstr": "masterocr.export.vitstr:export_vitstr",
    "crnn": "masterocr.export.crnn:export_crnn",
    "trba": "masterocr.export.trba:export_trba",
    "seq2seq": "masterocr.export.trba:export_trba",
}
FORMATS = ("onnx",)


class ExportError(ValueError):
    """A model that cannot be exported, or an export that failed; the message says which and why."""


@dataclass
class ExportResult:
    folder: Path
    graphs: dict[str, Path]  # role -> file
    metadata: dict

    def sizes(self) -> dict[str, int]:
        """File size in bytes of each graph."""
        return {role: path.stat().st_size for role, path in self.graphs.items()}


def exporter_for(family: str):
    """The export function of a model family, or ExportError saying which families export."""
    if family not in EXPORTERS:
        raise ExportError(f"model {family!r} cannot be exported: no exporter is registered for it "
                          f"(exportable models: {', '.join(sorted(EXPORTERS))}); a family adds one in "
                          f"masterocr/export/<family>.py")
    module_name, func_name = EXPORTERS[family].split(":")
    return getattr(importlib.import_module(module_name), func_name)


def write_metadata(path: Path, metadata: dict) -> None:
    """Store `metadata` as JSON under the "masterocr" key of the graph's metadata_props, in place."""
    import onnx

    model = onnx.load(str(path))
    props = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata, ensure_ascii=False, sort_keys=True))
    model.producer_name = "masterocr"
    model.producer_version = str(metadata.get("masterocr_version", ""))
    onnx.save(model, str(path))


def read_graph_metadata(path: Path) -> dict:
    """The masterocr metadata of a graph file (ExportError naming the file when it has none)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ExportError(f"{path}: not a masterocr export graph (no {METADATA_KEY!r} metadata)")
    return json.loads(props[METADATA_KEY])


def check_graph(path: Path) -> None:
    """The ONNX checker (full check, shapes inferred) on a saved graph; ExportError naming the file."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # onnx.checker.ValidationError, shape inference errors
        raise ExportError(f"{path}: the ONNX checker rejects the exported graph: {e}") from None


def export_model(name_or_path: str | os.PathLike, out_dir: str | os.PathLike, format: str = "onnx",
                 int8: bool = False, opset: int = DEFAULT_OPSET, cache: str | None = None,
                 calibration: Sequence[str | os.PathLike] | None = None, calibration_count: int = 256,
                 use_ema: bool = True, keep_aspect: bool | None = None, int8_ops: str = "all") -> ExportResult:
    """Export weights (bundled name, .safetensors, .ckpt) to `out_dir` (created; its graphs are replaced).

    int8: quantize the graphs (export/quantize.py); `calibration` names image folders/datasets from a
    training split for the static quantization of convolutions (none: convolutions stay fp32); int8_ops
    "conv" quantizes only those convolutions (MatMul/Gemm/LSTM stay fp32). With int8, the
    source may also be an fp32 export folder: its graphs are quantized into `out_dir` without torch export.
    cache: the decoder step's self-attention cache layout of a transformer decoder ("concat", the default, or
    "fixed", see runtime/format.py); models without a key/value cache refuse a layout.
    """
    import torch

    from masterocr import __version__
    from masterocr.decoding import default_refine_iters
    from masterocr.models.layers import fold_batchnorm
    from masterocr.recognizer import stored_preprocessing
    from masterocr.weights import load_model, resolve_model_config

    if format not in FORMATS:
        raise ExportError(f"export format {format!r}: choose one of {', '.join(FORMATS)}")
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported: the runtime reads opsets {MIN_OPSET} to {MAX_OPSET}")
    if int8 and int8_ops == "conv" and not calibration:
        raise ExportError("--int8-ops conv quantizes only the convolutions, statically: give calibration images "
                          "from a training split (--calibration)")
    if calibration:
        from masterocr.export.quantize import refuse_test_split

        for root in calibration:
            refuse_test_split(root)
    if os.path.isdir(name_or_path):
        if not int8:
            raise ExportError(f"{name_or_path}: already an export folder (give weights, or --int8 to quantize it)")
        return _quantize_folder(Path(name_or_path), Path(out_dir), calibration, calibration_count, int8_ops)
    model, model_cfg = load_model(name_or_path, device="cpu", use_ema=use_ema)
    family = str(model_cfg.get("name", ""))
    export = exporter_for(family)
    model.eval()
    fold_batchnorm(model)  # the graphs compute what the torch Recognizer computes, one op fewer per conv
    stored = stored_preprocessing(name_or_path)
    if keep_aspect is None:
        keep_aspect = bool(stored.get("keep_aspect", False))
    from masterocr.data.image import ImageTransform

    defaults = ImageTransform(1, 1)
    metadata: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_name": Path(str(name_or_path)).stem,  # a bundled name, or the file's stem
        "family": family,
        "masterocr_version": __version__,
        "charset": model.tokenizer.charset,
        "max_label_length": int(model.tokenizer.max_length),
        "num_classes": int(model.num_classes),
        "img_size": [int(v) for v in model.img_size],
        "in_channels": int(model.in_channels),
        "keep_aspect": bool(keep_aspect),
        "pad": str(stored.get("pad", "zero")),
        "width_step": int(stored.get("width_step", 0)),
        "orientation": str(stored.get("orientation", "upright")),  # the reading mode the weights were trained for
        "mean": float(defaults.mean),
        "std": float(defaults.std),
        "decoding_defaults": {"method": "greedy", "beam_width": 5, "refine_iters": default_refine_iters(model)},
        "precision": "fp32",
        "opset": int(opset),
        "model_config": resolve_model_config(model_cfg),
        "export_id": uuid.uuid4().hex,
    }
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name in GRAPH_FILES.values():  # never leave a graph of an earlier export beside the new ones
        (folder / name).unlink(missing_ok=True)
    with torch.no_grad():
        graphs = export(model, metadata, folder, int(opset), cache)  # fills in the family's metadata fields
    metadata["graphs"] = {role: path.name for role, path in graphs.items()}
    if int8:
        from masterocr.export.quantize import quantize_export

        metadata["precision"] = "int8"
        metadata["quantization"] = quantize_export(graphs, metadata, calibration, calibration_count, int8_ops)
    return _finish(folder, graphs, metadata)


def _finish(folder: Path, graphs: dict[str, Path], metadata: dict) -> ExportResult:
    for role, path in graphs.items():
        write_metadata(path, {**metadata, "role": role})
        check_graph(path)
    return ExportResult(folder, graphs, metadata)


def _quantize_folder(src: Path, out_dir: Path, calibration, calibration_count: int, ops: str) -> ExportResult:
    """An int8 copy of an fp32 export folder (new export id, so its graphs never pass for the source's)."""
    import shutil

    from masterocr.export.quantize import quantize_export
    from masterocr.runtime.graphs import find_entry

    try:
        metadata = read_graph_metadata(find_entry(src))
    except ValueError as e:
        raise ExportError(str(e)) from None
    if metadata.get("precision") != "fp32":
        raise ExportError(f"{src}: holds {metadata.get('precision')} graphs; quantize an fp32 export")
    for role, name in metadata["graphs"].items():
        if not (src / name).is_file():
            raise ExportError(f"{src / name}: missing: the export's {role} graph is not in the folder")
        if read_graph_metadata(src / name).get("export_id") != metadata["export_id"]:
            raise ExportError(f"{src / name}: does not belong with the other graphs of {src}")
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = {k: v for k, v in metadata.items() if k != "role"}
    metadata.update(precision="int8", export_id=uuid.uuid4().hex)
    # Quantized in a scratch folder and moved in only when done, so a failure never leaves fp32 copies
    # that would pass for the int8 export.
    with tempfile.TemporaryDirectory(prefix=".masterocr-int8-", dir=out_dir) as tmp:
        graphs = {role: Path(tmp) / name for role, name in metadata["graphs"].items()}
        for role, name in metadata["graphs"].items():
            shutil.copyfile(src / name, graphs[role])
        metadata["quantization"] = quantize_export(graphs, metadata, calibration, calibration_count, ops)
        _finish(Path(tmp), graphs, metadata)
        final = {role: out_dir / path.name for role, path in graphs.items()}
        for role, path in graphs.items():
            os.replace(path, final[role])
    return ExportResult(out_dir, final, metadata)


__all__ = ["EXPORTERS", "FORMATS", "ExportError", "ExportResult", "export_model", "exporter_for"]
