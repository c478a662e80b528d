"""Model weights on disk: safetensors + resolved config + charset; bundled names; checkpoint import; finetuning.

A distribution file `<name>.safetensors` holds the model's tensors (fp32 or fp16) and, in its metadata, the
resolved `model:` config as JSON (with the charset written out as the literal string, so the file never
depends on a charset file or a built-in name). A `<name>.json` sidecar repeats the config for people and tools.

Loading never unpickles arbitrary objects: safetensors holds only tensors and strings, and training
checkpoints (.ckpt) are read with `torch.load(weights_only=True)`, which refuses any pickled class or
function, so a checkpoint downloaded from the internet cannot run code.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, Sequence

import torch
from torch import nn

from masterocr import __version__
from masterocr.charset import load_charset
from masterocr.config import resolve_shipped, shipped_names

BUNDLED_DIR = Path(__file__).resolve().parent / "weights"
FORMAT_NAME = "masterocr"
FORMAT_VERSION = 1
# Keys a training checkpoint (masterocr.training) stores next to Lightning's own.
CKPT_CONFIG_KEY = "masterocr_config"  # the full resolved run config, plain dict
CKPT_EMA_KEY = "masterocr_ema_state_dict"  # EMA copy of the model's weights, when EMA is on
CKPT_MODEL_PREFIX = "model."  # the LightningModule holds the pure model as `self.model`
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


class WeightsError(ValueError):
    """A weights file that cannot be used; the message names the file."""


# ---- config helpers ------------------------------------------------------------------------------------

def _plain(cfg: Any) -> dict:
    """DictConfig / Mapping -> plain, resolved dict (JSON-serialisable)."""
    try:
        from omegaconf import DictConfig, OmegaConf
        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if not isinstance(cfg, Mapping):
        raise TypeError(f"model config must be a mapping, got {type(cfg).__name__}")
    return json.loads(json.dumps(dict(cfg)))


def resolve_model_config(model_cfg: Any) -> dict:
    """The `model:` section as a plain dict with `charset` replaced by the literal characters.

    "94" or a path to a charset file becomes the string itself, so the saved config is self-contained.
    """
    cfg = _plain(model_cfg)
    if "charset" not in cfg:
        raise ValueError("model config has no `charset`")
    cfg["charset"] = load_charset(cfg["charset"])
    return cfg


def _build(model_cfg: dict) -> nn.Module:
    from masterocr.models import build_model  # imported late: weights.py is imported by models' users
    return build_model(model_cfg)


# ---- saving ---------------------------------------------------------------------------------------------

def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(file)` on a temporary file in `path`'s folder, fsync it, then rename it over `path`
    (os.replace is atomic on POSIX): a kill at any moment leaves the old file or the new one, never half."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # name the file asked for, not the temporary one
        raise OSError(e.errno, f"cannot write here ({e.strerror})", str(path)) from None
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def model_tensors(state_dict: Mapping[str, torch.Tensor], dtype: str | torch.dtype | None = None
                  ) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies (safetensors refuses shared storage); floating tensors cast to `dtype`."""
    target = _DTYPES[dtype] if isinstance(dtype, str) else dtype
    out = {}
    for key, value in state_dict.items():
        t = value.detach().to("cpu")
        if target is not None and t.is_floating_point():
            t = t.to(target)
        out[key] = t.contiguous().clone()
    return out


