"""`masterocr data ...`: build LMDB datasets from labelled folders and inspect any dataset."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import random
import statistics
import sys
import time
from collections import Counter

from ..charset import BUILTIN_CHARSETS, charset_names, load_charset, normalize_label
from ..data.datasets import LMDB_LAYOUTS, MultiSourceDataset, open_dataset, write_lmdb
from ..data.image import ImageError, load_image
from ..data.montage import make_montage

GENERIC_NAMES = {"train", "test", "val", "valid", "validation", "labels", "gt", "data", "images", "lmdb"}


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="build and inspect datasets",
                                 description="Build LMDB datasets and inspect datasets of every format.")
    data.set_defaults(func=lambda args: _print_help(data))
    actions = data.add_subparsers(dest="data_command", metavar="ACTION")

    build = actions.add_parser(
        "build", help="write an LMDB from labelled folders, label files, LMDBs or FSNS TFRecords",
        description="Write every SRC (a folder with labels.tsv, a labels.tsv / MASTER-pytorch txt / JSON-lines "
                    "label file, an LMDB, or FSNS TFRecords: a shard, a folder of shards or a quoted glob) into "
                    "one new LMDB at OUT. Unreadable images and damaged records are skipped and listed.")
    build.add_argument("src", nargs="+", help="folder with labels.tsv, a label file, an LMDB, or FSNS shards")
    build.add_argument("out", help="output LMDB directory (must not exist unless --overwrite)")
    build.add_argument("--layout", choices=sorted(LMDB_LAYOUTS), default="standard",
                       help="key layout: standard (num-samples/image-%%09d/label-%%09d) or master "
                            "(nSamples/image-{i}/transcript-{i}); default standard")
    build.add_argument("--image-root", help="folder the label file's image paths are relative to "
                                            "(default: the label file's folder)")
    build.add_argument("--format", dest="label_format", choices=["tsv", "txt", "jsonl"],
                       help="label file format (default: detected)")
    build.add_argument("--charset", help="keep only labels inside this charset (36, 62, 94, fsns, a file or "
                                         "a string), normalised for it; default: keep labels as they are")
    build.add_argument("--max-length", type=int, help="drop labels longer than this")
    build.add_argument("--no-check", action="store_true",
                       help="copy image bytes without decoding them first (faster; bad images stay in)")
    build.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    build.set_defaults(func=run_build)

    inspect = actions.add_parser(
        "inspect", help="counts, charset coverage, label lengths and a montage of samples",
        description="Summarise a dataset (any format open_dataset reads) and draw a montage of samples.")
    inspect.add_argument("path", help="LMDB, LMDB tree, folder with labels.tsv, label file, or FSNS TFRecords "
                                      "(a shard, a folder of shards or a quoted glob)")
    inspect.add_argument("--montage", help="montage PNG to write (default: <dataset name>_montage.png in the "
                                           "current folder)")
    inspect.add_argument("--no-montage", action="store_true", help="do not draw a montage")
    inspect.add_argument("--samples", type=int, default=32, help="images in the montage (default 32)")
    inspect.add_argument("--columns", type=int, default=4, help="montage columns (default 4)")
    inspect.add_argument("--seed", type=int, default=0, help="which random samples to show (default 0)")
    inspect.add_argument("--size-samples", type=int, default=1000,
                         help="images whose width/height are read for size statistics (default 1000)")
    inspect.add_argument("--image-root", help="folder a label file's image paths are relative to")
    inspect.set_defaults(func=run_inspect)

    # The synthetic-data engine adds `data synth ...` when it is installed.
    try:
        synth = importlib.import_module("masterocr.cli.synth")
    except ModuleNotFoundError as e:
        if e.name != "masterocr.cli.synth":
            raise
    else:
        synth.register(actions)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _configure_logging() -> None:
    """Show the data layer's warnings (unreadable images, dropped labels) when run from the command line."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")


def _sources(dataset) -> list[tuple[str, object]]:
    return dataset.sources if isinstance(dataset, MultiSourceDataset) else [(dataset.source, dataset)]


# ---- build ----------------------------------------------------------------------------------------------

