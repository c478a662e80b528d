"""`masterocr metrics`: score prediction files offline (MASTER-pytorch's JSON format or plain TSV)."""

from __future__ import annotations

import argparse
import math
import sys

from masterocr.cli.common import json_line, non_negative_int, shown


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "metrics", help="score a prediction file against labels (accuracy, 1-NED, char precision/recall/F1)",
        description="Score predictions offline. PREDICTIONS is MASTER-pytorch's predict_result.json "
                    "([{\"filename\", \"result\", \"pred_score\"}, ...]) or a TSV of file<TAB>prediction"
                    "[<TAB>confidence]. LABELS is MASTER-pytorch's label.txt ({\"ImageFile\", \"Label\"} "
                    "per line) or a labels.tsv (file<TAB>label). Files are matched by name, else by base "
                    "name; a labelled file without a prediction counts as an empty prediction. Lines that cannot be read "
                    "are named on stderr and skipped (exit code 1).")
    p.add_argument("predictions", help="predict_result.json or file<TAB>prediction TSV")
    p.add_argument("labels", help="label.txt (JSON lines) or labels.tsv")
    p.add_argument("--protocol", default="raw", choices=["36", "62", "94", "raw"],
                   help="normalisation applied to labels and predictions (default: raw, the files as they are)")
    p.add_argument("--max-length", type=non_negative_int, default=0,
                   help="drop samples whose normalised label is longer (default 0: no limit)")
    p.add_argument("--json", action="store_true",
                   help="print the figures as one JSON object, as fractions in [0, 1] like eval's results.json "
                        "(\"units\": \"fraction\"; the table prints percent)")
    p.set_defaults(func=run)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def run(args: argparse.Namespace) -> int:
    from masterocr.evaluation import score_files

    result = score_files(args.predictions, args.labels, args.protocol, args.max_length or None)
    m = result.metrics
    for message in result.malformed[:20]:
        print(f"masterocr metrics: {shown(message)}: skipped", file=sys.stderr)
    if len(result.malformed) > 20:
        print(f"masterocr metrics: ... and {len(result.malformed) - 20} more malformed lines", file=sys.stderr)
    if m.num_samples == 0:
        print(f"masterocr metrics: error: no sample to score in {shown(args.labels)} ({m.dropped} dropped by "
              f"protocol {args.protocol}, {len(result.malformed)} malformed line(s))", file=sys.stderr)
        return 2
    status = 1 if result.malformed else 0
    if result.missing:
        print(f"masterocr metrics: {len(result.missing)} labelled file(s) have no prediction, scored as empty "
              f"(first: {result.missing[0]})", file=sys.stderr)
    if result.unmatched:
        print(f"masterocr metrics: {len(result.unmatched)} prediction(s) have no label, ignored "
              f"(first: {result.unmatched[0]})", file=sys.stderr)
    if args.json:
        summary = m.summary()
        summary.update(missing=len(result.missing), unmatched=len(result.unmatched), protocol=args.protocol,
                       units="fraction")
        print(json_line(summary))
        return status
    rows = [
        ("Samples", str(m.num_samples)),
        ("Dropped by protocol", str(m.dropped)),
        ("Malformed lines skipped", str(len(result.malformed))),
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
    return status