def save_weights(model: nn.Module | Mapping[str, torch.Tensor], model_cfg: Any, path: str | os.PathLike,
                 dtype: str = "fp32", extra: Mapping[str, Any] | None = None) -> Path:
    """Write `path` (.safetensors) with the resolved model config in its metadata and a `.json` sidecar.

    `model` is the pure model (or its state dict); training-only parts such as an auxiliary CTC head live
    on the training module, not on the model, and are therefore never saved here. `dtype` "fp16" halves the
    file for distribution; loading casts back to the model's dtype. `extra` (JSON-serialisable) is kept in
    the sidecar and metadata, e.g. training step or validation accuracy. Both files are written atomically.
    """
    from safetensors.torch import save as st_save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: weights must be saved as .safetensors")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose one of {sorted(_DTYPES)}")
    cfg = resolve_model_config(model_cfg)
    state = model.state_dict() if isinstance(model, nn.Module) else model
    tensors = model_tensors(state, dtype)
    problem = non_finite(tensors)  # after the cast: fp16 overflows to inf too
    if problem:
        raise WeightsError(f"{path}: not written: {problem}")
    info = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "masterocr_version": __version__,
        "dtype": str(_DTYPES[dtype]).replace("torch.", ""),
        "model": cfg,
        "extra": _plain(extra or {}),
    }
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "masterocr_version": __version__,
        "dtype": info["dtype"],
        "model_config": json.dumps(cfg, ensure_ascii=False),
        "extra": json.dumps(info["extra"], ensure_ascii=False),
    }
    data = st_save(tensors, metadata=metadata)
    atomic_write(path, lambda f: f.write(data))
    text = (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode()
    atomic_write(sidecar_path(path), lambda f: f.write(text))
    return path


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


# ---- reading --------------------------------------------------------------------------------------------

def bundled_names() -> list[str]:
    """Names of weights shipped in masterocr/weights/ (usable as `load_model("<name>")`)."""
    return shipped_names(BUNDLED_DIR, ".safetensors")


def resolve_weights_path(name_or_path: str | os.PathLike) -> Path:
    """An existing file, or the name of bundled weights. Raises FileNotFoundError naming the input."""
    return resolve_shipped(name_or_path, BUNDLED_DIR, ".safetensors", "weights")


def sniff_format(path: str | os.PathLike) -> str:
    """What a weights file holds, from its first bytes: "safetensors", "torch" (a torch.save zip archive),
    "pickle" (a bare Python pickle, e.g. torch's legacy format), "empty" or "unknown"."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "empty"
    if head[:4] == b"PK\x03\x04":
        return "torch"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30):
        return "safetensors"
    return "unknown"


def load_torch_file(path: str | os.PathLike, mmap: bool = False) -> Any:
    """torch.load with weights_only=True, the one way masterocr opens a torch file: tensors and plain containers
    come out; a pickle that would build another object or call a function is refused (never run), and every
    failure is a WeightsError naming the file and saying what it holds."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    kind = sniff_format(path)
    if kind == "empty":
        raise WeightsError(f"{path}: empty file, not a checkpoint")
    if kind in ("safetensors", "unknown"):
        what = "a safetensors file (name it .safetensors)" if kind == "safetensors" else "unknown content"
        raise WeightsError(f"{path}: not a torch checkpoint (neither a torch.save archive nor a pickle: {what})")
    try:  # mmap needs the zip format; a pickle is read whole
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing them itself
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and kind == "torch")
    except Exception as e:  # UnpicklingError (unsafe payload), RuntimeError/EOFError (broken archive)
        detail = next((line.strip() for line in str(e).splitlines()
                       if line.strip().startswith(("Trying to load unsupported", "Unsupported"))), "")
        detail = detail or (str(e).strip().splitlines() or [type(e).__name__])[0]
        if type(e).__name__ == "UnpicklingError" and kind == "pickle":
            raise WeightsError(f"{path}: refused: a Python pickle that the weights-only loader cannot read "
                               f"safely; it may hold code, which masterocr never executes ({detail})") from None
        if type(e).__name__ == "UnpicklingError":
            raise WeightsError(f"{path}: refused: the file holds pickled code or objects other than tensors and "
                               f"plain containers, which masterocr never executes ({detail})") from None
        raise WeightsError(f"{path}: cannot load as a weights-only torch checkpoint "
                           f"({type(e).__name__}: {detail})") from None


