"""`masterocr eval`: the benchmark table for a model on any mix of LMDB trees and labels.tsv folders."""

from __future__ import annotations

import argparse
import logging
import sys

from masterocr.cli.common import add_orientation_argument, by_reason, non_negative_int, positive_int, shown
from masterocr.cli.read import add_backend_argument


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="benchmark a model: accuracy, 1 - NED, char F1, confidence, label length per dataset",
        description="Evaluate MODEL (bundled name, .safetensors or training .ckpt) on each dataset under ROOT "
                    "(a labels.tsv folder, an LMDB, or FSNS TFRecords - a shard, a folder of shards or a quoted "
                    "glob - is one row; an LMDB tree gives one row per LMDB). Prints the Markdown table; "
                    "--output also writes results.json, results.csv and the per-sample predictions. Accuracy "
                    "and Char F1 are what CRNN-Seq2Seq-OCR reports as annotation and character precision. "
                    "Unreadable images are reported and scored as empty predictions; a dataset that cannot be "
                    "opened is reported and the others evaluated. The exit code is 1 when any image, label "
                    "entry or dataset failed.")
    p.add_argument("model", metavar="MODEL",
                   help="bundled model name, .safetensors, .ckpt, or an export folder (read with ONNX Runtime)")
    p.add_argument("--data", nargs="+", required=True, metavar="ROOT", help="benchmark folders / LMDBs / trees")
    p.add_argument("--protocol", default="36", choices=["36", "62", "94", "raw"],
                   help="36 (default, the standard: lower-case [0-9a-z]), 62, 94 or raw")
    p.add_argument("--max-length", type=non_negative_int, default=25,
                   help="drop samples whose normalised label is longer (default 25, as the benchmarks; 0: none)")
    p.add_argument("--rotation", nargs="+", type=int, default=[0], choices=[0, 90, 180, 270], metavar="DEG",
                   help="evaluate on images rotated by these degrees (e.g. --rotation 90 180 270); default 0")
    add_orientation_argument(p)
    p.add_argument("--lexicon", metavar="FILE",
                   help="snap each reading to the nearest word of a lexicon (edit distance): SVT's per-photo "
                        "file (`<photo id> W1,W2,...`, crops named <photo id>_<n>) or one word per line")
    p.add_argument("--holdout", type=float, metavar="FRACTION",
                   help="score only the held-out part of each dataset, as a training config's "
                        "`holdout: {fraction, seed}` splits it (e.g. a model's selection set)")
    p.add_argument("--holdout-seed", type=int, default=0, help="the holdout's seed (default 0)")
    p.add_argument("--holdout-group", metavar="REGEX",
                   help="the holdout's group: samples whose ids match alike fall on one side (e.g. "
                        "'([^/]+)_\\d+\\.' keeps IIIT5K's crops of one photo together)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    add_backend_argument(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--decode", default="greedy", choices=["greedy", "beam", "nar"],
                   help="greedy or beam: autoregressive; nar: all positions at once (PARSeq)")
    p.add_argument("--refine", type=non_negative_int, default=None, metavar="N",
                   help="cloze refinement passes after decoding (PARSeq; default: the model's own, 1)")
    p.add_argument("--beam-width", type=positive_int, default=5)
    p.add_argument("--num-workers", type=non_negative_int, default=0, help="DataLoader workers decoding images (default 0)")
    p.add_argument("--output", metavar="DIR", help="write results.json, results.csv and predictions*.tsv here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from masterocr.data.datasets import parse_holdout
    from masterocr.evaluation import evaluate, open_benchmarks, write_results
    from masterocr.cli.read import load_recognizer

    # Dataset filter reports are logged at INFO; show warnings (e.g. malformed label lines) only.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    lexicon = None
    if args.lexicon:
        from masterocr.lexicon import Lexicon

        try:
            lexicon = Lexicon.load(args.lexicon)
        except ValueError as e:
            print(f"masterocr eval: {e}", file=sys.stderr)
            return 2
    holdout = None
    if args.holdout is not None:
        holdout = parse_holdout({"fraction": args.holdout, "seed": args.holdout_seed,
                                 "group": args.holdout_group}, where="--holdout")
    unusable: list[str] = []  # datasets that cannot be opened or hold no sample: reported, the others scored
    benchmarks = open_benchmarks(args.data, holdout=holdout, errors=unusable)
    for message in unusable:
        print(f"masterocr eval: {shown(message)}: skipped", file=sys.stderr)
    if not benchmarks:
        print("masterocr eval: error: no dataset to evaluate", file=sys.stderr)
        return 2
    rec = load_recognizer(args.model, args.backend, device=args.device, decode_method=args.decode,
                          beam_width=args.beam_width, batch_size=args.batch_size, refine_iters=args.refine,
                          orientation=args.orientation, precision=args.precision)
    results = []
    any_failed = bool(unusable)
    for rotation in dict.fromkeys(args.rotation):
        try:
            result = evaluate(rec, benchmarks, protocol=args.protocol, batch_size=args.batch_size,
                              rotation=rotation, max_length=args.max_length or None,
                              num_workers=args.num_workers, progress=not args.no_progress, lexicon=lexicon)
        except ValueError as e:  # e.g. a crop whose photo the lexicon does not list
            print(f"masterocr eval: {e}", file=sys.stderr)
            return 2
        results.append(result)
        notes = [f"rotation {rotation}°"] if len(args.rotation) > 1 or rotation else []
        if lexicon is not None:
            notes.append(f"lexicon {args.lexicon}")
        if rec.orientation != "upright":
            notes.append(f"orientation {rec.orientation}")
        if notes:
            header = ", ".join(notes)
            print(f"\n{header[0].upper()}{header[1:]}, protocol {args.protocol}:\n")
        print(result.markdown())
        failed = sum(m.failed for m in result.rows)
        dropped = sum(m.dropped for m in result.rows)
        malformed = sum(m.malformed for m in result.rows)
        any_failed = any_failed or bool(failed or malformed)
        notes = []
        if dropped:
            notes.append(f"{dropped} sample(s) dropped by protocol {args.protocol} (empty or longer than "
                         f"{args.max_length or 'any'} after normalisation)")
        if failed:
            notes.append(f"{failed} unreadable image(s) ({by_reason(result.error_reasons)}), scored as empty "
                         "predictions")
        if malformed:
            notes.append(f"{malformed} malformed or damaged entr{'y' if malformed == 1 else 'ies'} (label lines, "
                         "LMDB entries or records that hold no sample, each named above) left out")
        for note in notes:
            print(f"masterocr eval: {note}", file=sys.stderr)
        sys.stdout.flush()
    if args.output:
        paths = write_results(results, args.output, model=str(args.model), decode=args.decode,
                              data=[str(d) for d in args.data])
        print(f"masterocr eval: wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 1 if any_failed else 0
