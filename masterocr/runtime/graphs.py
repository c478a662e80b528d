"""Open an export folder: find its graphs, read and check their metadata, start ONNX Runtime sessions.

Every failure is an ExportFolderError naming the file: a missing graph, a graph without masterocr metadata,
metadata of another format version or with missing fields, graphs of two different exports side by side, an
opset outside the supported range, inputs/outputs that are not what the metadata's decoding kind needs, or a
file ONNX Runtime cannot load.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from masterocr.reading import ORIENTATIONS
from masterocr.runtime.format import ATTENTION, ENTRY_ROLES, FORMAT, FORMAT_VERSION, GRAPH_FILES, IMAGES, LOGITS, \
    MAX_OPSET, METADATA_KEY, MIN_OPSET, OPTIONAL_ROLES, REQUIRED_BY_DECODING, REQUIRED_FIELDS, ROLES_BY_DECODING, \
    SHARED_FIELDS, TOKENS, step_io


class ExportFolderError(ValueError):
    """An export folder or graph that cannot be used; the message names the file."""


@dataclass
class SessionOptions:
    """How the ONNX Runtime sessions run. threads: intra-op threads (None: ONNX Runtime's default, one per
    core); spinning: let idle pool threads spin (faster on an idle machine, slower on shared cores);
    optimization: "all", "extended", "basic" or "disabled" graph optimisations; providers: execution providers
    (None: CPU)."""

    threads: int | None = None
    spinning: bool = False
    optimization: str = "all"
    providers: list[Any] | None = None
    config: dict[str, str] = field(default_factory=dict)  # extra session config entries


def _ort():
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - a dependency of the runtime
        raise ImportError("the masterocr runtime needs onnxruntime: pip install 'masterocr[onnx]'") from None
    return onnxruntime


def make_session(path: Path, options: SessionOptions):
    """An InferenceSession for one graph; ExportFolderError naming the file when ONNX Runtime refuses it."""
    ort = _ort()
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    if options.optimization not in levels:
        raise ValueError(f"graph optimization {options.optimization!r}: choose one of {', '.join(levels)}")
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[options.optimization]
    if options.threads:
        so.intra_op_num_threads = int(options.threads)
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spinning else "0")
    for key, value in options.config.items():
        so.add_session_config_entry(key, str(value))
    try:
        return ort.InferenceSession(str(path), so, providers=options.providers or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportFolderError(f"{path}: ONNX Runtime cannot load this graph ({message})") from None


def read_metadata(path: Path, session) -> dict:
    """The masterocr metadata of one graph (an open session), checked for format, version and fields."""
    custom = session.get_modelmeta().custom_metadata_map or {}
    if METADATA_KEY not in custom:
        raise ExportFolderError(f"{path}: not a masterocr export (the graph has no {METADATA_KEY!r} metadata)")
    try:
        meta = json.loads(custom[METADATA_KEY])
    except json.JSONDecodeError as e:
        raise ExportFolderError(f"{path}: the {METADATA_KEY!r} metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ExportFolderError(f"{path}: metadata format {meta.get('format') if isinstance(meta, dict) else meta!r}"
                                f" is not {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ExportFolderError(f"{path}: format version {meta.get('format_version')!r}; this runtime reads "
                                f"version {FORMAT_VERSION} (re-export the model with this masterocr)")
    missing = [k for k in REQUIRED_FIELDS + REQUIRED_BY_DECODING.get(meta.get("decoding"), ()) if k not in meta]
    if missing:
        raise ExportFolderError(f"{path}: metadata lacks {', '.join(missing)}")
    opset = meta["opset"]
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportFolderError(f"{path}: opset {opset!r} is not supported (this runtime reads opsets "
                                f"{MIN_OPSET} to {MAX_OPSET}); re-export with --opset {MIN_OPSET}..{MAX_OPSET}")
    return meta


def _check_io(path: Path, session, inputs: list[str], outputs: list[str]) -> None:
    have_in = [i.name for i in session.get_inputs()]
    have_out = [o.name for o in session.get_outputs()]
    if have_in != inputs or not set(outputs) <= set(have_out):
        raise ExportFolderError(f"{path}: the graph's inputs {have_in} / outputs {have_out} are not the "
                                f"{inputs} / {outputs} its metadata describes (mismatched graph)")


@dataclass
class ExportFolder:
    """An opened export: its metadata (the entry graph's, without `role`) and one session per role."""

    folder: Path
    metadata: dict
    sessions: dict[str, Any]
    paths: dict[str, Path]


def find_entry(folder: Path) -> Path:
    for role in ENTRY_ROLES:
        path = folder / GRAPH_FILES[role]
        if path.is_file():
            return path
    names = " or ".join(GRAPH_FILES[r] for r in ENTRY_ROLES)
    raise ExportFolderError(f"{folder}: no {names} in this folder (not a masterocr export; write one with "
                            f"`masterocr export MODEL -o {folder}`)")


def open_export(folder: str | os.PathLike, options: SessionOptions | None = None) -> ExportFolder:
    """Open every graph of an export folder and check that they belong together."""
    folder = Path(folder)
    options = options or SessionOptions()
    if not folder.is_dir():
        raise ExportFolderError(f"{folder}: no such export folder")
    entry = find_entry(folder)
    sessions = {}
    entry_session = make_session(entry, options)
    meta = read_metadata(entry, entry_session)
    decoding = meta["decoding"]
    if decoding not in ROLES_BY_DECODING:
        raise ExportFolderError(f"{entry}: decoding {decoding!r} is not one this runtime replays "
                                f"({', '.join(ROLES_BY_DECODING)}); a newer masterocr may read it")
    if meta.get("orientation", "upright") not in ORIENTATIONS:
        raise ExportFolderError(f"{entry}: metadata orientation {meta['orientation']!r} is not one of "
                                f"{ORIENTATIONS}")
    graphs = meta["graphs"]
    needed, optional = ROLES_BY_DECODING[decoding], OPTIONAL_ROLES.get(decoding, ())
    if not isinstance(graphs, dict) or not set(needed) <= set(graphs) <= set(needed) | set(optional):
        raise ExportFolderError(f"{entry}: metadata lists graphs {graphs!r}; {decoding} decoding needs "
                                f"{', '.join(needed)}" + (f" (and may add {', '.join(optional)})" if optional else ""))
    paths = {}
    for role in [r for r in GRAPH_FILES if r in graphs]:
        path = folder / str(graphs[role])
        if path == entry:
            session, graph_meta = entry_session, meta
        else:
            if not path.is_file():
                raise ExportFolderError(f"{path}: missing: the export's {role} graph (listed in {entry.name}'s "
                                        "metadata) is not in the folder")
            session = make_session(path, options)
            graph_meta = read_metadata(path, session)
        if graph_meta["role"] != role:
            raise ExportFolderError(f"{path}: holds the {graph_meta['role']!r} graph, expected {role!r}")
        different = [k for k in SHARED_FIELDS if graph_meta.get(k) != meta.get(k)]
        if different:
            raise ExportFolderError(f"{path}: does not belong with {entry.name} (mismatched graph: "
                                    f"{', '.join(different)} differ; re-export the whole folder)")
        sessions[role], paths[role] = session, path
    meta = {k: v for k, v in meta.items() if k != "role"}
    if decoding == "autoregressive":
        _check_autoregressive(meta, sessions, paths)
    else:
        _check_io(paths["model"], sessions["model"], [IMAGES], [LOGITS])
    return ExportFolder(folder, meta, sessions, paths)


def _check_autoregressive(meta: dict, sessions: dict, paths: dict) -> None:
    entry = paths["encoder"]
    try:
        io = step_io(meta["decoder"], meta["cache"], int(meta["max_steps"]))
        tokens = meta["tokens"]
        int(tokens["eos"]), int(tokens["bos"]), int(tokens["pad"]), int(meta["decoder"]["num_classes"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ExportFolderError(f"{entry}: metadata describes no decoder this runtime drives (the decoder, its "
                                f"cache layout or the token ids: {type(e).__name__}: {e})") from None
    _check_io(paths["encoder"], sessions["encoder"], [IMAGES], io.memory)
    _check_io(paths["decoder_step"], sessions["decoder_step"], io.step_inputs, io.step_outputs)
    if "refine" in sessions:
        _check_io(paths["refine"], sessions["refine"], [TOKENS, *io.memory], [LOGITS, ATTENTION])


__all__ = ["ExportFolderError", "SessionOptions", "ExportFolder", "open_export", "make_session", "find_entry"]
