"""`masterocr info NAME|CONFIG|CHECKPOINT`: architecture summary of a model.

Parameters per part (backbone, GC blocks, encoder, decoder, head), input size, memory tokens, charset size,
and forward GFLOPs per image counted with torch.utils.flop_counter (matmul/conv FLOPs, 2 per multiply-add).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from masterocr.cli.common import positive_int

WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")

# Top-level attribute -> part name; anything else is reported under its own attribute name.
PARTS = {"backbone": "backbone", "memory_proj": "encoder", "memory_pos": "encoder", "encoder": "encoder",
         "encoder_norm": "encoder", "embed": "decoder", "target_pos": "decoder", "decoder": "decoder",
         "norm": "decoder", "head": "head", "pos_queries": "decoder"}
PART_ORDER = ["backbone", "GC blocks", "encoder", "decoder", "head"]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="architecture summary: parameters per part, input size, memory tokens, GFLOPs",
        description="Summarise a model given as a config name (e.g. master, master-tiny), a YAML config file, "
                    "bundled weights, a .safetensors file or a training checkpoint. A name that is both bundled "
                    "weights and a config (master-small) describes the bundled weights: what `read` uses.")
    p.add_argument("model", metavar="NAME|CONFIG|CHECKPOINT")
    p.add_argument("--img-size", type=positive_int, nargs=2, metavar=("H", "W"),
                   help="count memory tokens and FLOPs at this input size instead of the model's own")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run)


def load_any(spec: str):
    """(model, model config dict, source description) from a config name/file or weights."""
    from masterocr.config import config_names, load_config, to_dict
    from masterocr.models import build_model

    from masterocr.weights import bundled_names

    path = Path(spec)
    is_weights = path.suffix in WEIGHT_SUFFIXES or (spec in bundled_names() and not path.exists())
    if not is_weights and (spec in config_names() or path.suffix in (".yaml", ".yml")):
        cfg = load_config(spec)
        if "model" not in cfg:
            raise ValueError(f"config {spec!r} has no model: section")
        model_cfg = to_dict(cfg.model)
        return build_model(model_cfg), model_cfg, f"config {spec} (random weights)"
    try:
        from masterocr import weights
    except ImportError:
        raise ValueError(f"{spec!r} is not a config name or YAML file, and reading weights needs "
                         f"masterocr.weights") from None
    try:
        model, model_cfg = weights.load_model(spec)
    except FileNotFoundError:
        raise FileNotFoundError(f"{spec!r} is neither a config (names: {config_names()}), a YAML file, "
                                f"bundled weights ({weights.bundled_names() or 'none'}) nor a weights file") from None
    if spec in bundled_names() and not path.exists():
        same = spec in config_names() and _same_architecture(spec, model_cfg)
        note = f"; config {spec}.yaml describes the same model" if same else ""
        return model, model_cfg, f"bundled weights {spec} (what `read` and `load()` use{note})"
    return model, model_cfg, f"weights {spec}"


def _same_architecture(config_name: str, model_cfg: dict) -> bool:
    from masterocr.config import load_config, to_dict
    from masterocr.weights import resolve_model_config

    return resolve_model_config(to_dict(load_config(config_name).model)) == resolve_model_config(model_cfg)


def summary_name(model_cfg: dict) -> str:
    return f"model {model_cfg.get('name')!r}"


def parameter_parts(model) -> dict[str, int]:
    """Parameters per part; GC blocks are taken out of whatever part holds them."""
    from masterocr.models.layers import MultiAspectGCBlock

    parts: dict[str, int] = {}
    own = [(name, [p]) for name, p in model.named_parameters(recurse=False)]  # e.g. PARSeq's pos_queries
    for name, params in [(name, list(child.parameters())) for name, child in model.named_children()] + own:
        n = sum(p.numel() for p in params)
        if n:
            part = PARTS.get(name, name)
            parts[part] = parts.get(part, 0) + n
    gc = [(name, m) for name, m in model.named_modules() if isinstance(m, MultiAspectGCBlock)]
    for name, block in gc:
        n = sum(p.numel() for p in block.parameters())
        top = PARTS.get(name.split(".")[0], name.split(".")[0])
        parts[top] -= n
        parts["GC blocks"] = parts.get("GC blocks", 0) + n
    ordered = {k: parts[k] for k in PART_ORDER if k in parts}
    ordered.update({k: v for k, v in parts.items() if k not in ordered})
    return ordered


def count_flops(model, height: int, width: int) -> dict[str, float]:
    """GFLOPs per image: encoder, one cached decoder step, and a full read of a max-length word."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    def flops(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / 1e9

    images = torch.zeros(1, model.in_channels, height, width)
    out: dict[str, float] = {}
    steps = getattr(model, "max_steps", 0)
    with torch.no_grad():  # not inference_mode: views of parameters made there trip the FLOP counter's hooks
        if hasattr(model, "decode_step"):
            memory = model.encode(images)
            out["encoder"] = flops(lambda: model.encode(images))
            out["cache setup (memory K/V, once)"] = flops(lambda: model.init_cache(memory))
            cache = model.init_cache(memory)
            token = torch.full((1,), model.tokenizer.bos_id)
            out["decoder step (cached)"] = flops(lambda: model.decode_step(token, torch.tensor(0), cache, False))
            out[f"read, {steps} cached steps (total)"] = (out["encoder"] + out["cache setup (memory K/V, once)"]
                                                        + steps * out["decoder step (cached)"])
            targets = torch.full((1, steps), model.tokenizer.bos_id)
            out[f"training forward, {steps} positions"] = flops(lambda: model(images, targets))
        if hasattr(model, "decode_parallel"):  # non-autoregressive: every position in one pass
            memory = model.encode(images)
            out.setdefault("encoder", flops(lambda: model.encode(images)))
            out[f"NAR pass, {steps} positions"] = flops(lambda: model.decode_parallel(memory, steps))
            out["NAR read (total)"] = out["encoder"] + out[f"NAR pass, {steps} positions"]
        if hasattr(model, "refine"):
            ids = torch.zeros((1, steps), dtype=torch.long)
            out[f"refinement pass, {steps} positions"] = flops(lambda: model.refine(memory, ids))
            iters = int(getattr(model, "refine_iters", 0) or 0)
            if iters and hasattr(model, "decode_step"):
                out[f"AR read + {iters} refinement (total)"] = (out[f"read, {steps} cached steps (total)"]
                                                               + iters * out[f"refinement pass, {steps} positions"])
            if iters:
                out[f"NAR read + {iters} refinement (total)"] = (out["NAR read (total)"]
                                                                + iters * out[f"refinement pass, {steps} positions"])
        if not out:
            out["forward"] = flops(lambda: model(images))
    return out


