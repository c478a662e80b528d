"""Datasets: LMDB archives (standard and MASTER-pytorch layouts), LMDB trees, and folders read from a label file.

Every dataset yields `(image, label, name)`: the image through `transform` (a (C, H, W) tensor with an
ImageTransform; an RGB PIL image when transform is None), the label after filtering, and a name that points
back at the sample (the file path, or "<lmdb dir>:<index>"). An image that cannot be read yields None after a
warning naming it; `collate` drops those, so one bad file never stops a DataLoader.

Labels are filtered once, when a dataset is opened: normalised for the charset (charset.normalize_label),
then dropped when empty, outside the charset, or longer than max_length. Every drop is counted by reason in
a FilterReport and logged; charset=None keeps raw labels (for evaluation).

Formats read:
  * LMDB, standard layout (MJSynth/SynthText/benchmark archives): `num-samples`, `image-%09d`, `label-%09d`,
    indices 1-based; MASTER-pytorch layout: `nSamples`, `image-{i}`, `transcript-{i}`. Auto-detected.
  * a tree: every directory holding data.mdb below a root, concatenated (strhub's data/train/real/...).
  * a label file, paths relative to the file's folder (or `image_root`): labels.tsv (`path<TAB>label`),
    MASTER-pytorch txt (`path,label`, split at the first comma; a tab when the file uses tabs) and JSON lines
    (`{"ImageFile": path, "Label": label}`).
  * FSNS TFRecords (masterocr.data.fsns): a shard, a folder of shards (one source) or a glob of them, told
    apart from other files by the CRC of the first record's header, whatever their names.
"""

from __future__ import annotations

import bisect
import glob
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import lmdb
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset

from ..charset import load_charset, normalize_label
from .image import ImageError, ImageTransform, load_image
from .tfrecord import is_tfrecord

logger = logging.getLogger(__name__)

# layout name -> (count key, image key format, label key format); indices are 1-based in both.
LMDB_LAYOUTS = {
    "standard": ("num-samples", "image-%09d", "label-%09d"),
    "master": ("nSamples", "image-%d", "transcript-%d"),
}
# File names recognised as a folder's label file, in order of preference.
LABEL_FILE_NAMES = ("labels.tsv", "labels.jsonl", "labels.txt", "gt.txt")
LABEL_FORMATS = ("tsv", "txt", "jsonl")
# Why a label filter leaves a well-formed sample out; every other drop reason is an entry that failed.
FILTER_REASONS = ("empty", "out_of_charset", "too_long")
# After this many unreadable images a dataset stops logging each one (it still counts them).
MAX_LOGGED_FAILURES = 50
_EXAMPLES_PER_REASON = 3


# ---- label filtering ------------------------------------------------------------------------------------

@dataclass
class FilterReport:
    """How many labels a source held, kept and dropped (by reason), with a few examples of each drop."""

    source: str
    total: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, reason: str, example: str) -> None:
        self.dropped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < _EXAMPLES_PER_REASON:
            shown.append(example)

    @property
    def num_dropped(self) -> int:
        return sum(self.dropped.values())

    @property
    def num_malformed(self) -> int:
        """Entries that held no usable sample (malformed lines, missing keys, damaged records), as opposed to
        labels a filter left out on purpose (FILTER_REASONS)."""
        return sum(n for reason, n in self.dropped.items() if reason not in FILTER_REASONS)

    def __str__(self) -> str:
        text = f"{self.source}: kept {self.kept} of {self.total}"
        if self.dropped:
            reasons = ", ".join(f"{n} {reason} (e.g. {self.examples[reason][0]!r})"
                                for reason, n in sorted(self.dropped.items()))
            text += f"; dropped {self.num_dropped}: {reasons}"
        return text


def merge_reports(reports: Iterable[FilterReport], source: str = "all") -> FilterReport:
    """Sum several reports into one (for a concatenated dataset)."""
    total = FilterReport(source)
    for r in reports:
        total.total += r.total
        total.kept += r.kept
        total.dropped.update(r.dropped)
        for reason, shown in r.examples.items():
            room = _EXAMPLES_PER_REASON - len(total.examples.setdefault(reason, []))
            total.examples[reason].extend(shown[:max(room, 0)])
    return total


