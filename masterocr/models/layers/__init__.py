"""Reusable building blocks: attention with a K/V cache, positional encodings, MAGC block, ResNet-31, ViT; the
recurrent recognizers' VGG and clovaai ResNet extractors, TPS rectification, BiLSTM and attention RNN decoder."""

from .attention import KVCache, MultiHeadAttention, causal_mask, step_mask
from .clova_resnet import ClovaResNet
from .gc_block import MultiAspectGCBlock
from .positional import PositionalEncoding, sinusoidal_table
from .recurrent import AttentionRNNDecoder, BiLSTM, RNNCache, bilstm_stack
from .resnet31 import BasicBlock, ResNet31, fold_batchnorm
from .tps import TPS
from .transformer import DecoderLayer, EncoderLayer, FeedForward
from .vgg import VGG

__all__ = ["KVCache", "MultiHeadAttention", "causal_mask", "step_mask", "MultiAspectGCBlock", "PositionalEncoding",
           "sinusoidal_table", "BasicBlock", "ResNet31", "fold_batchnorm", "DecoderLayer", "EncoderLayer", "FeedForward",
           "AttentionRNNDecoder", "BiLSTM", "ClovaResNet", "RNNCache", "TPS", "VGG", "bilstm_stack"]
