"""Evaluation with the field's protocol: metrics, the benchmark table and the batched evaluation loop.

The protocol (masterocr.charset.PROTOCOLS) is applied to both the label and the prediction, as strhub's
test.py does: under "36" both are lower-cased and reduced to [0-9a-z]; samples whose label becomes empty or
longer than `max_length` (25, as the benchmarks do) are dropped. Metrics:

- accuracy: exact match after the protocol (CRNN-Seq2Seq-OCR's "annotation precision");
- 1 - NED per word (ICDAR 2019): NED = ED(pred, gt) / max(len(gt), len(pred)), averaged over words;
- corpus 1 - NED (MASTER-pytorch's "edit distance accuracy"): 1 - sum(ED) / sum(len(gt));
- character precision / recall: longest common subsequence over predicted / label characters, summed over the
  set; char F1, their harmonic mean sum(2 LCS) / sum(len(gt) + len(pred)), is CRNN-Seq2Seq-OCR's "character
  precision" (MindSpore model zoo, crnn_seq2seq_ocr/eval.py: both sums run over the whole set, not per word);
- confidence: the decoder's sequence probability (product of per-step probabilities incl. EOS), averaged;
- label length: mean length of the prediction after the protocol (what strhub's table prints), with the mean
  ground-truth length kept alongside.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from rapidfuzz.distance import LCSseq, Levenshtein

from masterocr.charset import DEFAULT_MAX_LENGTH, get_protocol
from masterocr.data.image import ROTATIONS


# ---- protocol -------------------------------------------------------------------------------------------

def apply_protocol(label: str, protocol: str | Callable[[str], str] = "36",
                   max_length: int | None = DEFAULT_MAX_LENGTH) -> str | None:
    """Normalise a ground-truth label under `protocol`; None when the sample is dropped.

    A sample is dropped when its label is empty after the protocol or longer than `max_length`
    (None or 0: no limit), as the benchmark test sets are filtered.
    """
    fn = get_protocol(protocol) if isinstance(protocol, str) else protocol
    text = fn(label)
    if not text:
        return None
    if max_length and len(text) > max_length:
        return None
    return text


# ---- per-sample metrics ---------------------------------------------------------------------------------

def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions all cost 1)."""
    return Levenshtein.distance(a, b)


def normalized_edit_distance(prediction: str, label: str) -> float:
    """ICDAR 2019 NED: ED / max(len(label), len(prediction)); 0 when both are empty."""
    longest = max(len(prediction), len(label))
    return edit_distance(prediction, label) / longest if longest else 0.0


def common_chars(prediction: str, label: str) -> int:
    """Characters matched in order: the length of the longest common subsequence."""
    return LCSseq.similarity(prediction, label)