class LabelFilter:
    """Normalises a label for a charset and decides whether to keep it.

    charset=None keeps labels as they are (only empty labels and, if max_length is set, long ones are dropped).
    With a charset, labels are normalised (NFC; lower-cased for a case-insensitive charset) when `normalize`,
    optionally stripped of all whitespace, and dropped if they hold a character outside the charset.
    """

    def __init__(self, charset: str | Sequence[str] | None = None, max_length: int | None = None,
                 normalize: bool = True, remove_whitespace: bool = False):
        self.charset = load_charset(charset) if charset is not None else None
        self._allowed = frozenset(self.charset) if self.charset is not None else None
        self.max_length = max_length
        self.normalize = normalize
        self.remove_whitespace = remove_whitespace

    def __call__(self, label: str) -> tuple[str | None, str | None]:
        """-> (label to keep, None) or (None, reason for dropping)."""
        if self.charset is not None and self.normalize:
            label = normalize_label(label, self.charset)
        if self.remove_whitespace:
            label = "".join(label.split())
        if not label:
            return None, "empty"
        if self._allowed is not None and not self._allowed.issuperset(label):
            return None, "out_of_charset"
        if self.max_length is not None and len(label) > self.max_length:
            return None, "too_long"
        return label, None


# ---- base dataset ---------------------------------------------------------------------------------------

class TextImageDataset(Dataset):
    """A list of (key, label) kept after filtering; subclasses fetch a sample's image bytes by key."""

    def __init__(self, source: str, transform: Callable | None, label_filter: LabelFilter | None):
        self.source = source
        self.transform = transform
        self.label_filter = label_filter or LabelFilter()
        self.keys: list = []
        self.labels: list[str] = []
        self.report = FilterReport(source)
        self.num_failed = 0  # unreadable images met by this process (each DataLoader worker counts its own)

    # subclasses -------------------------------------------------------------------------------------------
    def _read_bytes(self, key) -> bytes:
        raise NotImplementedError

    def _name(self, key) -> str:
        raise NotImplementedError

    def _sample_id(self, key) -> str:
        """The sample's identity inside its source, independent of how the source path was spelled."""
        raise NotImplementedError

    # shared -----------------------------------------------------------------------------------------------
    def _add(self, key, label: str, where: str, line: int) -> None:
        """Filter one label and keep it with its key, or count why it was dropped (at where:line)."""
        self.report.total += 1
        kept, reason = self.label_filter(label)
        if kept is None:
            self.report.drop(reason, f"{where}:{line}: {label!r}")
        else:
            self.report.kept += 1
            self.keys.append(key)
            self.labels.append(kept)

    def _malformed(self, where: str, why: str) -> None:
        self.report.total += 1
        self.report.drop("malformed", f"{where}: {why}")
        if self.report.dropped["malformed"] <= MAX_LOGGED_FAILURES:
            logger.warning("%s: skipping malformed entry (%s)", where, why)

    def _log_report(self) -> None:
        if self.report.dropped:
            logger.warning("%s", self.report)
        else:
            logger.info("%s", self.report)

    def __len__(self) -> int:
        return len(self.keys)

    def name(self, index: int) -> str:
        return self._name(self.keys[index])

    def sample_id(self, index: int) -> str:
        return self._sample_id(self.keys[index])

    def keep_only(self, indices: Iterable[int]) -> None:
        """Keep these samples (in this order), drop the rest; used to split off a held-out part."""
        indices = list(indices)
        self.keys = [self.keys[i] for i in indices]
        self.labels = [self.labels[i] for i in indices]

    def raw(self, index: int) -> tuple[bytes, str, str]:
        """(encoded image bytes, label, name) without decoding; raises ImageError naming a missing image."""
        key = self.keys[index]
        return self._read_bytes(key), self.labels[index], self._name(key)

    def image_size(self, index: int) -> tuple[int, int] | None:
        """(width, height) from the image header only (cheap), or None when the image is unreadable."""
        try:
            with Image.open(io.BytesIO(self._read_bytes(self.keys[index]))) as img:
                return img.size
        except Exception:  # missing, empty or not an image: the caller just has no size for it
            return None

    def _warn_failed(self, name: str, error: Exception) -> None:
        self.num_failed += 1
        if self.num_failed <= MAX_LOGGED_FAILURES:
            logger.warning("skipping unreadable image: %s", error if str(error).startswith(name) else f"{name}: {error}")
            if self.num_failed == MAX_LOGGED_FAILURES:
                logger.warning("%s: further unreadable images are skipped without a message", self.source)

    def __getitem__(self, index: int):
        key = self.keys[index]
        name = self._name(key)
        try:
            data = self._read_bytes(key)
            if self.transform is None:
                image = load_image(data, name=name)
            else:  # the image pipeline names the sample in its errors; a custom transform gets the bytes only
                image = self.transform(data, name=name) if isinstance(self.transform, ImageTransform) \
                    else self.transform(data)
        except ImageError as e:
            self._warn_failed(name, e)
            return None
        return image, self.labels[index], name


