"""`masterocr metrics`: score prediction files offline (MASTER-pytorch's JSON format or plain TSV)."""

from __future__ import annotations

import argparse
import json
import math
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "metrics", help="score a prediction file against labels (accuracy, 1-NED, char precision/recall/F1)",
        description="Score predictions offline. PREDICTIONS is MASTER-pytorch's predict_result.json "
                    "([{\"filename\", \"result\", \"pred_score\"}, ...]) or a TSV of file<TAB>prediction"
                    "[<TAB>confidence]. LABELS is MASTER-pytorch's label.txt ({\"ImageFile\", \"Label\"} "
                    "per line) or a labels.tsv (file<TAB>label). Files are matched by name, else by base "
                    "name; a labelled file without a prediction counts as an empty prediction.")
    p.add_argument("predictions", help="predict_result.json or file<TAB>prediction TSV")
    p.add_argument("labels", help="label.txt (JSON lines) or labels.tsv")
    p.add_argument("--protocol", default="raw", choices=["36", "62", "94", "raw"],
                   help="normalisation applied to labels and predictions (default: raw, the files as they are)")
    p.add_argument("--max-length", type=int, default=0,
                   help="drop samples whose normalised label is longer (default 0: no limit)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.set_defaults(func=run)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def run(args: argparse.Namespace) -> int:
    from masterocr.evaluation import score_files

    result = score_files(args.predictions, args.labels, args.protocol, args.max_length or None)
    m = result.metrics
    if result.missing:
        print(f"masterocr metrics: {len(result.missing)} labelled file(s) have no prediction, scored as empty "
              f"(first: {result.missing[0]})", file=sys.stderr)
    if result.unmatched:
        print(f"masterocr metrics: {len(result.unmatched)} prediction(s) have no label, ignored "
              f"(first: {result.unmatched[0]})", file=sys.stderr)
    if args.json:
        summary = m.summary()
        summary.update(missing=len(result.missing), unmatched=len(result.unmatched), protocol=args.protocol)
        print(json.dumps(summary, ensure_ascii=False))
        return 0
    rows = [
        ("Samples", str(m.num_samples)),
        ("Dropped by protocol", str(m.dropped)),
        ("Accuracy (%)", _fmt(m.accuracy)),
        ("Accuracy, case-insensitive (%)", _fmt(m.accuracy_case_insensitive)),
        ("1 - NED per word (%)", _fmt(m.one_minus_ned)),
        ("1 - NED corpus (%)", _fmt(m.corpus_one_minus_ned)),
        ("Char precision (%)", _fmt(m.char_precision)),
        ("Char recall (%)", _fmt(m.char_recall)),
        ("Char F1 (%)", _fmt(m.char_f1)),
        ("Mean confidence (%)", _fmt(m.confidence)),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"protocol {args.protocol}: {args.predictions} vs {args.labels}")
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    print("(CRNN-Seq2Seq-OCR calls Accuracy \"annotation precision\" and Char F1 \"character precision\")")
    return 0