def run_build(args) -> int:
    _configure_logging()
    if os.path.exists(args.out) and not args.overwrite:
        print(f"masterocr data build: error: {args.out} already exists (use --overwrite to replace it)",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    opened = [open_dataset(src, charset=args.charset, max_length=args.max_length,
                           image_root=args.image_root, label_format=args.label_format) for src in args.src]
    dataset = opened[0] if len(opened) == 1 else MultiSourceDataset(
        [source for part in opened for source in _sources(part)])
    report = dataset.report
    skipped: list[str] = []

    def samples():
        progress = _progress(len(dataset), "build")
        for index in range(len(dataset)):
            progress.update()
            try:
                data, label, name = dataset.raw(index)
                if not args.no_check:
                    load_image(data)  # full decode: truncated, empty and non-image files are caught here
            except ImageError as e:
                message = str(e) if str(e).startswith(dataset.name(index)) else f"{dataset.name(index)}: {e}"
                skipped.append(message)
                continue
            yield data, label
        progress.close()

    written = write_lmdb(args.out, samples(), layout=args.layout, overwrite=args.overwrite)
    elapsed = time.perf_counter() - start
    size_mb = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out)) / 1e6
    print(f"read {report.total} entries from {', '.join(args.src)}")
    if report.dropped:
        print(f"dropped {report.num_dropped} entries: " +
              ", ".join(f"{n} {reason}" for reason, n in sorted(report.dropped.items())))
    for line in _fsns_notes(dataset):
        print(line)
    if skipped:
        print(f"skipped {len(skipped)} unreadable images:")
        for line in skipped[:20]:
            print(f"  {line}")
        if len(skipped) > 20:
            print(f"  ... and {len(skipped) - 20} more")
    print(f"wrote {written} samples to {args.out} ({args.layout} layout, {size_mb:.1f} MB) in {elapsed:.1f} s")
    if not written:
        print("masterocr data build: error: no readable samples (check the image paths and --image-root)",
              file=sys.stderr)
        return 1
    return 0


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str):
    if not sys.stderr.isatty():
        return _NoProgress()
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", leave=False)


# ---- inspect --------------------------------------------------------------------------------------------

def charset_coverage(labels: list[str]) -> dict[str, int]:
    """For each named charset (built-in and shipped): how many labels lie wholly inside it after that
    charset's normalisation."""
    coverage = {}
    for name in charset_names():
        chars = load_charset(name)
        allowed = frozenset(chars)
        coverage[name] = sum(1 for label in labels if allowed.issuperset(normalize_label(label, chars)))
    return coverage


def length_histogram(labels: list[str], width: int = 40, max_rows: int = 40) -> list[str]:
    """Text histogram of label lengths, one row per length (longer lengths pooled in a last row)."""
    if not labels:
        return []
    counts = Counter(len(label) for label in labels)
    lo, hi = min(counts), max(counts)
    cap = lo + max_rows - 1
    rows = [(str(n), counts.get(n, 0)) for n in range(lo, min(hi, cap) + 1)]
    if hi > cap:
        rows.append((f"{cap + 1}+", sum(c for n, c in counts.items() if n > cap)))
    peak = max(c for _, c in rows)
    label_w = max(len(r) for r, _ in rows)
    return [f"  {r:>{label_w}} | {'#' * (round(width * c / peak) if c else 0):<{width}} {c}" for r, c in rows]


def _fsns_notes(dataset) -> list[str]:
    """FSNS sources: damaged shards, records whose image/text disagrees with their ids, views per image."""
    lines = []
    for name, source in _sources(dataset):
        if not hasattr(source, "shards"):
            continue
        for problem in source.shard_problems:
            lines.append(f"  damaged shard: {problem}")
        if source.text_mismatches:
            lines.append(f"  {len(source.text_mismatches)} record(s) of {name} whose image/text differs from the "
                         f"class ids (labels come from the ids), e.g. {source.text_mismatches[0]}")
        if source.views:
            views = ", ".join(f"{v}: {n}" for v, n in sorted(source.views.items()))
            lines.append(f"  views per image in {name} (4 x orig_width / width): {views}")
    return lines