def run(args: argparse.Namespace) -> int:
    model, model_cfg, source = load_any(args.model)
    model.eval()
    height, width = args.img_size or model.img_size
    if hasattr(model, "feature_size"):
        fh, fw = model.feature_size(height, width)
        memory = {"feature_map": [fh, fw], "tokens": fh * fw}
    else:
        memory = None
    tok = model.tokenizer
    parts = parameter_parts(model)
    total = sum(p.numel() for p in model.parameters())
    try:
        gflops = count_flops(model, height, width)
    except RuntimeError as e:  # e.g. --img-size smaller than the CNN's downsampling
        raise ValueError(f"input size {height}x{width}: {summary_name(model_cfg)} cannot run on it "
                         f"({str(e).strip().splitlines()[0]})") from None
    summary = {
        "source": source, "name": model_cfg.get("name"), "parameters": total, "parameters_per_part": parts,
        "input_size": [model.in_channels, height, width], "memory": memory,
        "charset_size": len(tok.charset), "num_classes": tok.num_classes, "max_label_length": tok.max_length,
        "gflops_per_image": {k: round(v, 4) for k, v in gflops.items()},
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{args.model}: model {summary['name']!r}, {source}")
    print(f"  input            {model.in_channels} x {height} x {width}")
    if memory:
        print(f"  memory           {fh} x {fw} = {fh * fw} tokens")
    print(f"  charset          {len(tok.charset)} characters, {tok.num_classes} classes, "
          f"max label length {tok.max_length}")
    print(f"  parameters       {total:,} ({total / 1e6:.2f} M)")
    for part, n in parts.items():
        print(f"    {part:<14} {n:>12,}  {100 * n / total:5.1f}%")
    print("  GFLOPs per image")
    for what, g in gflops.items():
        print(f"    {what:<38} {g:9.3f}")
    return 0