def _config_json(text: str, path: Path, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise WeightsError(f"{path}: {where} is not valid JSON ({e})") from None


def _open_safetensors(path: Path):
    """(metadata, safe_open context) checks; WeightsError naming the file and what it seems to hold."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        kind = sniff_format(path) if path.is_file() else "unknown"
        hint = {"torch": "; it is a torch checkpoint: name it .ckpt", "pickle": "; it is a Python pickle",
                "empty": "; the file is empty"}.get(kind, "")
        raise WeightsError(f"{path}: not a readable safetensors file ({e}){hint}") from None


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, model config) from a .safetensors file written by save_weights (config from metadata,
    or from the .json sidecar for files whose metadata lacks it)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    metadata = _open_safetensors(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable safetensors file ({e})") from None
    if "model_config" in metadata:
        cfg = _config_json(metadata["model_config"], path, "the metadata's model_config")
    elif sidecar_path(path).is_file():
        try:
            sidecar = _config_json(sidecar_path(path).read_text(encoding="utf-8"), path, "the .json sidecar")
        except UnicodeDecodeError:
            raise WeightsError(f"{sidecar_path(path)}: not UTF-8 text") from None
        cfg = sidecar.get("model") if isinstance(sidecar, dict) else None
    else:
        cfg = None
    if not isinstance(cfg, dict):
        raise WeightsError(f"{path}: no model config in the metadata and no {sidecar_path(path).name} sidecar")
    return tensors, cfg


def read_model_config(name_or_path: str | os.PathLike) -> dict:
    """The model config of weights without loading their tensors (safetensors metadata, or a memory-mapped
    weights-only checkpoint)."""
    path = resolve_weights_path(name_or_path)
    if path.suffix == ".safetensors":
        metadata = _open_safetensors(path)
        if "model_config" in metadata:
            cfg = _config_json(metadata["model_config"], path, "the metadata's model_config")
            if not isinstance(cfg, dict):
                raise WeightsError(f"{path}: the metadata's model_config is not a JSON object")
            return cfg
        return read_safetensors(path)[1]
    ckpt = load_torch_file(path, mmap=True)
    cfg = ckpt.get(CKPT_CONFIG_KEY, {}).get("model") if isinstance(ckpt, dict) else None
    if not isinstance(cfg, dict):
        raise WeightsError(f"{path}: checkpoint carries no masterocr config ({CKPT_CONFIG_KEY!r})")
    return cfg


def read_checkpoint(path: str | os.PathLike, use_ema: bool = True) -> tuple[dict[str, torch.Tensor], dict, dict]:
    """(model tensors, model config, full run config) from a masterocr training checkpoint (.ckpt).

    Loaded with weights_only=True: only tensors and plain containers can come out, never code. The EMA
    weights are returned when the checkpoint has them and `use_ema` (they are what EMA is for).
    """
    path = Path(path)
    ckpt = load_torch_file(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise WeightsError(f"{path}: not a training checkpoint (no state_dict)")
    run_cfg = ckpt.get(CKPT_CONFIG_KEY)
    if not isinstance(run_cfg, dict) or not isinstance(run_cfg.get("model"), dict):
        raise WeightsError(f"{path}: checkpoint carries no masterocr config ({CKPT_CONFIG_KEY!r})")
    if use_ema and isinstance(ckpt.get(CKPT_EMA_KEY), dict):
        tensors = dict(ckpt[CKPT_EMA_KEY])
    else:
        n = len(CKPT_MODEL_PREFIX)
        tensors = {k[n:]: v for k, v in ckpt["state_dict"].items() if k.startswith(CKPT_MODEL_PREFIX)}
    if not tensors:
        raise WeightsError(f"{path}: checkpoint holds no model weights")
    return tensors, run_cfg["model"], run_cfg


def non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """'tensor KEY holds N NaN or infinite value(s) of M' for the first such tensor, else None."""
    for key, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            return f"tensor {key!r} holds {bad} NaN or infinite value(s) of {value.numel()}"
    return None


def check_finite(tensors: Mapping[str, torch.Tensor], source: str | os.PathLike) -> None:
    """WeightsError naming the first tensor that holds NaN or infinity: such weights read every image as
    garbage (empty text, confidence nan) and fine-tune into more of it."""
    problem = non_finite(tensors)
    if problem:
        raise WeightsError(f"{source}: {problem}: these weights are broken (from a diverged run?); "
                           "use an earlier checkpoint")


def read_weights(name_or_path: str | os.PathLike, use_ema: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, model config) from a bundled name, a .safetensors file or a .ckpt checkpoint; the tensors are
    checked to be finite. A file with another suffix is read by what its first bytes say it is."""
    path = resolve_weights_path(name_or_path)
    kind = path.suffix
    if kind not in (".safetensors", ".ckpt", ".pt", ".pth"):
        kind = {"safetensors": ".safetensors", "torch": ".ckpt", "pickle": ".ckpt"}.get(sniff_format(path), "")
    if kind == ".safetensors":
        tensors, model_cfg = read_safetensors(path)
    elif kind in (".ckpt", ".pt", ".pth"):
        tensors, model_cfg, _ = read_checkpoint(path, use_ema=use_ema)
    else:
        raise WeightsError(f"{path}: unknown weights format (expected .safetensors or a .ckpt checkpoint)")
    check_finite(tensors, path)
    return tensors, model_cfg


def check_fits(tensors: Mapping[str, torch.Tensor], model_cfg: Mapping, source: str | os.PathLike) -> None:
    """WeightsError when the tensors are not those of the model their own config describes (another charset
    or architecture than the config claims): names the first tensor that differs."""
    try:
        expected = {k: tuple(v.shape) for k, v in _build(dict(model_cfg)).state_dict().items()}
    except (ValueError, TypeError, KeyError) as e:
        raise WeightsError(f"{source}: its model config does not describe a model ({e})") from None
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise WeightsError(f"{source}: lacks {len(missing)} tensor(s) of the model its config describes, "
                           f"e.g. {missing[0]!r}")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise WeightsError(f"{source}: tensor {key!r} has shape {tuple(tensors[key].shape)}, but the model its "
                               f"config describes (charset of {len(load_charset(model_cfg['charset']))}) needs "
                               f"{shape}: the config does not match the weights")


def average_weights(sources: Sequence[str | os.PathLike], use_ema: bool = True
                    ) -> tuple[dict[str, torch.Tensor], dict]:
    """(mean tensors, model config) of several weights of one model: a uniform "soup" of runs that started
    from the same weights, or of one run's last checkpoints. Floating tensors are averaged in fp64; integer
    buffers are taken from the first source. Raises WeightsError naming the source that does not match."""
    if len(sources) < 2:
        raise ValueError(f"averaging needs at least two weights, got {len(sources)}")
    first, cfg = read_weights(sources[0], use_ema)
    reference = resolve_model_config(cfg)
    sums = {k: v.double() if v.is_floating_point() else v for k, v in first.items()}
    for source in sources[1:]:
        tensors, other = read_weights(source, use_ema)
        if resolve_model_config(other) != reference:
            changed = sorted(k for k in set(reference) | set(other) if reference.get(k) != other.get(k))
            raise WeightsError(f"{source}: model config differs from {sources[0]} in {', '.join(changed)}")
        if tensors.keys() != sums.keys():
            raise WeightsError(f"{source}: holds other tensors than {sources[0]}")
        for key, value in tensors.items():
            if value.shape != sums[key].shape:
                raise WeightsError(f"{source}: {key} has shape {tuple(value.shape)}, "
                                   f"{sources[0]} has {tuple(sums[key].shape)}")
            if value.is_floating_point():
                sums[key] += value.double()
    n = len(sources)
    return {k: (v / n).float() if v.is_floating_point() else v for k, v in sums.items()}, cfg


def load_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu",
               use_ema: bool = True) -> tuple[nn.Module, dict]:
    """Build the model described by the weights' own config, load the tensors, return (model in eval mode,
    model config dict). Accepts a bundled name, a .safetensors path or a training checkpoint (.ckpt)."""
    tensors, model_cfg = read_weights(name_or_path, use_ema=use_ema)
    try:
        model = _build(model_cfg)
    except (ValueError, TypeError, KeyError) as e:
        raise WeightsError(f"{name_or_path}: its model config does not describe a model ({e})") from None
    try:
        model.load_state_dict(tensors, strict=True)  # copies (and casts fp16 -> the model's dtype)
    except RuntimeError as e:
        raise WeightsError(f"{name_or_path}: weights do not fit the model their config describes: {e}") from None
    return model.to(device).eval(), model_cfg


