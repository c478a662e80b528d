"""How fast FSNS TFRecord shards are opened and read, next to the LMDB `masterocr data build` makes of them.

Writes a synthetic shard of 150x600 PNGs (smooth colour fields with noise, about the size of FSNS's own images:
its train shards hold ~2,040 records in ~300 MB, ~147 KB each) to a temporary folder, then times:
  scan      iter_records alone (framing + CRC-32C of every byte)
  + parse   the same with each tf.train.Example parsed and its label decoded
  open      FsnsDataset(shard): scan + parse + the image-header check of every record
  raw       reading one record's PNG bytes by offset, random order (what a training step does per sample)
  decode    decoding that PNG to RGB (for scale: this is the cost a loader pays anyway)
  build     `masterocr data build` shard -> LMDB (with its full decode check), and LMDB raw reads

    python benchmarks/fsns_read.py [--records 300] [--keep DIR]

Single process, one thread. Prints MB/s and records/s; compare rows of one run, not runs on other machines.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from masterocr.charset import read_id_charset  # noqa: E402
from masterocr.data.datasets import LmdbDataset, write_lmdb  # noqa: E402
from masterocr.data.fsns import FsnsDataset, decode_record, write_fsns_shard  # noqa: E402
from masterocr.data.image import load_image  # noqa: E402
from masterocr.data.tfrecord import iter_records  # noqa: E402

WORDS = ["Rue", "Avenue", "Place", "Boulevard", "Impasse", "de", "la", "des", "du", "Saint", "Jean", "Paix",
         "Église", "Victor", "Hugo", "Marché", "Pasteur", "Gambetta", "République", "l’Hôtel"]


def synthetic_png(rng: np.random.Generator) -> bytes:
    """150x600 RGB: four 150x150 views of a smooth colour field with noise (PNG size near FSNS's)."""
    views = []
    for _ in range(4):
        corners = rng.integers(0, 256, size=(2, 2, 3)).astype(np.float32)
        t = np.linspace(0, 1, 150, dtype=np.float32)
        field = (corners[0, 0] * (1 - t)[:, None, None] * (1 - t)[None, :, None]
                 + corners[0, 1] * (1 - t)[:, None, None] * t[None, :, None]
                 + corners[1, 0] * t[:, None, None] * (1 - t)[None, :, None]
                 + corners[1, 1] * t[:, None, None] * t[None, :, None])
        views.append(field + rng.normal(0, 6, size=field.shape))
    image = np.clip(np.concatenate(views, axis=1), 0, 255).astype(np.uint8)  # (150, 600, 3)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=300)
    parser.add_argument("--keep", help="write the shard and LMDB here instead of a temporary folder")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(2, 5))) for _ in range(args.records)]
    images = [synthetic_png(rng) for _ in range(args.records)]
    folder = args.keep or tempfile.mkdtemp(prefix="fsns-bench-")
    shard = os.path.join(folder, "train-00000-of-00001")
    write_fsns_shard(shard, zip(images, texts), overwrite=True)
    size_mb = os.path.getsize(shard) / 1e6
    n = args.records
    print(f"shard: {n} records, {size_mb:.1f} MB ({1e3 * size_mb / n:.0f} KB/record), {folder}")

    charset = read_id_charset("fsns")
    _, scan = timed(lambda: sum(1 for _ in iter_records(shard)))
    _, parse = timed(lambda: [decode_record(r.data, charset).label for r in iter_records(shard)])
    dataset, open_s = timed(lambda: FsnsDataset(shard))
    assert dataset.labels == texts
    order = list(range(n))
    random.Random(0).shuffle(order)
    raws, raw_s = timed(lambda: [dataset.raw(i)[0] for i in order])
    _, decode_s = timed(lambda: [load_image(b) for b in raws[: min(n, 100)]])
    decode_s *= n / min(n, 100)

    out_lmdb = os.path.join(folder, "train.lmdb")
    _, build_s = timed(lambda: write_lmdb(out_lmdb, ((load_image(d) and d, label) for d, label, _ in
                                                     (dataset.raw(i) for i in range(n))), overwrite=True))
    lmdb_set = LmdbDataset(out_lmdb)
    _, lmdb_raw_s = timed(lambda: [lmdb_set.raw(i)[0] for i in order])

    rows = [("scan (framing + CRC-32C)", scan), ("scan + parse Examples", parse),
            ("open FsnsDataset (+ header checks)", open_s), ("raw record reads, random order", raw_s),
            ("PNG decode (for scale)", decode_s), ("build LMDB (decode-checked)", build_s),
            ("LMDB raw reads, random order", lmdb_raw_s)]
    print(f"\n| step | s | records/s | MB/s |\n|---|---:|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {n / seconds:,.0f} | {size_mb / seconds:,.0f} |")
    full = 1_044_868 / (n / open_s)
    print(f"\nat this rate, opening FSNS train (1,044,868 records, ~150 GB) would take {full / 60:.0f} min of "
          "scanning on one core (disk permitting); convert once with `masterocr data build` for training.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