# ---- LMDB -----------------------------------------------------------------------------------------------

def _open_lmdb(path: str) -> lmdb.Environment:
    """Read-only, lock-free environment (safe to open in every DataLoader worker)."""
    return lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False, max_readers=256)


# LMDB refuses to open the same files twice in one process, so environments are shared: one per data file
# (keyed by device and inode, so a re-written LMDB at the same path gets a fresh one) and per process.
_ENVIRONMENTS: dict[tuple[int, int], tuple[int, lmdb.Environment]] = {}


def _file_id(path: str) -> tuple[int, int]:
    st = os.stat(os.path.join(path, "data.mdb"))
    return st.st_dev, st.st_ino


def is_lmdb_open(path: str) -> bool:
    """Whether this process holds an environment for `path` (opened by reading an image)."""
    entry = _ENVIRONMENTS.get(_file_id(path))
    return entry is not None and entry[0] == os.getpid()


def lmdb_environment(path: str, file_id: tuple[int, int] | None = None) -> lmdb.Environment:
    """The shared read-only environment for `path` in this process, opened on first use.

    After a fork (DataLoader workers) the parent's environment is released in the child and a new one opened,
    as LMDB requires; the parent's stays untouched. `file_id` (from _file_id) saves a stat per call.
    """
    key, pid = file_id or _file_id(path), os.getpid()
    entry = _ENVIRONMENTS.get(key)
    if entry is not None and entry[0] == pid:
        return entry[1]
    if entry is not None:
        entry[1].close()  # inherited through fork: release this process's copy only
    env = _open_lmdb(path)
    _ENVIRONMENTS[key] = (pid, env)
    return env


def close_lmdb_environments() -> None:
    """Close every environment held by this process (e.g. before deleting LMDB files in a long session)."""
    for env in [env for _, env in _ENVIRONMENTS.values()]:
        env.close()  # an environment inherited through fork is only released in this process
    _ENVIRONMENTS.clear()


def detect_lmdb_layout(txn: lmdb.Transaction, path: str = "") -> str:
    """'standard' (num-samples) or 'master' (nSamples); ValueError naming `path` otherwise."""
    for layout, (count_key, _, _) in LMDB_LAYOUTS.items():
        if txn.get(count_key.encode()) is not None:
            return layout
    raise ValueError(f"{path}: LMDB has neither 'num-samples' (standard layout) nor 'nSamples' (MASTER layout)")