# ---- finetuning with another charset --------------------------------------------------------------------

def token_id_map(src_tokenizer: Any, dst_tokenizer: Any) -> dict[int, int]:
    """{target token id: source token id} for ids that mean the same thing in both tokenizers: the special
    tokens (EOS/BOS/PAD or CTC blank) and every character both charsets share."""
    mapping: dict[int, int] = {}
    for special in ("eos_id", "bos_id", "pad_id", "blank_id"):
        if hasattr(src_tokenizer, special) and hasattr(dst_tokenizer, special):
            mapping[getattr(dst_tokenizer, special)] = getattr(src_tokenizer, special)
    src_index = {c: i for i, c in enumerate(src_tokenizer.charset)}
    for i, c in enumerate(dst_tokenizer.charset):
        if c in src_index:
            mapping[i + 1] = src_index[c] + 1  # characters are ids 1..N in both tokenizer kinds
    return mapping


def _token_indexed_params(model: nn.Module) -> dict[str, str]:
    """{state-dict key: "tokens" | "classes"} for tensors whose rows are indexed by token id: embedding
    tables sized by the vocabulary and classifier layers (weight rows and bias) sized by the classes."""
    tok = model.tokenizer
    sizes = {"tokens": getattr(tok, "num_tokens", None), "classes": tok.num_classes}
    found: dict[str, str] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Embedding):
            for kind, n in sizes.items():
                if module.num_embeddings == n:
                    found[prefix + "weight"] = kind
                    break
        elif isinstance(module, nn.Linear) and module.out_features == sizes["classes"]:
            found[prefix + "weight"] = "classes"
            if module.bias is not None:
                found[prefix + "bias"] = "classes"
    return found


