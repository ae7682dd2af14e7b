"""The networks (mT5: T5.1.1 encoder-decoder; LLaMA and BLOOM: decoder-only) in Flax, with T5X's
parameter names, and the model families that the rest of mtf calls."""

from mtf.model.bloom import BloomConfig
from mtf.model.config import LoraConfig, T5Config
from mtf.model.family import ModelConfig, config_from_json, family_of
from mtf.model.features import DECODER_ONLY, ENCODER_DECODER, BatchSpec
from mtf.model.llama import LlamaConfig
from mtf.model.network import Transformer, output_projection
from mtf.model.params import (
    abstract_params,
    flat_shapes,
    init_params,
    logical_axes,
    scan_params,
    unscan_params,
)

__all__ = ["DECODER_ONLY", "ENCODER_DECODER", "BatchSpec", "BloomConfig", "LlamaConfig",
           "LoraConfig",
           "ModelConfig", "T5Config", "Transformer", "config_from_json", "family_of",
           "abstract_params", "flat_shapes", "init_params", "logical_axes", "output_projection",
           "scan_params", "unscan_params"]
