"""masterocr: scene text recognition centred on MASTER."""

__version__ = "0.1.0"