class LmdbDataset(TextImageDataset):
    """One LMDB directory. Labels are read and filtered at construction; the environment for images is opened
    lazily in the process that reads them (each DataLoader worker opens its own after the fork)."""

    def __init__(self, path: str | os.PathLike, transform: Callable | None = None,
                 label_filter: LabelFilter | None = None, layout: str | None = None):
        path = os.fspath(path)
        if os.path.basename(path) == "data.mdb":
            path = os.path.dirname(path) or "."
        if not os.path.isfile(os.path.join(path, "data.mdb")):
            raise FileNotFoundError(f"{path}: not an LMDB directory (no data.mdb)")
        super().__init__(path, transform, label_filter)
        self.path = path
        # Labels are read now through a short-lived environment (or the one this process already has open);
        # images are read later through lmdb_environment(), opened in whichever process reads them.
        self._file_id = _file_id(path)
        shared = self._file_id in _ENVIRONMENTS  # open here or inherited: reuse it, LMDB forbids a second
        try:
            env = lmdb_environment(path, self._file_id) if shared else _open_lmdb(path)
        except lmdb.Error as e:  # random bytes, an empty or truncated data.mdb
            raise ValueError(f"{path}: not a readable LMDB ({type(e).__name__}: {e})") from None
        try:
            with env.begin() as txn:
                if layout is not None and layout not in LMDB_LAYOUTS:
                    raise ValueError(f"unknown LMDB layout {layout!r}; choose one of {sorted(LMDB_LAYOUTS)}")
                self.layout = layout or detect_lmdb_layout(txn, path)
                count_key, self._image_key, label_key = LMDB_LAYOUTS[self.layout]
                raw_count = txn.get(count_key.encode())
                try:
                    count = int(raw_count)
                except (TypeError, ValueError):
                    raise ValueError(f"{path}: {count_key!r} is {raw_count!r}, not a number") from None
                entries = env.stat()["entries"]
                if count < 0:
                    raise ValueError(f"{path}: {count_key!r} is {count}, not a sample count")
                if count > entries:  # a few missing keys are reported one by one below; this many is a broken count
                    raise ValueError(f"{path}: {count_key!r} is {count}, but the LMDB holds only {entries} entries "
                                     f"(an image and a label per sample)")
                for index in range(1, count + 1):
                    raw_label = txn.get((label_key % index).encode())
                    if raw_label is None:
                        self._malformed(f"{path}:{index}", f"no key {label_key % index!r}")
                        continue
                    try:
                        label = raw_label.decode("utf-8")
                    except UnicodeDecodeError:
                        self._malformed(f"{path}:{index}", "label is not UTF-8")
                        continue
                    self._add(index, label, path, index)
        except lmdb.Error as e:
            raise ValueError(f"{path}: not a readable LMDB ({type(e).__name__}: {e})") from None
        finally:
            if not shared:
                env.close()
        self._log_report()

    def _read_bytes(self, key: int) -> bytes:
        try:
            env = lmdb_environment(self.path, self._file_id)
            with env.begin() as txn:
                data = txn.get((self._image_key % key).encode())
        except (OSError, lmdb.Error) as e:
            raise ImageError(f"{self._name(key)}: cannot read LMDB ({e})", "cannot read") from None
        if data is None:
            raise ImageError(f"{self._name(key)}: no key {self._image_key % key!r}", "missing LMDB entry")
        return bytes(data)

    def _name(self, key: int) -> str:
        return f"{self.path}:{key}"

    def _sample_id(self, key: int) -> str:
        return f"{os.path.basename(os.path.normpath(self.path))}:{key}"


def find_lmdb_dirs(root: str | os.PathLike) -> list[str]:
    """Every directory at or below `root` that holds a data.mdb, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(os.fspath(root), followlinks=True):
        dirnames.sort()
        if "data.mdb" in filenames:
            found.append(dirpath)
    return sorted(found)


# ---- label files ----------------------------------------------------------------------------------------

def detect_label_format(path: str) -> str:
    """'tsv', 'jsonl' or 'txt' from the extension, else from the first non-empty line."""
    ext = os.path.splitext(path)[1].lower()
    if ext == ".tsv":
        return "tsv"
    if ext in (".jsonl", ".json"):
        return "jsonl"
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                return "jsonl" if line.lstrip().startswith("{") else "txt"
    return "txt"


def _parse_label_file(path: str, fmt: str):
    """Yield (line number, image path or None, label or reason it is malformed). A line that is not UTF-8 is
    malformed on its own: the other lines are still read."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # UTF-8 byte-order mark
    lines: list[str | None] = []  # None: not UTF-8 (why in `undecodable`)
    undecodable: dict[int, str] = {}
    for lineno, line in enumerate(raw.splitlines(), 1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            lines.append(None)
            undecodable[lineno] = f"not UTF-8 (byte 0x{line[e.start:e.start + 1].hex()} at column {e.start + 1})"
    separator = "\t"
    if fmt == "txt":
        # MASTER-pytorch: `name,label`, split at the first comma. Accept tabs for files that use them.
        first = next((line for line in lines if line is not None and line.strip()), "")
        separator = "\t" if "\t" in first else ","
    for lineno, line in enumerate(lines, 1):
        if line is None:
            yield lineno, None, undecodable[lineno]
            continue
        if not line.strip():
            continue
        if fmt == "jsonl":
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, None, f"not JSON ({e.msg})"
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("ImageFile"), str) \
                    or not isinstance(obj.get("Label"), str):
                yield lineno, None, 'expected {"ImageFile": str, "Label": str}'
                continue
            yield lineno, obj["ImageFile"], obj["Label"]
        else:
            if separator not in line:
                yield lineno, None, f"no {'tab' if separator == chr(9) else 'comma'} between path and label"
                continue
            image, label = line.split(separator, 1)
            if "\t" in label and fmt == "tsv":
                yield lineno, None, "more than one tab (a label cannot hold a tab; expected path<TAB>label)"
                continue
            yield lineno, image.strip(), label