def _default_montage_path(path: str) -> str:
    parts = [p for p in os.path.normpath(os.path.abspath(path)).split(os.sep) if p]
    stem = os.path.splitext(parts[-1])[0] if parts else "dataset"
    if stem.lower() in GENERIC_NAMES and len(parts) > 1:
        stem = f"{os.path.splitext(parts[-2])[0]}_{stem}"
    return f"{stem}_montage.png"


def run_inspect(args) -> int:
    _configure_logging()
    dataset = open_dataset(args.path, image_root=args.image_root)
    sources = _sources(dataset)
    labels = list(dataset.labels)
    total = len(labels)
    def kind(source) -> str:
        if hasattr(source, "shards"):
            return f"{source.format}, {len(source.shards)} shard{'s' if len(source.shards) > 1 else ''}"
        return f"LMDB, {source.layout} layout" if hasattr(source, "layout") else f"{source.format} label file"

    if len(sources) == 1:
        print(f"{args.path}: {total} samples ({kind(sources[0][1])})")
    else:
        print(f"{args.path}: {total} samples in {len(sources)} sources")
        for name, source in sources:
            print(f"  {name}: {len(source)} ({kind(source)})")
    report = dataset.report
    if report.dropped:
        print(f"  not counted: {report.num_dropped} entries (" +
              ", ".join(f"{n} {reason}" for reason, n in sorted(report.dropped.items())) + ")")
    for line in _fsns_notes(dataset):
        print(line)
    if not total:
        return 1

    lengths = [len(label) for label in labels]
    chars = Counter(c for label in labels for c in label)
    print(f"labels: {len(set(labels))} distinct; length min {min(lengths)}, "
          f"mean {statistics.fmean(lengths):.1f}, max {max(lengths)}; {len(chars)} distinct characters")

    print("charset coverage (labels wholly inside, after the charset's normalisation):")
    coverage = charset_coverage(labels)
    name_width = max(len(name) for name in coverage)
    for name, n in coverage.items():
        print(f"  {name:>{name_width}}: {n:>8} ({100.0 * n / total:.1f}%)")
    outside = {c: n for c, n in chars.items() if c not in BUILTIN_CHARSETS["94"]}
    if outside:
        shown = ", ".join(f"{c!r} x{n}" for c, n in sorted(outside.items(), key=lambda kv: -kv[1])[:30])
        more = f" (+{len(outside) - 30} more)" if len(outside) > 30 else ""
        print(f"characters outside 94 ({len(outside)}): {shown}{more}")
    else:
        print("characters outside 94: none")

    print("label length histogram:")
    for line in length_histogram(labels):
        print(line)

    rng = random.Random(args.seed)
    size_ids = rng.sample(range(total), min(total, max(0, args.size_samples)))
    sizes = [s for s in (dataset.image_size(i) for i in size_ids) if s is not None]
    if sizes:
        heights = [h for _, h in sizes]
        widths = [w for w, _ in sizes]
        aspects = [w / h for w, h in sizes]
        print(f"image sizes ({len(sizes)} sampled): height median {statistics.median(heights):g} "
              f"[{min(heights)}, {max(heights)}], width median {statistics.median(widths):g} "
              f"[{min(widths)}, {max(widths)}], aspect w/h median {statistics.median(aspects):.2f}")
    if len(sizes) < len(size_ids):
        print(f"  {len(size_ids) - len(sizes)} of the sampled images have no readable header")

    if not args.no_montage and args.samples > 0:
        out = args.montage or _default_montage_path(args.path)
        picks = sorted(rng.sample(range(total), min(total, args.samples)))
        items, unreadable = [], 0
        for i in picks:
            try:
                data, label, _ = dataset.raw(i)
                items.append((load_image(data), label))
            except ImageError as e:
                logging.getLogger(__name__).warning("%s", e)
                items.append((None, labels[i]))
                unreadable += 1
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        make_montage(items, columns=args.columns).save(out)
        note = f", {unreadable} unreadable" if unreadable else ""
        print(f"montage of {len(items)} samples{note}: {out}")
    return 0