@dataclass
class Metrics:
    """Running sums for one set of samples; every reported figure is derived from them, so sets add up."""

    name: str = ""
    num_samples: int = 0
    correct: int = 0
    correct_case_insensitive: int = 0
    ned_sum: float = 0.0            # sum of per-word NED
    edit_distance_sum: int = 0      # sum of ED, for the corpus-level figure
    label_chars: int = 0            # sum of len(label)
    pred_chars: int = 0             # sum of len(prediction)
    common_chars: int = 0           # sum of LCS(prediction, label)
    confidence_sum: float = 0.0
    confidence_count: int = 0       # samples that came with a confidence
    failed: int = 0                 # unreadable images, scored as empty predictions
    dropped: int = 0                # samples removed by the protocol (empty or too long label)
    malformed: int = 0              # label-file lines / LMDB entries that hold no sample (not in `dropped`)

    def add(self, prediction: str, label: str, confidence: float | None = None) -> None:
        """Score one (already protocol-normalised) prediction against its label."""
        ed = edit_distance(prediction, label)
        longest = max(len(prediction), len(label))
        self.num_samples += 1
        self.correct += int(prediction == label)
        self.correct_case_insensitive += int(prediction.lower() == label.lower())
        self.ned_sum += ed / longest if longest else 0.0
        self.edit_distance_sum += ed
        self.label_chars += len(label)
        self.pred_chars += len(prediction)
        self.common_chars += common_chars(prediction, label)
        if confidence is not None:
            self.confidence_sum += float(confidence)
            self.confidence_count += 1

    def merge(self, other: "Metrics") -> "Metrics":
        """Sum of two sets: every figure of the result is the sample-weighted combination."""
        out = Metrics(name=self.name)
        for f in ("num_samples", "correct", "correct_case_insensitive", "ned_sum", "edit_distance_sum",
                  "label_chars", "pred_chars", "common_chars", "confidence_sum", "confidence_count",
                  "failed", "dropped", "malformed"):
            setattr(out, f, getattr(self, f) + getattr(other, f))
        return out

    # Derived figures, as fractions in [0, 1] (NaN when there is nothing to average).
    @property
    def accuracy(self) -> float:
        return self.correct / self.num_samples if self.num_samples else math.nan

    @property
    def accuracy_case_insensitive(self) -> float:
        return self.correct_case_insensitive / self.num_samples if self.num_samples else math.nan

    @property
    def one_minus_ned(self) -> float:
        """1 - NED averaged per word (ICDAR 2019)."""
        return 1.0 - self.ned_sum / self.num_samples if self.num_samples else math.nan

    @property
    def corpus_one_minus_ned(self) -> float:
        """1 - sum(ED) / sum(len(label)), MASTER-pytorch's edit-distance accuracy (may go below 0)."""
        return 1.0 - self.edit_distance_sum / self.label_chars if self.label_chars else math.nan

    @property
    def char_precision(self) -> float:
        return self.common_chars / self.pred_chars if self.pred_chars else math.nan

    @property
    def char_recall(self) -> float:
        return self.common_chars / self.label_chars if self.label_chars else math.nan

    @property
    def char_f1(self) -> float:
        """sum(2 LCS) / sum(len(label) + len(pred)) over the set: CRNN-Seq2Seq-OCR's "character precision"."""
        total = self.pred_chars + self.label_chars
        return 2 * self.common_chars / total if total else math.nan

    @property
    def confidence(self) -> float:
        return self.confidence_sum / self.confidence_count if self.confidence_count else math.nan

    @property
    def label_length(self) -> float:
        """Mean predicted length (the "Label length" column of strhub's table)."""
        return self.pred_chars / self.num_samples if self.num_samples else math.nan

    @property
    def gt_length(self) -> float:
        return self.label_chars / self.num_samples if self.num_samples else math.nan

    def summary(self) -> dict:
        """Derived figures and counts, JSON-ready (NaN becomes None)."""
        def clean(x: float) -> float | None:
            return None if isinstance(x, float) and math.isnan(x) else x

        return {
            "dataset": self.name,
            "num_samples": self.num_samples,
            "accuracy": clean(self.accuracy),
            "accuracy_case_insensitive": clean(self.accuracy_case_insensitive),
            "one_minus_ned": clean(self.one_minus_ned),
            "corpus_one_minus_ned": clean(self.corpus_one_minus_ned),
            "char_precision": clean(self.char_precision),
            "char_recall": clean(self.char_recall),
            "char_f1": clean(self.char_f1),
            "confidence": clean(self.confidence),
            "label_length": clean(self.label_length),
            "gt_length": clean(self.gt_length),
            "failed": self.failed,
            "dropped": self.dropped,
            "malformed": self.malformed,
        }


def score(pairs: Iterable[tuple[str, str] | tuple[str, str, float | None]], protocol: str = "36",
          max_length: int | None = DEFAULT_MAX_LENGTH, name: str = "") -> Metrics:
    """Metrics for raw (prediction, label[, confidence]) pairs: the protocol is applied to both sides."""
    fn = get_protocol(protocol)
    metrics = Metrics(name=name)
    for pair in pairs:
        prediction, label = pair[0], pair[1]
        confidence = pair[2] if len(pair) > 2 else None
        gt = apply_protocol(label, fn, max_length)
        if gt is None:
            metrics.dropped += 1
            continue
        metrics.add(fn(prediction), gt, confidence)
    return metrics


def combine(rows: Sequence[Metrics], name: str = "Combined") -> Metrics:
    """The sample-weighted combination of several sets (the table's Combined row)."""
    total = Metrics(name=name)
    for row in rows:
        total = total.merge(row)
    total.name = name
    return total


# ---- the benchmark table --------------------------------------------------------------------------------

# "Accuracy" and "Char F1" are what CRNN-Seq2Seq-OCR reports as annotation and character precision.
TABLE_COLUMNS = ["Dataset", "# samples", "Accuracy", "1 - NED", "Char F1", "Confidence", "Label length"]


