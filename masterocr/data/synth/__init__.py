"""The built-in synthetic word-image engine: text sources, font coverage check, renderer, torch Dataset.

    from masterocr.data.synth import SyntheticDataset
    ds = SyntheticDataset("94", ImageTransform(32, 100), seed=0)
    image, label, name = ds[123]          # the same for this seed and index in any process
"""

from .config import Effect, SynthConfig, build_config, config_to_dict
from .dataset import SyntheticDataset
from .fonts import FontSet, check_font, default_font_paths, find_font_files
from .render import Renderer, build_fonts, sample_rng
from .text import TextSampler

__all__ = ["Effect", "SynthConfig", "build_config", "config_to_dict", "SyntheticDataset", "FontSet",
           "check_font", "default_font_paths", "find_font_files", "Renderer", "build_fonts", "sample_rng", "TextSampler"]
