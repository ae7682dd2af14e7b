"""Hugging Face model folders of every family mtf has, the family read from config.json
(`model_type`) when loading and from the config's class when saving."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mtf.convert import hf, hf_bloom, hf_llama
from mtf.convert.errors import CheckpointError
from mtf.model import BloomConfig, LlamaConfig, ModelConfig, T5Config

ENCODER_DECODER_TYPES = ("mt5", "t5", "umt5")


def model_type(path: str | os.PathLike) -> str:
    return str(hf.read_config(Path(path)).get("model_type"))


def load_hf_model(path: str | os.PathLike) -> tuple[ModelConfig, Any]:
    """(config, float32 params) of a local HF folder: mT5/T5, LLaMA or BLOOM."""
    kind = model_type(path)
    if kind == "llama":
        return hf_llama.load_hf_llama(path)
    if kind == "bloom":
        return hf_bloom.load_hf_bloom(path)
    if kind in ENCODER_DECODER_TYPES:
        return hf.load_hf(path)
    raise CheckpointError(f"{path}/config.json has model_type {kind!r}; mtf reads 'mt5' / "
                          "'t5' (encoder-decoder), 'llama' and 'bloom' (decoder-only) folders")


def save_hf_model(config: ModelConfig, params: Any, path: str | os.PathLike,
                  max_shard_bytes: int = 2 << 30, vocabulary: str | None = None) -> None:
    """The folder `from_pretrained` loads for `config`'s family (same logits)."""
    if isinstance(config, LlamaConfig):
        hf_llama.save_hf_llama(config, params, path, max_shard_bytes, vocabulary)
    elif isinstance(config, BloomConfig):
        hf_bloom.save_hf_bloom(config, params, path, max_shard_bytes, vocabulary)
    elif isinstance(config, T5Config):
        hf.save_hf(config, params, path, max_shard_bytes, vocabulary)
    else:
        raise CheckpointError(f"no Hugging Face export for {type(config).__name__}")
