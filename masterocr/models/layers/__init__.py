"""Reusable building blocks: attention with a K/V cache, positional encodings, MAGC block, ResNet-31, ViT."""

from .attention import KVCache, MultiHeadAttention, causal_mask, step_mask
from .gc_block import MultiAspectGCBlock
from .positional import PositionalEncoding, sinusoidal_table
from .resnet31 import BasicBlock, ResNet31, fold_batchnorm
from .transformer import DecoderLayer, EncoderLayer, FeedForward

__all__ = ["KVCache", "MultiHeadAttention", "causal_mask", "step_mask", "MultiAspectGCBlock", "PositionalEncoding",
           "sinusoidal_table", "BasicBlock", "ResNet31", "fold_batchnorm", "DecoderLayer", "EncoderLayer", "FeedForward"]