def finetune_state_dict(model: nn.Module, src_tensors: Mapping[str, torch.Tensor], src_model_cfg: Mapping
                        ) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """A state dict for `model` built from weights trained with another (or the same) charset.

    Tensors indexed by token id (embedding rows, classifier rows and bias) take the rows of the special
    tokens and of the characters both charsets share from the source; the other rows keep `model`'s fresh
    initialisation. Every other tensor is copied and must match in shape (a different architecture is an
    error naming the tensor). Returns (state dict, stats: shared characters, new characters, tensors remapped).
    """
    from masterocr.charset import AttentionTokenizer, CTCTokenizer

    dst_tok = model.tokenizer
    kind = CTCTokenizer if isinstance(dst_tok, CTCTokenizer) else AttentionTokenizer
    src_tok = kind(load_charset(src_model_cfg["charset"]), dst_tok.max_length)
    mapping = token_id_map(src_tok, dst_tok)
    same_charset = src_tok.charset == dst_tok.charset
    indexed = {} if same_charset else _token_indexed_params(model)
    src_sizes = {"tokens": getattr(src_tok, "num_tokens", None), "classes": src_tok.num_classes}

    target = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    missing = [k for k in target if k not in src_tensors]
    if missing:
        raise WeightsError(f"finetune: source weights lack {len(missing)} tensors of the model, e.g. {missing[0]!r}")
    remapped = 0
    for key, dst in target.items():
        src = src_tensors[key]
        if key in indexed and src.shape[0] == src_sizes[indexed[key]] and src.shape[1:] == dst.shape[1:]:
            new = dst.detach().clone()
            rows_dst = [d for d in mapping if d < dst.shape[0]]
            rows_src = [mapping[d] for d in rows_dst]
            new[rows_dst] = src[rows_src].to(new.dtype)
            out[key] = new
            remapped += 1
        elif src.shape == dst.shape:
            out[key] = src.to(dst.dtype)
        else:
            raise WeightsError(f"finetune: tensor {key!r} has shape {tuple(src.shape)} in the source weights but "
                               f"{tuple(dst.shape)} in the model (different architecture, not only the charset)")
    shared = sum(1 for c in dst_tok.charset if c in src_tok.charset)
    stats = {"shared_chars": shared, "new_chars": len(dst_tok.charset) - shared, "remapped_tensors": remapped}
    return out, stats


def load_for_finetune(model: nn.Module, weights: str | os.PathLike, use_ema: bool = True) -> dict[str, int]:
    """Load `weights` (bundled name, .safetensors or .ckpt) into `model` in place, weights only (no optimizer
    or schedule), mapping rows when the charsets differ. Returns the stats of finetune_state_dict."""
    src_tensors, src_cfg = read_weights(weights, use_ema=use_ema)
    check_fits(src_tensors, src_cfg, weights)  # the rows are mapped by the charset the config claims
    state, stats = finetune_state_dict(model, src_tensors, src_cfg)
    model.load_state_dict(state, strict=True)
    return stats
