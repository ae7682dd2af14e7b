"""The mT5 network (T5.1.1 architecture) in Flax, with T5X's parameter names."""

from mtf.model.config import LoraConfig, T5Config
from mtf.model.features import ENCODER_DECODER, BatchSpec
from mtf.model.network import Transformer, output_projection
from mtf.model.params import (
    abstract_params,
    flat_shapes,
    init_params,
    logical_axes,
    scan_params,
    unscan_params,
)

__all__ = ["ENCODER_DECODER", "BatchSpec", "LoraConfig", "T5Config", "Transformer",
           "abstract_params", "flat_shapes", "init_params", "logical_axes", "output_projection",
           "scan_params", "unscan_params"]