def _table_cells(m: Metrics) -> list[str]:
    def pct(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{100 * x:.2f}"

    length = "n/a" if math.isnan(m.label_length) else f"{m.label_length:.2f}"
    return [m.name, str(m.num_samples), pct(m.accuracy), pct(m.one_minus_ned), pct(m.char_f1),
            pct(m.confidence), length]


def table_rows(rows: Sequence[Metrics], combined: bool = True) -> list[Metrics]:
    """The sets plus, when asked and there is more than one, the sample-weighted Combined row."""
    rows = list(rows)
    return rows + [combine(rows)] if combined and len(rows) > 1 else rows


def format_markdown(rows: Sequence[Metrics], combined: bool = True) -> str:
    """The table papers print (percentages with two decimals), as Markdown."""
    cells = [TABLE_COLUMNS] + [_table_cells(m) for m in table_rows(rows, combined)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(TABLE_COLUMNS))]

    def line(r: list[str]) -> str:
        parts = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        return "| " + " | ".join(parts) + " |"

    sep = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def format_csv(rows: Sequence[Metrics], combined: bool = True) -> str:
    """All derived figures (fractions, not percentages) for each row, as CSV."""
    summaries = [m.summary() for m in table_rows(rows, combined)]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(summaries[0]) if summaries else ["dataset"],
                            lineterminator="\n")
    writer.writeheader()
    for s in summaries:
        writer.writerow({k: "" if v is None else v for k, v in s.items()})
    return out.getvalue()


def to_json(rows: Sequence[Metrics], combined: bool = True, **meta) -> dict:
    """{"meta": ..., "results": [summary per row, Combined last]}; figures are fractions."""
    return {"meta": meta, "results": [m.summary() for m in table_rows(rows, combined)]}


# ---- per-sample predictions -----------------------------------------------------------------------------

@dataclass
class SamplePrediction:
    """One evaluated sample, kept so errors can be read: labels and predictions after the protocol."""

    dataset: str
    file: str
    label: str
    prediction: str
    confidence: float | None
    correct: bool
    error: str | None = None        # why the image could not be read, when it could not


def write_predictions(samples: Iterable[SamplePrediction], path: str | os.PathLike) -> None:
    """Per-sample predictions as TSV: dataset, file, label, prediction, confidence, correct, error."""
    fields = [f.name for f in SamplePrediction.__dataclass_fields__.values()]
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(fields)
        for s in samples:
            row = asdict(s)
            row["confidence"] = "" if s.confidence is None else f"{s.confidence:.6f}"
            row["correct"] = int(s.correct)
            row["error"] = s.error or ""
            writer.writerow([row[k] for k in fields])


# ---- offline prediction files (`masterocr metrics`) -----------------------------------------------------

