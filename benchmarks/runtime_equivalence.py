"""Does the ONNX Runtime path read what torch reads? Token agreement and word accuracy on real crops.

For every model given (default: the bundled master-small; any weights masterocr.load reads, e.g. EasyOCR's
english_g2 imported with `masterocr import easyocr-g2`) and every image of the given sets (default:
IIIT5K/test and SVT/test, measured only, nothing is chosen on them), one preprocessed batch goes through
torch fp32 (masterocr.decoding, the Recognizer's path) and through the runtime (ORT fp32, ORT int8 when
given or made, and with --bf16 the OpenVINO bf16 and bf16-checked readings): a word agrees when its whole token
sequence is identical (attention models: up to and including EOS; CTC: every frame's arg-max). Batches are formed
as `masterocr eval` forms them (ordered by aspect ratio when the model keeps it, padded to the widest as the
transform pads). Prints, per set, the
agreement rate of ORT fp32 with torch fp32 (target >= 99.8%), the largest probability difference on agreeing
words, and word accuracy (protocol 36) of each path, so the int8 delta (target: at most 0.5 points lost)
reads off the table.

    python benchmarks/runtime_equivalence.py                               # master-small, exported to a temp dir
    python benchmarks/runtime_equivalence.py --models master-small easyocr-g2.safetensors --threads 1
    python benchmarks/runtime_equivalence.py --models master-small --export DIR --int8-export DIR8

int8 exports made here are calibrated on IIIT5K/train (a training split), 256 images (--calibration none:
convolutions stay fp32).
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


def batches(dataset, rec, batch_size):
    """(images (B, C, H, W) float32, labels after protocol 36) over a dataset, as `masterocr eval` batches
    it: labels filtered by the protocol, samples ordered by aspect ratio when the resize keeps it, each batch
    collated by the recognizer. Unreadable images are skipped (none in these sets)."""
    from masterocr.data.image import ImageError
    from masterocr.evaluation import apply_protocol

    keep = [(i, gt) for i, gt in ((i, apply_protocol(label, "36")) for i, label in enumerate(dataset.labels))
            if gt is not None]
    if rec.keep_aspect:
        def aspect(item):
            size = dataset.image_size(item[0])
            return 0.0 if size is None else size[0] / size[1]
        keep.sort(key=aspect)
    for start in range(0, len(keep), batch_size):
        images, labels = [], []
        for i, gt in keep[start: start + batch_size]:
            try:
                images.append(rec.transform.array(dataset.raw(i)[0]))
            except ImageError as e:
                print(f"skipped: {e}", file=sys.stderr)
                continue
            labels.append(gt)
        if images:
            yield rec.transform.collate(images) if len({a.shape[-1] for a in images}) > 1 else np.stack(images), labels


def _same_row(a: np.ndarray, b: np.ndarray, pad: int) -> bool:
    """Token rows of two batches that ran a different number of steps: equal up to the padding."""
    t = max(len(a), len(b))
    a = np.concatenate([a, np.full(t - len(a), pad)])
    b = np.concatenate([b, np.full(t - len(b), pad)])
    return bool((a == b).all())


def measure(model: str, fp32_dir: str, int8_dir: str | None, args) -> None:
    import masterocr
    from masterocr.decoding import decode
    from masterocr.evaluation import get_protocol, open_benchmarks

    torch_rec = masterocr.load(model)
    runtimes = {"ort fp32": masterocr.load(fp32_dir, threads=args.threads)}
    if int8_dir:
        runtimes["ort int8"] = masterocr.load(int8_dir, threads=args.threads)
        print(f"int8: {runtimes['ort int8'].metadata['quantization']['summary']} "
              f"({runtimes['ort int8'].metadata['quantization']['conv']})")
    if args.bf16:
        runtimes["bf16"] = masterocr.load(fp32_dir, threads=args.threads, precision="bf16")
        runtimes["bf16-checked"] = masterocr.load(fp32_dir, threads=args.threads, precision="bf16-checked")
    pad = runtimes["ort fp32"].tokenizer.pad_id if hasattr(runtimes["ort fp32"].tokenizer, "pad_id") else 0
    protocol = get_protocol("36")
    others = [k for k in runtimes if k != "ort fp32"]
    print(f"\nmodel {model} ({torch_rec.model_cfg.get('name')}), {args.threads} threads, load average "
          f"{os.getloadavg()[0]:.2f}")
    header = f"{'set':<10}{'words':>7}{'fp32 tokens agree':>19}{'max |dp|':>10}{'acc torch':>11}" + "".join(
        f"{'acc ' + name:>18}" for name in runtimes) + "".join(f"{name + ' agree':>20}" for name in others)
    print(header)
    print("-" * len(header))
    totals = {"n": 0, "torch": 0, **{k: 0 for k in runtimes}, **{"agree " + k: 0 for k in runtimes}}
    for name, dataset in open_benchmarks(args.data):
        n = 0
        correct = {"torch": 0, **{k: 0 for k in runtimes}}
        agree = {k: 0 for k in runtimes}
        max_dp = 0.0
        start = time.time()
        for images, labels in batches(dataset, runtimes["ort fp32"], args.batch_size):
            with torch.inference_mode():
                ref = decode(torch_rec.model, torch.from_numpy(images).contiguous(memory_format=torch.channels_last),
                             need_attention=False)
            ref_ids, ref_probs = ref.token_ids.numpy(), ref.probs.numpy()
            texts = {"torch": [d.text for d in ref.decoded(torch_rec.tokenizer)]}
            for key, rec in runtimes.items():
                ids, probs, _, _ = rec.decode(images, need_attention=False)
                texts[key] = [r.text for r in rec.predict(images, need_attention=False)]
                same = [_same_row(ids[i], ref_ids[i], pad) for i in range(len(labels))]
                agree[key] += sum(same)
                if key == "ort fp32":
                    for i, s in enumerate(same):
                        if s:
                            t = min(probs.shape[1], ref_probs.shape[1])
                            max_dp = max(max_dp, float(np.abs(probs[i, :t] - ref_probs[i, :t]).max()))
            for key, rows in texts.items():
                correct[key] += sum(protocol(t) == gt for t, gt in zip(rows, labels))
            n += len(labels)
            if args.limit and n >= args.limit:
                break
        line = (f"{name:<10}{n:>7}{100 * agree['ort fp32'] / n:>18.2f}%{max_dp:>10.1e}"
                f"{100 * correct['torch'] / n:>11.2f}" + "".join(f"{100 * correct[k] / n:>18.2f}" for k in runtimes)
                + "".join(f"{100 * agree[k] / n:>19.2f}%" for k in others))
        print(line + f"   ({time.time() - start:.0f} s)", flush=True)
        totals["n"] += n
        for k in correct:
            totals[k] += correct[k]
        for k in agree:
            totals["agree " + k] += agree[k]
    n = totals["n"]
    print(f"{'Combined':<10}{n:>7}{100 * totals['agree ort fp32'] / n:>18.2f}%{'':>10}"
          f"{100 * totals['torch'] / n:>11.2f}"
          + "".join(f"{100 * totals[k] / n:>18.2f}" for k in runtimes)
          + "".join(f"{100 * totals['agree ' + k] / n:>19.2f}%" for k in others))
    if "bf16-checked" in runtimes:
        checked = runtimes["bf16-checked"]
        print(f"bf16-checked read {checked.rows_reread} of {checked.rows_read} words again in fp32 "
              f"({100 * checked.rows_reread / max(checked.rows_read, 1):.1f}%, margin {checked.check_margin})")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["master-small"],
                        help="weights: bundled names, .safetensors or .ckpt (default: the bundled model)")
    parser.add_argument("--model", help=argparse.SUPPRESS)  # the earlier spelling of one --models entry
    parser.add_argument("--export", help="fp32 export folder of the (single) model (default: exported to a temp dir)")
    parser.add_argument("--int8-export", help="int8 export folder (default: quantized from the fp32 export)")
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--bf16", action="store_true",
                        help="add the OpenVINO bf16 and bf16-checked readings (their token agreement with torch fp32)")
    parser.add_argument("--data", nargs="+", default=[str(DATA / "IIIT5K" / "test"), str(DATA / "SVT" / "test")])
    parser.add_argument("--calibration", default=str(DATA / "IIIT5K" / "train"),
                        help="training images for int8's static convolutions; 'none' leaves them fp32 (what "
                             "english_g2 measures better with on IIIT5K/train and SVT/train)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="at most this many images per set (0: all)")
    args = parser.parse_args()
    if args.model:
        args.models = [args.model]
    if (args.export or args.int8_export) and len(args.models) > 1:
        parser.error("--export / --int8-export name the folders of one model")
    torch.set_num_threads(args.threads)

    from masterocr.export import export_model

    with tempfile.TemporaryDirectory(prefix="masterocr-equivalence-") as tmp:
        for i, model in enumerate(args.models):
            fp32_dir = args.export or os.path.join(tmp, f"{i}-fp32")
            if not args.export:
                export_model(model, fp32_dir)
            int8_dir = None if args.no_int8 else args.int8_export
            if int8_dir is None and not args.no_int8:
                int8_dir = os.path.join(tmp, f"{i}-int8")
                calibration = None if args.calibration == "none" else [args.calibration]
                export_model(fp32_dir, int8_dir, int8=True, calibration=calibration)
            measure(model, fp32_dir, int8_dir, args)


if __name__ == "__main__":
    main()
