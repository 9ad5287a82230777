"""Thin modules built on :mod:`pointwin.ops`: positional encodings, attention over a Partition, FFN, norms, pooling,
BatchNorm folding at inference."""

from .condaformer import ConDaFormerBlock, DisassembledAttention, LocalStructureEnhancement
from .conv import FoldingSequential, conv_norm, fold_batchnorm
from .layers import FFN, PartitionAttention, build_activation, build_norm1d
from .pooling import AttentionPool, PoolingMap, pooling_map
from .pos_embed import LearnedPositionEncoding, SinusoidalPositionEncoding, sinusoidal_encoding

__all__ = ["FFN", "AttentionPool", "FoldingSequential", "conv_norm", "fold_batchnorm",
           "ConDaFormerBlock", "DisassembledAttention", "LocalStructureEnhancement",
           "LearnedPositionEncoding", "PartitionAttention", "PoolingMap",
           "SinusoidalPositionEncoding", "build_activation", "build_norm1d", "pooling_map", "sinusoidal_encoding"]