def _text_lines(path: Path, malformed: list[str] | None) -> list[tuple[int, str]]:
    """(line number, text) of a UTF-8 text file, BOM and line ends removed. A line that is not UTF-8 is
    reported in `malformed` (file:line and why) and left out; without a list it is an error."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    out = []
    for n, line in enumerate(raw.splitlines(), 1):
        try:
            out.append((n, line.decode("utf-8")))
        except UnicodeDecodeError as e:
            message = f"{path}:{n}: not UTF-8 (byte 0x{line[e.start:e.start + 1].hex()} at column {e.start + 1})"
            if malformed is None:
                raise ValueError(message) from None
            malformed.append(message)
    return out


def _first_char(lines: list[tuple[int, str]]) -> str:
    return next((line.strip()[0] for _, line in lines if line.strip()), "")


def read_predictions_file(path: str | os.PathLike, malformed: list[str] | None = None
                          ) -> dict[str, tuple[str, float | None]]:
    """file -> (prediction, confidence) from either format.

    MASTER-pytorch's predict_result.json (a .json file, or any file starting with "["): a JSON list of
    {"filename", "result", "pred_score"}. Plain TSV: `file<TAB>prediction[<TAB>confidence]` per line (a
    missing prediction column means an empty reading). Lines that cannot be read (not UTF-8, a confidence that
    is not a number) go to `malformed` (file:line and why) when a list is given, else raise ValueError.
    """
    path = Path(path)
    lines = _text_lines(path, malformed)
    if path.suffix.lower() == ".json" or _first_char(lines) == "[":
        try:
            items = json.loads("\n".join(line for _, line in lines))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); expected "
                             "MASTER-pytorch's predict_result.json, a list of {\"filename\", \"result\"}") from None
        if not isinstance(items, list):
            raise ValueError(f"{path}: JSON holds a {type(items).__name__}, expected a list of "
                             "{\"filename\", \"result\", \"pred_score\"} objects")
        out = {}
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "filename" not in item or "result" not in item:
                raise ValueError(f"{path}: item {i} is not a {{\"filename\", \"result\"}} object: {item!r}"[:300])
            score = item.get("pred_score")
            try:
                confidence = None if score is None else float(score)
            except (TypeError, ValueError):
                raise ValueError(f"{path}: item {i}: pred_score {score!r} is not a number") from None
            out[str(item["filename"])] = (str(item["result"]), confidence)
        return out
    out = {}
    for n, line in lines:
        if not line.strip():
            continue
        parts = line.split("\t")
        if parts[0] in ("file", "filename") and n == 1:
            continue  # a header row
        prediction = parts[1] if len(parts) > 1 else ""
        confidence = None
        if len(parts) > 2 and parts[2].strip():
            try:
                confidence = float(parts[2])
            except ValueError:
                message = f"{path}:{n}: confidence {parts[2]!r} is not a number"
                if malformed is None:
                    raise ValueError(message) from None
                malformed.append(message)
                continue
        out[parts[0]] = (prediction, confidence)
    if not out and malformed and any(m.startswith(f"{path}:") for m in malformed):
        raise ValueError(f"{path}: no prediction could be read (first problem: "
                         f"{next(m for m in malformed if m.startswith(f'{path}:'))})")
    if out and not any("\t" in line for _, line in lines):
        raise ValueError(f"{path}: no line holds a tab: expected file<TAB>prediction lines (TSV) or "
                         "MASTER-pytorch's predict_result.json")
    return out


def read_labels_file(path: str | os.PathLike, malformed: list[str] | None = None) -> dict[str, str]:
    """file -> label from MASTER-pytorch's label.txt (one {"ImageFile", "Label"} JSON object a line)
    or a labels.tsv (`file<TAB>label`). Lines that do not fit go to `malformed` (file:line and why) when a
    list is given, else raise ValueError."""
    path = Path(path)
    lines = _text_lines(path, malformed)
    json_lines = _first_char(lines) == "{"
    out = {}
    for n, line in lines:
        if not line.strip():
            continue
        problem = None
        if json_lines:
            try:
                obj = json.loads(line)
                out[str(obj["ImageFile"])] = str(obj["Label"])
            except (json.JSONDecodeError, KeyError, TypeError):
                problem = f"expected {{\"ImageFile\": ..., \"Label\": ...}}, got {line[:80]!r}"
        elif "\t" not in line:
            problem = f"expected file<TAB>label, got {line[:80]!r}"
        else:
            file, label = line.split("\t", 1)
            if "\t" in label:
                problem = "more than one tab (a label cannot hold a tab; expected file<TAB>label)"
            else:
                out[file] = label
        if problem is not None:
            if malformed is None:
                raise ValueError(f"{path}:{n}: {problem}")
            malformed.append(f"{path}:{n}: {problem}")
    if not out and malformed and any(m.startswith(f"{path}:") for m in malformed):
        raise ValueError(f"{path}: no label could be read (first problem: "
                         f"{next(m for m in malformed if m.startswith(f'{path}:'))})")
    return out


@dataclass
class FileScore:
    metrics: Metrics
    missing: list[str] = field(default_factory=list)     # labelled files with no prediction
    unmatched: list[str] = field(default_factory=list)   # predictions with no label
    malformed: list[str] = field(default_factory=list)   # lines of either file that could not be read (file:line: why)


def score_files(predictions_path: str | os.PathLike, labels_path: str | os.PathLike, protocol: str = "raw",
                max_length: int | None = None) -> FileScore:
    """Score a prediction file against a label file.

    Files are matched by their exact name, else by base name (MASTER-pytorch's test.py writes base names).
    A labelled file without a prediction counts as an empty prediction, as MASTER-pytorch's script does.
    """
    malformed: list[str] = []
    predictions = read_predictions_file(predictions_path, malformed)
    labels = read_labels_file(labels_path, malformed)
    by_base: dict[str, list[str]] = {}
    for key in predictions:
        by_base.setdefault(os.path.basename(key), []).append(key)
    fn = get_protocol(protocol)
    metrics = Metrics(name=Path(labels_path).parent.name or str(labels_path))
    used: set[str] = set()
    missing = []
    for file, label in labels.items():
        key = file if file in predictions else None
        if key is None:
            candidates = by_base.get(os.path.basename(file), [])
            key = candidates[0] if len(candidates) == 1 else None
        gt = apply_protocol(label, fn, max_length)
        if key is not None:
            used.add(key)
        if gt is None:
            metrics.dropped += 1
            continue
        if key is None:
            missing.append(file)
            metrics.add("", gt, None)
            continue
        prediction, confidence = predictions[key]
        metrics.add(fn(prediction), gt, confidence)
    unmatched = [k for k in predictions if k not in used]
    metrics.malformed = len(malformed)
    return FileScore(metrics, missing, unmatched, malformed)


# ---- the evaluation loop --------------------------------------------------------------------------------

_SPLIT_NAMES = {"test", "tests", "val", "valid", "validation", "eval", "evaluation", "train", "images"}


def benchmark_name(path: str | os.PathLike) -> str:
    """A short row name for a dataset path: its folder name, or its parent's for split folders
    (…/IIIT5K/test -> "IIIT5K"; an LMDB tree's …/evaluation/SVT -> "SVT")."""
    p = Path(os.path.normpath(os.fspath(path)))
    if p.name in ("labels.tsv", "labels.txt", "labels.jsonl", "gt.txt", "data.mdb") or glob.has_magic(p.name):
        p = p.parent  # a glob of shards (…/FSNS/test/test-*) is named by its folder
    if p.name.lower() in _SPLIT_NAMES and p.parent.name:
        return p.parent.name
    return p.name or str(p)


def open_benchmarks(roots: str | os.PathLike | Sequence[str | os.PathLike],
                    holdout: tuple[float, int, str | None] | None = None,
                    errors: list[str] | None = None) -> list[tuple[str, object]]:
    """(row name, dataset) for every benchmark under `roots`: a labels.tsv folder or an LMDB is one row, an
    LMDB tree gives one row per LMDB. Labels are kept raw; the protocol is applied by `evaluate`.
    holdout=(fraction, seed, group) keeps only each source's held-out part, as a training config's `holdout` key
    picks it (rows are named "<name> held-out"). With an `errors` list, a root that cannot be opened or a
    source without a single sample is reported there (message naming it) and left out, instead of raising:
    one broken benchmark does not cost the others."""
    from masterocr.data.datasets import build_dataset, split_held_out

    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    sources: list[tuple[str, object]] = []
    for root in roots:
        # No transform (evaluate applies its own, with rotation), raw labels, no length limit.
        try:
            dataset = build_dataset(root, transform=None, charset=None, max_length=None)
        except (ValueError, OSError) as e:
            if errors is None:
                raise
            errors.append(str(e) if os.fspath(root) in str(e) else f"{root}: {e}")
            continue
        if holdout is not None:
            dataset = split_held_out(dataset, *holdout, held_out=True)  # (fraction, seed, group)
        for path, source in dataset.sources:
            if errors is not None and len(source.labels) == 0:
                part = " in its held-out part" if holdout is not None else ""
                errors.append(f"{path}: holds no samples{part} ({getattr(source, 'report', 'nothing read')})")
            else:
                sources.append((path, source))
    names = [benchmark_name(path) for path, _ in sources]
    if len(set(names)) < len(names):  # ambiguous short names: fall back to the paths
        names = [os.fspath(path) for path, _ in sources]
    if holdout is not None:
        names = [f"{name} held-out" for name in names]
    return [(name, dataset) for name, (_, dataset) in zip(names, sources)]


class _EvalImages:
    """Indexable view over chosen samples of a dataset: decodes and transforms one image per item.

    Returns (tensor or None, (error message, reason) or None, position). A DataLoader with workers may read it.
    """

    def __init__(self, dataset, indices: Sequence[int], transform):
        self.dataset, self.indices, self.transform = dataset, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        from masterocr.data.image import ImageError

        try:
            data, _, name = self.dataset.raw(self.indices[position])
        except ImageError as e:  # missing file or LMDB key: the message names the sample
            return None, (str(e), getattr(e, "reason", "cannot read")), position
        try:
            return self.transform(data, name=name), None, position
        except ImageError as e:  # the message names the sample
            message = str(e) if str(e).startswith(name) else f"{name}: {e}"
            return None, (message, getattr(e, "reason", "cannot decode")), position


def _collate_eval(batch):
    return batch  # a list of (tensor | None, error | None, position); stacked by the loop


@dataclass
class EvalResult:
    """Per-set metrics (table rows, Combined derived), per-sample predictions and run settings."""

    rows: list[Metrics]
    samples: list[SamplePrediction]
    protocol: str = "36"
    rotation: int = 0
    max_length: int | None = DEFAULT_MAX_LENGTH
    errors: list[str] = field(default_factory=list)
    error_reasons: list[str] = field(default_factory=list)  # why each of `errors` happened, in a few words
    lexicon: str | None = None      # the lexicon file predictions were snapped to, if any
    orientation: str = "upright"

    @property
    def combined(self) -> Metrics:
        return combine(self.rows)

    def markdown(self) -> str:
        return format_markdown(self.rows)

    def to_json(self, **meta) -> dict:
        extra = {"lexicon": self.lexicon} if self.lexicon else {}
        if self.orientation != "upright":
            extra["orientation"] = self.orientation
        return to_json(self.rows, protocol=self.protocol, rotation=self.rotation, max_length=self.max_length,
                       **extra, **meta)


def _as_recognizer(model, device=None, decode_method=None):
    """A Recognizer for `model` (an nn.Module is wrapped; a Recognizer, or the runtime's OnnxRecognizer, is
    moved/configured as asked)."""
    import torch

    from masterocr.recognizer import Recognizer

    if not isinstance(model, torch.nn.Module) and hasattr(model, "predict_batch"):
        rec = model
        if device is not None and not isinstance(rec, Recognizer) and str(device) != "cpu":
            raise ValueError(f"device {device!r}: choose the device when loading an export folder")
        if isinstance(rec, Recognizer) and device is not None and torch.device(device) != rec.device:
            rec.to(device)
        if decode_method is not None and decode_method != rec.decode_method:
            import copy

            rec = copy.copy(rec)  # same model and lock; the caller's recognizer keeps its method
            rec.decode_method = decode_method
        return rec
    return Recognizer(model, device=device or next(model.parameters()).device,
                      decode_method=decode_method or "greedy")


def evaluate(model, datasets, protocol: str = "36", batch_size: int = 64, rotation: int = 0,
             device=None, max_length: int | None = DEFAULT_MAX_LENGTH, decode_method: str | None = None,
             sort_by_aspect: bool | None = None, num_workers: int = 0, progress: bool = True,
             log=None, lexicon=None) -> EvalResult:
    """Evaluate a model (nn.Module or Recognizer) on benchmarks under the field's protocol.

    datasets: a root path or list of roots (see open_benchmarks), or (name, dataset) pairs of datasets
    with `raw(i)`, `labels` and `image_size(i)` (masterocr.data.datasets). Labels go through `protocol`
    (samples whose label is empty or longer than `max_length` afterwards are dropped), predictions too.
    rotation (0/90/180/270) rotates every image counter-clockwise before resizing (PARSeq's robustness test).
    Samples are batched, ordered by aspect ratio when the resize keeps it (sort_by_aspect=None: automatic),
    so similar shapes share a batch. An unreadable image is reported (log, default stderr), counted in
    `failed` and scored as an empty prediction: benchmark figures never silently exclude a sample.
    The model may also be the runtime's OnnxRecognizer (an export folder read with ONNX Runtime).
    lexicon: a masterocr.lexicon.Lexicon (or a path to one): each reading is replaced by the nearest word of
    its crop's lexicon (the lexicon-constrained protocol, e.g. SVT-50); a crop without a lexicon is an error.
    A recognizer with orientation "auto" reads each image in its four turns and keeps the most confident.
    """
    from torch.utils.data import DataLoader

    if int(rotation) % 360 not in ROTATIONS:
        raise ValueError(f"rotation {rotation}: choose one of {ROTATIONS}")
    fn = get_protocol(protocol)
    if lexicon is not None and not hasattr(lexicon, "snap"):
        from masterocr.lexicon import Lexicon

        lexicon = Lexicon.load(lexicon)
    rec = _as_recognizer(model, device, decode_method)
    transform = rec.make_transform(int(rotation) % 360)
    if sort_by_aspect is None:
        sort_by_aspect = rec.keep_aspect
    if log is None:
        def log(message: str) -> None:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)  # prints above an active progress bar
    if isinstance(datasets, (str, os.PathLike)) or (
            isinstance(datasets, (list, tuple)) and datasets and isinstance(datasets[0], (str, os.PathLike))):
        datasets = open_benchmarks(datasets)

    rows, samples, errors, reasons = [], [], [], []
    for name, dataset in datasets:
        metrics = Metrics(name=name)
        report = getattr(dataset, "report", None)
        if report is not None:  # entries the dataset left out: failed ones (malformed, damaged) apart from empty labels
            malformed = getattr(report, "num_malformed", report.dropped.get("malformed", 0))
            metrics.malformed += malformed
            metrics.dropped += report.num_dropped - malformed
        keep, labels = [], []
        for i, label in enumerate(dataset.labels):
            gt = apply_protocol(label, fn, max_length)
            if gt is None:
                metrics.dropped += 1
            else:
                keep.append(i)
                labels.append(gt)
        if lexicon is not None:
            for i in keep:  # every crop needs its lexicon: fail before reading, naming the first that has none
                try:
                    lexicon.words_for(dataset.name(i))
                except KeyError as e:
                    raise ValueError(f"{name}: {e.args[0]}") from None
        order = list(range(len(keep)))
        if sort_by_aspect:
            def aspect(pos: int) -> float:
                size = dataset.image_size(keep[pos])
                if size is None:
                    return 0.0
                w, h = size
                return h / w if int(rotation) % 180 else w / h
            order.sort(key=aspect)
        view = _EvalImages(dataset, [keep[p] for p in order], transform)
        loader = DataLoader(view, batch_size=max(1, batch_size), shuffle=False, num_workers=num_workers,
                            collate_fn=_collate_eval)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(view), desc=name, unit="img", file=sys.stderr, leave=False,
                       dynamic_ncols=True)
        for batch in loader:
            good = [(t, pos) for t, _, pos in batch if t is not None]
            readings = rec.predict_batch([t for t, _ in good], need_attention=False) if good else []
            by_pos = {pos: r for (_, pos), r in zip(good, readings)}
            for _, error, pos in batch:
                index = keep[order[pos]]
                gt = labels[order[pos]]
                file = dataset.name(index)
                if error is not None:
                    metrics.failed += 1
                    error, reason = error
                    errors.append(error)
                    reasons.append(reason)
                    log(f"{name}: unreadable image, scored as an empty prediction: {error}")
                    metrics.add("", gt, None)
                    samples.append(SamplePrediction(name, file, gt, "", None, False, error))
                    continue
                r = by_pos[pos]
                pred = fn(r.text) if lexicon is None else lexicon.snap(r.text, file, fn)
                metrics.add(pred, gt, r.confidence)
                samples.append(SamplePrediction(name, file, gt, pred, r.confidence, pred == gt))
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        rows.append(metrics)
    return EvalResult(rows, samples, str(protocol), int(rotation) % 360, max_length, errors, reasons,
                      getattr(lexicon, "source", None), getattr(rec, "orientation", "upright"))


def write_results(results: Sequence[EvalResult], output_dir: str | os.PathLike, **meta) -> list[Path]:
    """results.json (all runs), results.csv (one line per set and run, with its rotation) and the per-sample
    predictions (predictions.tsv; predictions_rot<deg>.tsv for rotated runs). Returns the paths written."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    runs = [r.to_json(**meta) for r in results]
    path = out / "results.json"
    path.write_text(json.dumps(runs if len(runs) > 1 else runs[0], indent=2, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    written.append(path)
    lines = []
    for r in results:
        for i, line in enumerate(format_csv(r.rows).splitlines()):
            if i == 0:
                if not lines:
                    lines.append("protocol,rotation," + line)
                continue
            lines.append(f"{r.protocol},{r.rotation}," + line)
    path = out / "results.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    written.append(path)
    for r in results:
        path = out / ("predictions.tsv" if r.rotation == 0 else f"predictions_rot{r.rotation}.tsv")
        write_predictions(r.samples, path)
        written.append(path)
    return written
