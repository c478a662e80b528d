"""Does the ONNX Runtime path read what torch reads? Token agreement and word accuracy on real crops.

For every image of the given sets (default: IIIT5K/test and SVT/test, measured only, nothing is chosen on
them), one preprocessed batch goes through torch fp32 (masterocr.decoding, the Recognizer's path) and through
the runtime (ORT fp32, and ORT int8 when given or made): a word agrees when its whole token sequence (up to
and including EOS) is identical. Prints, per set, the agreement rate of ORT fp32 with torch fp32 (target
>= 99.8%), the largest probability difference on agreeing words, and word accuracy (protocol 36) of each
path, so the int8 delta (target: at most 0.5 points lost) reads off the table.

    python benchmarks/runtime_equivalence.py                      # exports master-small (fp32, int8) to a temp dir
    python benchmarks/runtime_equivalence.py --export DIR --int8-export DIR8 --data ../shared/data/IIIT5K/test

int8 exports made here are calibrated on IIIT5K/train (a training split), 256 images.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def batches(dataset, transform, protocol, batch_size):
    """(arrays (B, C, H, W), labels after the protocol) over a dataset; unreadable images are skipped."""
    from masterocr.data.image import ImageError
    from masterocr.evaluation import apply_protocol

    images, labels = [], []
    for i, label in enumerate(dataset.labels):
        gt = apply_protocol(label, protocol)
        if gt is None:
            continue
        try:
            images.append(transform.array(dataset.raw(i)[0]))
        except ImageError as e:
            print(f"skipped: {e}", file=sys.stderr)
            continue
        labels.append(gt)
        if len(images) == batch_size:
            yield np.stack(images), labels
            images, labels = [], []
    if images:
        yield np.stack(images), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="master-small", help="weights (default: the bundled model)")
    parser.add_argument("--export", help="fp32 export folder of --model (default: exported to a temp dir)")
    parser.add_argument("--int8-export", help="int8 export folder (default: quantized from the fp32 export)")
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--data", nargs="+", default=[str(DATA / "IIIT5K" / "test"), str(DATA / "SVT" / "test")])
    parser.add_argument("--calibration", default=str(DATA / "IIIT5K" / "train"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="at most this many images per set (0: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import masterocr
    from masterocr.decoding import decode
    from masterocr.evaluation import get_protocol, open_benchmarks
    from masterocr.export import export_model

    tmp = tempfile.TemporaryDirectory(prefix="masterocr-equivalence-")
    fp32_dir = args.export
    if fp32_dir is None:
        fp32_dir = os.path.join(tmp.name, "fp32")
        export_model(args.model, fp32_dir)
    int8_dir = None if args.no_int8 else args.int8_export
    if int8_dir is None and not args.no_int8:
        int8_dir = os.path.join(tmp.name, "int8")
        export_model(fp32_dir, int8_dir, int8=True, calibration=[args.calibration])
    torch_rec = masterocr.load(args.model)
    runtimes = {"ort fp32": masterocr.load(fp32_dir, threads=args.threads)}
    if int8_dir:
        runtimes["ort int8"] = masterocr.load(int8_dir, threads=args.threads)
        print(f"int8: {runtimes['ort int8'].metadata['quantization']['conv']}")
    protocol = get_protocol("36")
    print(f"model {args.model}, {args.threads} threads, load average {os.getloadavg()[0]:.2f}")
    header = f"{'set':<10}{'words':>7}{'fp32 tokens agree':>19}{'max |dp|':>10}{'acc torch':>11}" + "".join(
        f"{'acc ' + name:>14}" for name in runtimes) + (f"{'int8 agree':>12}" if int8_dir else "")
    print(header)
    print("-" * len(header))
    totals = {"n": 0, "agree": 0, "agree8": 0, "torch": 0, **{k: 0 for k in runtimes}}
    for name, dataset in open_benchmarks(args.data):
        n = agree = agree8 = 0
        correct = {"torch": 0, **{k: 0 for k in runtimes}}
        max_dp = 0.0
        start = time.time()
        for images, labels in batches(dataset, torch_rec.transform, "36", args.batch_size):
            with torch.inference_mode():
                ref = decode(torch_rec.model, torch.from_numpy(images).contiguous(memory_format=torch.channels_last),
                             need_attention=False)
            ref_ids, ref_probs = ref.token_ids.numpy(), ref.probs.numpy()
            texts = {"torch": [d.text for d in ref.decoded(torch_rec.tokenizer)]}
            for key, rec in runtimes.items():
                ids, probs, chosen, _ = rec.decode(images, need_attention=False)
                texts[key] = [d.text for d in rec.tokenizer.decode_chosen(ids, chosen)]
                same = [_same_row(ids[i], ref_ids[i], rec.spec.pad) for i in range(len(labels))]
                if key == "ort fp32":
                    agree += sum(same)
                    for i, s in enumerate(same):
                        if s:
                            t = min(probs.shape[1], ref_probs.shape[1])
                            max_dp = max(max_dp, float(np.abs(probs[i, :t] - ref_probs[i, :t]).max()))
                else:
                    agree8 += sum(same)
            for key, rows in texts.items():
                correct[key] += sum(protocol(t) == gt for t, gt in zip(rows, labels))
            n += len(labels)
            if args.limit and n >= args.limit:
                break
        line = (f"{name:<10}{n:>7}{100 * agree / n:>18.2f}%{max_dp:>10.1e}{100 * correct['torch'] / n:>11.2f}"
                + "".join(f"{100 * correct[k] / n:>14.2f}" for k in runtimes)
                + (f"{100 * agree8 / n:>11.2f}%" if int8_dir else ""))
        print(line + f"   ({time.time() - start:.0f} s)", flush=True)
        totals["n"] += n
        totals["agree"] += agree
        totals["agree8"] += agree8
        for k in correct:
            totals[k] += correct[k]
    n = totals["n"]
    print(f"{'Combined':<10}{n:>7}{100 * totals['agree'] / n:>18.2f}%{'':>10}{100 * totals['torch'] / n:>11.2f}"
          + "".join(f"{100 * totals[k] / n:>14.2f}" for k in runtimes)
          + (f"{100 * totals['agree8'] / n:>11.2f}%" if int8_dir else ""))
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


def _same_row(a: np.ndarray, b: np.ndarray, pad: int) -> bool:
    """Token rows of two batches that ran a different number of steps: equal up to the padding."""
    t = max(len(a), len(b))
    a = np.concatenate([a, np.full(t - len(a), pad)])
    b = np.concatenate([b, np.full(t - len(b), pad)])
    return bool((a == b).all())


if __name__ == "__main__":
    main()
