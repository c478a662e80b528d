"""`masterocr eval`: the benchmark table for a model on any mix of LMDB trees and labels.tsv folders."""

from __future__ import annotations

import argparse
import logging
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="benchmark a model: accuracy, 1 - NED, char F1, confidence, label length per dataset",
        description="Evaluate MODEL (bundled name, .safetensors or training .ckpt) on each dataset under ROOT "
                    "(a labels.tsv folder, an LMDB, or FSNS TFRecords - a shard, a folder of shards or a quoted "
                    "glob - is one row; an LMDB tree gives one row per LMDB). Prints the Markdown table; "
                    "--output also writes results.json, results.csv and the per-sample predictions. Accuracy "
                    "and Char F1 are what CRNN-Seq2Seq-OCR reports as annotation and character precision. "
                    "Unreadable images are reported and scored as empty predictions.")
    p.add_argument("model", metavar="MODEL", help="bundled model name, .safetensors or .ckpt")
    p.add_argument("--data", nargs="+", required=True, metavar="ROOT", help="benchmark folders / LMDBs / trees")
    p.add_argument("--protocol", default="36", choices=["36", "62", "94", "raw"],
                   help="36 (default, the standard: lower-case [0-9a-z]), 62, 94 or raw")
    p.add_argument("--max-length", type=int, default=25,
                   help="drop samples whose normalised label is longer (default 25, as the benchmarks; 0: none)")
    p.add_argument("--rotation", nargs="+", type=int, default=[0], choices=[0, 90, 180, 270], metavar="DEG",
                   help="evaluate on images rotated by these degrees (e.g. --rotation 90 180 270); default 0")
    p.add_argument("--orientation", default="upright", choices=["upright", "auto"],
                   help="auto: read each image in its four turns (0/90/180/270) and keep the most confident "
                        "reading (4x the model work); default upright")
    p.add_argument("--lexicon", metavar="FILE",
                   help="snap each reading to the nearest word of a lexicon (edit distance): SVT's per-photo "
                        "file (`<photo id> W1,W2,...`, crops named <photo id>_<n>) or one word per line")
    p.add_argument("--holdout", type=float, metavar="FRACTION",
                   help="score only the held-out part of each dataset, as a training config's "
                        "`holdout: {fraction, seed}` splits it (e.g. a model's selection set)")
    p.add_argument("--holdout-seed", type=int, default=0, help="the holdout's seed (default 0)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--decode", default="greedy", choices=["greedy", "beam"])
    p.add_argument("--beam-width", type=int, default=5)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding images (default 0)")
    p.add_argument("--output", metavar="DIR", help="write results.json, results.csv and predictions*.tsv here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from masterocr.data.datasets import parse_holdout
    from masterocr.evaluation import evaluate, open_benchmarks, write_results
    from masterocr.recognizer import load

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
        holdout = parse_holdout({"fraction": args.holdout, "seed": args.holdout_seed}, where="--holdout")
    rec = load(args.model, device=args.device, decode_method=args.decode, beam_width=args.beam_width,
               batch_size=args.batch_size, orientation=args.orientation)
    benchmarks = open_benchmarks(args.data, holdout=holdout)
    results = []
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
        if args.orientation != "upright":
            notes.append(f"orientation {args.orientation}")
        if notes:
            header = ", ".join(notes)
            print(f"\n{header[0].upper()}{header[1:]}, protocol {args.protocol}:\n")
        print(result.markdown())
        failed = sum(m.failed for m in result.rows)
        dropped = sum(m.dropped for m in result.rows)
        notes = []
        if dropped:
            notes.append(f"{dropped} sample(s) dropped by protocol {args.protocol} (empty or longer than "
                         f"{args.max_length or 'any'} after normalisation)")
        if failed:
            notes.append(f"{failed} unreadable image(s), scored as empty predictions")
        for note in notes:
            print(f"masterocr eval: {note}", file=sys.stderr)
        sys.stdout.flush()
    if args.output:
        paths = write_results(results, args.output, model=str(args.model), decode=args.decode,
                              data=[str(d) for d in args.data])
        print(f"masterocr eval: wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0
