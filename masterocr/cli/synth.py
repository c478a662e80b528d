"""`masterocr data synth`: bake synthetic word images into an LMDB, or preview them as a montage.

    masterocr data synth --count 100000 synth.lmdb --workers 2
    masterocr data synth --preview synth.png --config effects.curve.p=0.5

Sample k of the LMDB is synthetic index start+k under the seed, exactly what SyntheticDataset(seed)[start+k]
renders, so a baked set can always be re-rendered or extended.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Iterator

from PIL import Image

from .common import non_negative_int, positive_int

DEFAULT_PREVIEW = 48
_CHUNK = 256
_worker_renderer = None  # the renderer: the main process's own, or built by each worker's initializer


def register(data_subparsers) -> None:
    p = data_subparsers.add_parser(
        "synth", help="render synthetic word images into an LMDB and/or a preview montage",
        description="Render synthetic word images (masterocr.data.synth) into an LMDB in the standard layout "
                    "and/or a labelled montage. Sample k is synthetic index START+k under SEED.")
    p.add_argument("out", nargs="?", help="output LMDB directory (omit to only --preview)")
    p.add_argument("--count", type=positive_int, help="number of samples to write into OUT")
    p.add_argument("--preview", metavar="PNG", help="write a montage of the first samples to this PNG")
    p.add_argument("--preview-count", type=positive_int, default=DEFAULT_PREVIEW,
                   help=f"samples in the preview montage (default {DEFAULT_PREVIEW})")
    p.add_argument("--charset", default="94", help="36, 62, 94, a charset file or a string (default 94)")
    p.add_argument("--max-length", type=positive_int, default=25, help="longest label (default 25)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--start", type=non_negative_int, default=0, help="first synthetic index (default 0)")
    p.add_argument("--height", type=positive_int, default=32, help="image height in pixels (default 32)")
    p.add_argument("--width", type=positive_int,
                   help="resize every image to exactly this width (default: natural width of each word)")
    p.add_argument("--config", action="append", default=[], metavar="FILE|KEY=VALUE",
                   help="renderer settings: a YAML/JSON file, a preset (naive) or an override such as effects.blur.p=0.5 "
                        "(repeatable, applied in order)")
    p.add_argument("--fonts", action="append", default=[], metavar="PATH",
                   help="font file or folder (repeatable; default: configured or system font folders)")
    p.add_argument("--format", dest="image_format", choices=["png", "jpg"], default="png",
                   help="image encoding in the LMDB (default png, lossless)")
    p.add_argument("--quality", type=positive_int, default=95, help="JPEG quality with --format jpg (default 95)")
    p.add_argument("--workers", type=positive_int, default=1, help="rendering processes (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run_synth)


def _renderer_from(args):
    from ..data.synth import Renderer
    return Renderer(args.charset, height=args.height, max_length=args.max_length, config=args.config or None,
                    fonts=args.fonts or None)


def _render(renderer, seed: int, index: int, width: int | None) -> tuple[Image.Image, str]:
    from ..data.synth import sample_rng
    image, label = renderer.render(sample_rng(seed, index))
    if width:
        image = image.resize((width, image.height), Image.BICUBIC)
    return image, label


def _encode(image: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        image.save(buf, "JPEG", quality=quality)
    else:
        image.save(buf, "PNG", compress_level=3)
    return buf.getvalue()


def _init_worker(args) -> None:
    global _worker_renderer
    if _worker_renderer is None:  # a fresh worker process: build it (font checks come from the disk cache)
        _worker_renderer = _renderer_from(args)


def _render_chunk(job) -> list[tuple[bytes, str]]:
    seed, start, stop, width, fmt, quality = job
    out = []
    for index in range(start, stop):
        image, label = _render(_worker_renderer, seed, index, width)
        out.append((_encode(image, fmt, quality), label))
    return out


def _samples(args, renderer) -> Iterator[tuple[bytes, str]]:
    """Encoded samples START .. START+COUNT-1 in order, rendered by `args.workers` processes."""
    global _worker_renderer
    jobs = [(args.seed, s, min(s + _CHUNK, args.start + args.count), args.width, args.image_format, args.quality)
            for s in range(args.start, args.start + args.count, _CHUNK)]
    _worker_renderer = renderer
    if args.workers <= 1:
        for job in jobs:
            yield from _render_chunk(job)
        return
    # Not fork: a forked child of a process with running threads (torch's, a thread pool's) can deadlock or
    # die, and multiprocessing.Pool then waits for its lost chunk forever. A fresh interpreter per worker
    # costs a second at start; a worker that dies raises BrokenProcessPool instead of hanging.
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_init_worker, initargs=(args,)) as pool:
        for chunk in pool.map(_render_chunk, jobs):
            yield from chunk


def run_synth(args) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    prog = "masterocr data synth"
    if not args.out and not args.preview:
        print(f"{prog}: error: give an output LMDB (with --count) and/or --preview PNG", file=sys.stderr)
        return 2
    if args.out and (args.count is None or args.count < 1):
        print(f"{prog}: error: --count N (>= 1) is required to write {args.out}", file=sys.stderr)
        return 2
    if args.out and os.path.exists(args.out) and not args.overwrite:
        print(f"{prog}: error: {args.out} already exists (use --overwrite to replace it)", file=sys.stderr)
        return 2
    for name in ("height", "preview_count", "workers", "max_length"):
        if getattr(args, name) < 1:
            print(f"{prog}: error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2
    if args.width is not None and args.width < 1 or args.start < 0:
        print(f"{prog}: error: --width must be >= 1 and --start >= 0", file=sys.stderr)
        return 2

    renderer = _renderer_from(args)  # ValueError (bad config, no font) is reported by the CLI entry point
    print(f"{prog}: {len(renderer.fonts)} fonts, charset of {len(renderer.charset)}, seed {args.seed}",
          file=sys.stderr)
    if args.preview:
        from ..data.montage import make_montage
        items = [_render(renderer, args.seed, args.start + k, args.width) for k in range(args.preview_count)]
        cell_w = args.width or 4 * args.height
        make_montage(items, columns=4, cell_height=args.height, cell_width=cell_w).save(args.preview)
        print(f"{prog}: preview of {len(items)} samples written to {args.preview}")
    if args.out:
        from ..data.datasets import write_lmdb
        start = time.perf_counter()
        try:
            written = write_lmdb(args.out, _progress(_samples(args, renderer), args.count),
                                 overwrite=args.overwrite)
        except BrokenProcessPool as e:
            print(f"{prog}: error: a render worker process died ({e}); {args.out} was not written (the LMDB "
                  "only takes its name when complete)", file=sys.stderr)
            return 1
        seconds = time.perf_counter() - start
        from ..data.synth import config_to_dict
        meta = {"count": written, "seed": args.seed, "start": args.start, "charset": renderer.charset,
                "max_length": args.max_length, "height": args.height, "width": args.width,
                "format": args.image_format, "fonts": [f.path for f in renderer.fonts.fonts],
                "config": config_to_dict(renderer.config)}
        with open(os.path.join(args.out, "synth.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, ensure_ascii=False)
        print(f"{prog}: wrote {written} samples to {args.out} in {seconds:.1f} s "
              f"({written / max(seconds, 1e-9):.0f} images/s, {args.workers} worker(s))")
    return 0


def _progress(items: Iterator, total: int) -> Iterator:
    """Wrap with a tqdm bar on an interactive stderr; plain iteration otherwise."""
    if not sys.stderr.isatty():
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, total=total, unit="img", desc="synth", file=sys.stderr)
