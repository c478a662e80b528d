"""YAML configs with `base:` inheritance and `key=value` command-line overrides (OmegaConf).

A variant is a small delta over its base file (`base: master.yaml`), never a copied config. Named configs
(`master`, `master-small`, ...) live in masterocr/configs/ so they ship with the package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def shipped_names(folder: Path, suffix: str) -> list[str]:
    """Names of the files `<name><suffix>` shipped in one of the package's folders."""
    return sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}")) if folder.is_dir() else []


def resolve_shipped(name_or_path: str | os.PathLike, folder: Path, suffix: str, what: str) -> Path:
    """An existing file, or the name of one shipped in `folder`. Raises FileNotFoundError naming the input."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    name = str(name_or_path)
    named = folder / (name if name.endswith(suffix) else f"{name}{suffix}")  # `base: master.yaml` names one too
    if named.is_file():
        return named
    raise FileNotFoundError(f"{what} {str(name_or_path)!r}: not a file and not one of the shipped names "
                            f"({', '.join(shipped_names(folder, suffix)) or 'none'})")


def config_names() -> list[str]:
    return shipped_names(CONFIG_DIR, ".yaml")


def resolve_config_path(name_or_path: str | os.PathLike) -> Path:
    """A path to a YAML file, or the name of a config shipped in masterocr/configs/."""
    return resolve_shipped(name_or_path, CONFIG_DIR, ".yaml", "config")


def load_config(name_or_path: str | os.PathLike, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a config, merging its `base:` chain first (paths relative to the file), then dotlist overrides."""
    path = resolve_config_path(name_or_path)
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # YAML syntax: name the file and the place
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"config {path}: not valid YAML{where}: {problem}") from None
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"config {path}: expected a mapping of sections (model:, data:, train:), "
                         f"got a {type(cfg).__name__}")
    base = cfg.pop("base", None)
    if base is not None:
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        if not base_path.is_file():
            base_path = resolve_config_path(base)
        cfg = OmegaConf.merge(load_config(base_path), cfg)
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: DictConfig, overrides: Sequence[str] = ()) -> DictConfig:
    """Apply `key=value` overrides in order. Values are parsed as YAML; dict values merge into dicts, and keys
    may index into lists (`data.train.0.weight=0.5`)."""
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} must look like key=value (e.g. train.lr=1e-4)")
        parts = key.split(".")
        for depth in range(1, len(parts)):
            parent = OmegaConf.select(cfg, ".".join(parts[:depth]))
            if parent is not None and not OmegaConf.is_config(parent):
                raise ValueError(f"override {item!r}: {'.'.join(parts[:depth])} is a value ({parent!r}), "
                                 "not a section")
        try:
            value = OmegaConf.select(OmegaConf.from_dotlist([item]), key)  # the value, parsed by YAML rules
        except Exception as e:  # YAML syntax errors (e.g. an unquoted list split by the shell)
            raise ValueError(f"override {item!r}: the value is not valid YAML "
                             f"({type(e).__name__}: {str(e).strip().splitlines()[0]})") from None
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except Exception as e:  # e.g. an index past a list's end
            raise ValueError(f"override {item!r}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    return cfg


def to_dict(cfg: DictConfig) -> dict:
    """Plain, fully resolved dict (for JSON sidecars and checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