class LabelFileDataset(TextImageDataset):
    """Images listed in a label file; paths are relative to `image_root` (default: the file's folder)."""

    def __init__(self, label_file: str | os.PathLike, transform: Callable | None = None,
                 label_filter: LabelFilter | None = None, fmt: str | None = None,
                 image_root: str | os.PathLike | None = None):
        label_file = os.fspath(label_file)
        if not os.path.isfile(label_file):
            raise FileNotFoundError(f"{label_file}: no such label file")
        super().__init__(label_file, transform, label_filter)
        self.label_file = label_file
        self.format = fmt or detect_label_format(label_file)
        if self.format not in LABEL_FORMATS:
            raise ValueError(f"unknown label format {self.format!r}; choose one of {LABEL_FORMATS}")
        self.image_root = os.fspath(image_root) if image_root is not None else os.path.dirname(label_file)
        for lineno, image, label in _parse_label_file(label_file, self.format):
            if image is None:
                self._malformed(f"{label_file}:{lineno}", label)
            elif not image:
                self._malformed(f"{label_file}:{lineno}", "empty image path")
            else:
                self._add(os.path.join(self.image_root, image), label, label_file, lineno)
        self._log_report()

    def _read_bytes(self, key: str) -> bytes:
        try:
            with open(key, "rb") as f:
                return f.read()
        except OSError as e:
            reason = {FileNotFoundError: "no such file", IsADirectoryError: "not a file",
                      PermissionError: "permission denied"}.get(type(e), "cannot read")
            raise ImageError(f"{key}: {e.strerror or e}", reason) from None

    def _name(self, key: str) -> str:
        return key

    def _sample_id(self, key: str) -> str:
        return os.path.relpath(key, self.image_root).replace(os.sep, "/")


# ---- concatenation --------------------------------------------------------------------------------------

