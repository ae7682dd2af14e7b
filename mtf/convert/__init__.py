"""Checkpoint formats users hold, in and out: Hugging Face, T5X, and mtf's own."""

from mtf.convert.errors import CheckpointError
from mtf.convert.hf_models import load_hf_model as load_hf
from mtf.convert.hf_models import save_hf_model as save_hf
from mtf.convert.native import load_params, save_params
from mtf.convert.t5x import infer_config, load_t5x, read_t5x_tree

__all__ = ["CheckpointError", "infer_config", "load_hf", "load_params", "load_t5x",
           "read_t5x_tree", "save_hf", "save_params"]
