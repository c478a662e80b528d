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


def config_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name_or_path: str | os.PathLike) -> Path:
    """A path to a YAML file, or the name of a config shipped in masterocr/configs/."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    named = CONFIG_DIR / f"{name_or_path}.yaml"
    if named.is_file():
        return named
    raise FileNotFoundError(f"config {name_or_path!r}: not a file and not one of {config_names()}")


def load_config(name_or_path: str | os.PathLike, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a config, merging its `base:` chain first (paths relative to the file), then dotlist overrides."""
    path = resolve_config_path(name_or_path)
    cfg = OmegaConf.load(path)
    base = cfg.pop("base", None)
    if base is not None:
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        if not base_path.is_file():
            base_path = resolve_config_path(base)
        cfg = OmegaConf.merge(load_config(base_path), cfg)
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ValueError(f"override {bad[0]!r} must look like key=value (e.g. train.lr=1e-4)")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    return cfg


def to_dict(cfg: DictConfig) -> dict:
    """Plain, fully resolved dict (for JSON sidecars and checkpoints)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