class MultiSourceDataset(ConcatDataset):
    """Several named sources read as one dataset; keeps each source's size and filter report."""

    def __init__(self, sources: Sequence[tuple[str, TextImageDataset]]):
        if not sources:
            raise ValueError("no datasets given")
        super().__init__([dataset for _, dataset in sources])
        self.names = [name for name, _ in sources]

    @property
    def sources(self) -> list[tuple[str, TextImageDataset]]:
        return list(zip(self.names, self.datasets))

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(dataset) for name, dataset in self.sources}

    @property
    def reports(self) -> list[FilterReport]:
        return [dataset.report for dataset in self.datasets]

    @property
    def report(self) -> FilterReport:
        return merge_reports(self.reports)

    @property
    def labels(self) -> list[str]:
        return [label for dataset in self.datasets for label in dataset.labels]

    @property
    def num_failed(self) -> int:
        return sum(dataset.num_failed for dataset in self.datasets)

    def locate(self, index: int) -> tuple[TextImageDataset, int]:
        """Global index -> (source dataset, index inside it)."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        which = bisect.bisect_right(self.cumulative_sizes, index)
        start = self.cumulative_sizes[which - 1] if which else 0
        return self.datasets[which], index - start

    def source_of(self, index: int) -> str:
        dataset, _ = self.locate(index)
        return self.names[self.datasets.index(dataset)]

    def raw(self, index: int) -> tuple[bytes, str, str]:
        dataset, local = self.locate(index)
        return dataset.raw(local)

    def name(self, index: int) -> str:
        dataset, local = self.locate(index)
        return dataset.name(local)

    def image_size(self, index: int) -> tuple[int, int] | None:
        dataset, local = self.locate(index)
        return dataset.image_size(local)

    def summary(self) -> str:
        lines = [str(report) if report.source == name else f"{name}: {report}"
                 for name, report in zip(self.names, self.reports)]
        if len(lines) > 1:
            lines.append(str(self.report))
        return "\n".join(lines)


# ---- opening paths --------------------------------------------------------------------------------------

def _find_label_file(folder: str) -> str | None:
    for name in LABEL_FILE_NAMES:
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def _open_sources(path: str | os.PathLike, transform: Callable | None, label_filter: LabelFilter,
                  image_root: str | os.PathLike | None = None,
                  label_format: str | None = None) -> list[tuple[str, TextImageDataset]]:
    """Detect what `path` is and open it as one or more named sources."""
    path = os.fspath(path)
    if not os.path.exists(path) and glob.has_magic(path):
        return _open_glob(path, transform, label_filter, image_root, label_format)
    if os.path.isfile(path):
        if os.path.basename(path) == "data.mdb":
            return [(os.path.dirname(path), LmdbDataset(path, transform, label_filter))]
        if is_tfrecord(path):
            from .fsns import FsnsDataset  # fsns builds on this module

            return [(path, FsnsDataset(path, transform, label_filter))]
        return [(path, LabelFileDataset(path, transform, label_filter, label_format, image_root))]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    if os.path.isfile(os.path.join(path, "data.mdb")):
        return [(path, LmdbDataset(path, transform, label_filter))]
    label_file = _find_label_file(path)
    if label_file is not None:
        return [(path, LabelFileDataset(label_file, transform, label_filter, label_format, image_root))]
    lmdb_dirs = find_lmdb_dirs(path)
    if lmdb_dirs:
        return [(os.path.join(path, os.path.relpath(d, path)), LmdbDataset(d, transform, label_filter))
                for d in lmdb_dirs]
    from .fsns import FsnsDataset, shards_in

    shards = shards_in(path)
    if shards:
        return [(path, FsnsDataset(shards, transform, label_filter, source=path))]
    raise ValueError(f"{path}: not a dataset (no data.mdb, no {'/'.join(LABEL_FILE_NAMES)}, "
                     "no LMDB directory below it, and no TFRecord shard in it)")


def _open_glob(pattern: str, transform: Callable | None, label_filter: LabelFilter,
               image_root: str | os.PathLike | None, label_format: str | None) -> list[tuple[str, TextImageDataset]]:
    """A glob: TFRecord shards that all match make one source (FSNS's `test/test-*`); anything else is
    opened path by path."""
    matches = sorted(glob.glob(pattern))
    if not matches:
        raise FileNotFoundError(f"{pattern}: no file matches")
    if all(os.path.isfile(m) and is_tfrecord(m) for m in matches):
        from .fsns import FsnsDataset

        return [(pattern, FsnsDataset(matches, transform, label_filter, source=pattern))]
    sources = []
    for match in matches:
        sources.extend(_open_sources(match, transform, label_filter, image_root, label_format))
    return sources


def open_dataset(path: str | os.PathLike, transform: Callable | None = None,
                 charset: str | Sequence[str] | None = None, max_length: int | None = None,
                 normalize: bool = True, remove_whitespace: bool = False,
                 image_root: str | os.PathLike | None = None, label_format: str | None = None):
    """Open one path: an LMDB directory, a tree of LMDBs, a folder with labels.tsv, a label file
    (labels.tsv, MASTER-pytorch txt or JSON lines), or FSNS TFRecords (a shard, a folder or a glob of shards).
    A tree gives a MultiSourceDataset, anything else a single TextImageDataset. Defaults keep raw labels of
    any length (for inspection and evaluation)."""
    label_filter = LabelFilter(charset, max_length, normalize, remove_whitespace)
    sources = _open_sources(path, transform, label_filter, image_root, label_format)
    if len(sources) == 1 and os.path.normpath(sources[0][0]) == os.path.normpath(os.fspath(path)):
        return sources[0][1]
    return MultiSourceDataset(sources)


def build_dataset(paths: str | os.PathLike | Sequence[str | os.PathLike], transform: Callable | None = None,
                  charset: str | Sequence[str] | None = None, max_length: int | None = 25,
                  normalize: bool = True, remove_whitespace: bool = False,
                  image_root: str | os.PathLike | None = None) -> MultiSourceDataset:
    """Open every path (see open_dataset), flatten trees, and concatenate all sources into one dataset.

    Filtering drops labels that are empty, outside `charset` (after normalisation) or longer than
    `max_length`; the counts per source and reason are logged and kept in `.reports` / `.summary()`.
    charset=None keeps raw labels (max_length still applies unless None).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    label_filter = LabelFilter(charset, max_length, normalize, remove_whitespace)
    sources: list[tuple[str, TextImageDataset]] = []
    for path in paths:
        sources.extend(_open_sources(path, transform, label_filter, image_root))
    dataset = MultiSourceDataset(sources)
    if len(sources) > 1:
        logger.info("%s", dataset.report)
    return dataset


# ---- held-out splits -----------------------------------------------------------------------------------

def holdout_key(sample_id: str, group: str | None = None) -> str:
    """What the held-out hash is taken of: the sample's id, or with `group` (a regular expression) the part of
    the id it matches (its first capture group if it has one), so that every sample of a group (the crops of
    one photo) falls on the same side. An id the expression does not match stays its own group."""
    if not group:
        return sample_id
    match = re.search(group, sample_id)
    if match is None:
        return sample_id
    return match.group(1) if match.re.groups else match.group(0)


def is_held_out(sample_id: str, fraction: float, seed: int = 0, group: str | None = None) -> bool:
    """Whether a sample belongs to the held-out part: a hash of (seed, id or its group) below `fraction` of
    its range.

    Decided per sample, so the training side and the validation side of the same source agree even when
    their label filters keep different samples, and adding samples to a source never moves old ones."""
    key = holdout_key(sample_id, group)
    digest = hashlib.blake2b(f"{seed}\0{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2 ** 64


def parse_holdout(spec, where: str = "holdout") -> tuple[float, int, str | None]:
    """{fraction: f, seed: s, group: regex} (seed defaults to 0, group to none) or a bare fraction ->
    (fraction, seed, group), checked."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        spec = {"fraction": spec}
    spec = dict(spec) if isinstance(spec, Mapping) else spec  # OmegaConf's DictConfig is a Mapping
    if not isinstance(spec, dict) or "fraction" not in spec or set(spec) - {"fraction", "seed", "group"}:
        raise ValueError(f"{where}: holdout must be {{fraction: F, seed: S, group: REGEX}} or a fraction, "
                         f"got {spec!r}")
    try:
        fraction, seed = float(spec["fraction"]), int(spec.get("seed", 0))
    except (TypeError, ValueError):
        raise ValueError(f"{where}: holdout {spec!r} needs a number for fraction and an integer seed") from None
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"{where}: holdout fraction {fraction!r} must be between 0 and 1 (exclusive)")
    group = spec.get("group") or None
    if group is not None:
        try:
            re.compile(str(group))
        except re.error as e:
            raise ValueError(f"{where}: holdout group {group!r} is not a regular expression ({e})") from None
        group = str(group)
    return fraction, seed, group


def split_held_out(dataset: TextImageDataset | MultiSourceDataset, fraction: float, seed: int = 0,
                   group: str | None = None, held_out: bool = True) -> TextImageDataset | MultiSourceDataset:
    """Keep only the held-out part of `dataset` (held_out=True) or only the rest, in place for each source.

    A source's held-out part is about `fraction` of its samples (of its groups, with `group`), chosen by
    is_held_out on the sample's id inside the source (a label file's image path as written, an LMDB's
    '<dir name>:<index>')."""
    fraction, seed, group = parse_holdout({"fraction": fraction, "seed": seed, "group": group},
                                          where="split_held_out")
    parts = dataset.sources if isinstance(dataset, MultiSourceDataset) else [(dataset.source, dataset)]
    for name, part in parts:
        total = len(part)
        part.keep_only(i for i in range(total)
                       if is_held_out(part.sample_id(i), fraction, seed, group) == held_out)
        logger.info("%s: %s %d of %d samples (held-out fraction %g, seed %d%s)", name,
                    "held out" if held_out else "training on", len(part), total, fraction, seed,
                    f", grouped by {group!r}" if group else "")
    if isinstance(dataset, MultiSourceDataset):
        return MultiSourceDataset(parts)  # ConcatDataset's offsets are computed once: rebuild
    return dataset


# ---- batching -------------------------------------------------------------------------------------------

_collate_skipped = 0  # samples dropped by `collate` in this process (each worker counts its own)


def collate(batch: list) -> tuple[torch.Tensor | list, list[str], list[str]]:
    """[(image (C, H, W), label, name) or None] -> (images (B, C, H, W), labels, names), dropping Nones.

    Unreadable samples were already logged by the dataset; the number dropped is added to
    `skipped_in_collate()` and logged here. A batch with no readable sample gives a (0, 0, 0, 0) tensor.
    PIL images (datasets without a transform) are returned as a list.
    """
    good = [item for item in batch if item is not None]
    dropped = len(batch) - len(good)
    if dropped:
        global _collate_skipped
        _collate_skipped += dropped
        logger.warning("batch: dropped %d unreadable of %d samples", dropped, len(batch))
    if not good:
        return torch.zeros((0, 0, 0, 0)), [], []
    images, labels, names = zip(*good)
    if isinstance(images[0], torch.Tensor):
        images = torch.stack(images)  # (B, C, H, W)
    else:
        images = list(images)
    return images, list(labels), list(names)


def skipped_in_collate() -> int:
    """How many unreadable samples `collate` has dropped in this process."""
    return _collate_skipped


# ---- writing LMDB ---------------------------------------------------------------------------------------

def write_lmdb(out_path: str | os.PathLike, samples: Iterable[tuple[bytes, str]], layout: str = "standard",
               overwrite: bool = False, commit_every: int = 1000, map_size: int = 1 << 26) -> int:
    """Write (encoded image bytes, label) pairs as an LMDB in `layout`; returns the number written.

    The LMDB is written to a temporary directory beside `out_path` and renamed into place at the end, so a
    crash never leaves a half-written dataset under the final name. Transactions commit every
    `commit_every` samples; the map grows (doubling) whenever it fills.
    """
    if layout not in LMDB_LAYOUTS:
        raise ValueError(f"unknown LMDB layout {layout!r}; choose one of {sorted(LMDB_LAYOUTS)}")
    out_path = os.path.abspath(os.fspath(out_path)).rstrip(os.sep)
    if os.path.exists(out_path) and not overwrite:
        raise FileExistsError(f"{out_path} already exists (remove it or pass overwrite)")
    count_key, image_key, label_key = LMDB_LAYOUTS[layout]
    parent = os.path.dirname(out_path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out_path) + ".tmp-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the final LMDB gets ordinary permissions
    env = lmdb.open(tmp, map_size=map_size, meminit=False)
    pending: list[tuple[bytes, bytes]] = []

    def commit() -> None:
        while True:
            try:
                with env.begin(write=True) as txn:
                    for key, value in pending:
                        txn.put(key, value)
                break
            except lmdb.MapFullError:
                env.set_mapsize(env.info()["map_size"] * 2)  # the aborted chunk is retried whole
        pending.clear()

    count = 0
    try:
        for image_bytes, label in samples:
            if not isinstance(image_bytes, (bytes, bytearray, memoryview)):
                raise TypeError(f"sample {count + 1}: image must be encoded bytes, got {type(image_bytes).__name__}")
            count += 1
            pending.append(((image_key % count).encode(), bytes(image_bytes)))
            pending.append(((label_key % count).encode(), str(label).encode("utf-8")))
            if len(pending) >= 2 * commit_every:
                commit()
        pending.append((count_key.encode(), str(count).encode()))
        commit()
        env.sync()
        env.close()
        if os.path.exists(out_path):
            shutil.rmtree(out_path) if os.path.isdir(out_path) else os.remove(out_path)
        os.rename(tmp, out_path)
    except BaseException:
        env.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return count
