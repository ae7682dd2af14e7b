"""Hugging Face `LlamaForCausalLM` <-> mtf's LLaMA: config fields and parameter names.

HF stores each projection as torch's Linear weight [out, in]; mtf stores T5X-style
kernels [in, out] under logical names, so every matrix is transposed one way. The tensor
mapping is a table (`_LAYER_NAMES`) read in both directions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util

from mtf import storage
from mtf.convert.errors import CheckpointError, check_names_and_shapes
from mtf.convert.hf import (
    LazyTensors,
    TensorSource,
    read_config,
    usual_modes,
    write_safetensors,
)
from mtf.model.llama import LlamaConfig, RopeScaling
from mtf.model.params import flat_shapes, unscan_params

Params = dict[str, Any]

# mtf's path inside `decoder/layers_N` -> HF's name inside `model.layers.N` (weights
# transposed, except the norm scales)
_LAYER_NAMES = {
    ("pre_attention_layer_norm", "scale"): "input_layernorm.weight",
    ("attention", "query", "kernel"): "self_attn.q_proj.weight",
    ("attention", "key", "kernel"): "self_attn.k_proj.weight",
    ("attention", "value", "kernel"): "self_attn.v_proj.weight",
    ("attention", "out", "kernel"): "self_attn.o_proj.weight",
    ("pre_mlp_layer_norm", "scale"): "post_attention_layernorm.weight",
    ("mlp", "gate", "kernel"): "mlp.gate_proj.weight",
    ("mlp", "up", "kernel"): "mlp.up_proj.weight",
    ("mlp", "down", "kernel"): "mlp.down_proj.weight",
}


def config_from_hf(hf: Mapping[str, Any]) -> LlamaConfig:
    """mtf's LlamaConfig from an HF `config.json` of model_type 'llama'."""
    if hf.get("model_type") != "llama":
        raise CheckpointError(f"config.json has model_type {hf.get('model_type')!r}, not "
                              "'llama'")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise CheckpointError("LLaMA checkpoints with attention or MLP biases are not "
                              "supported (attention_bias / mlp_bias in config.json)")
    # transformers 5 writes `rope_parameters` (theta inside); checkpoints saved before it
    # have `rope_theta` and `rope_scaling` at the top level
    scaling = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(scaling.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    rope = None
    if kind != "default":
        if kind != "llama3":
            raise CheckpointError(f"rope_scaling of type {kind!r} is not supported (only "
                                  "Llama 3's 'llama3')")
        rope = RopeScaling(float(scaling["factor"]), float(scaling["low_freq_factor"]),
                           float(scaling["high_freq_factor"]),
                           int(scaling["original_max_position_embeddings"]))
    heads = int(hf["num_attention_heads"])
    eos = hf.get("eos_token_id", 2)
    if isinstance(eos, list):  # Llama 3 instruct: several; generation stops at the first
        eos = eos[0]
    bos = hf.get("bos_token_id", 1)
    return LlamaConfig(
        vocab_size=int(hf["vocab_size"]), emb_dim=int(hf["hidden_size"]), num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads),
        mlp_dim=int(hf["intermediate_size"]), num_layers=int(hf["num_hidden_layers"]),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta, rope_scaling=rope,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        bos_token_id=None if bos is None else int(bos), eos_token_id=int(eos))


def params_from_hf(tensors: Mapping[str, np.ndarray], config: LlamaConfig) -> Params:
    """mtf's unscanned float32 parameter tree from HF's state dict (numpy arrays)."""

    def take(name: str, transpose: bool) -> np.ndarray:
        if name not in tensors:
            raise CheckpointError(f"the HF checkpoint has no tensor {name!r}")
        value = np.asarray(tensors[name], np.float32)
        return value.T if transpose else value

    flat = {tuple(mtf.split("/")): take(hf, transposed)
            for mtf, hf, transposed in hf_names(config)}
    return traverse_util.unflatten_dict(flat)


def hf_names(config: LlamaConfig) -> Iterator[tuple[str, str, bool]]:
    """(mtf path, HF name, transposed) for every tensor of `config`'s unscanned tree."""
    yield "token_embedder/embedding", "model.embed_tokens.weight", False
    yield "decoder/final_norm/scale", "model.norm.weight", False
    for i in range(config.num_layers):
        for path, hf_name in _LAYER_NAMES.items():
            yield (f"decoder/layers_{i}/{'/'.join(path)}", f"model.layers.{i}.{hf_name}",
                   path[-1] == "kernel")
    if not config.tie_word_embeddings:
        yield "logits_kernel", "lm_head.weight", True


def load_hf_llama(path: str | os.PathLike) -> tuple[LlamaConfig, Params]:
    """A local HF LlamaForCausalLM directory (config.json and safetensors or PyTorch
    weights, sharded or not) as (LlamaConfig, float32 params); names and shapes checked
    against the config first, every problem in one error."""
    path = Path(path)
    config = config_from_hf(read_config(path))
    source = TensorSource(path)
    shapes = flat_shapes(config)
    expected = {hf: shapes[mtf][::-1] if transposed else shapes[mtf]
                for mtf, hf, transposed in hf_names(config)}
    check_names_and_shapes(source.shapes, expected, str(path),
                           ignored=["lm_head.weight"] if config.tie_word_embeddings else [])
    return config, params_from_hf(LazyTensors(source), config)


def params_to_hf(params: Params, config: LlamaConfig) -> dict[str, np.ndarray]:
    """HF's state dict (float32 numpy) from mtf's unscanned parameter tree."""
    flat = traverse_util.flatten_dict(params, sep="/")
    check_names_and_shapes({k: tuple(v.shape) for k, v in flat.items()}, flat_shapes(config),
                           "the parameters given to params_to_hf")
    return {hf: np.ascontiguousarray(np.asarray(flat[mtf], np.float32).T if transposed
                                     else np.asarray(flat[mtf], np.float32))
            for mtf, hf, transposed in hf_names(config)}


def config_to_hf(config: LlamaConfig) -> dict[str, Any]:
    """HF's config.json for `config` (`LlamaForCausalLM`, float32 weights)."""
    out: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": config.vocab_size, "hidden_size": config.emb_dim,
        "intermediate_size": config.mlp_dim, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim, "rms_norm_eps": config.rms_norm_eps,
        "hidden_act": "silu", "tie_word_embeddings": config.tie_word_embeddings,
        "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
        "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
        "rope_theta": config.rope_theta,
    }
    if config.rope_scaling is not None:
        s = config.rope_scaling
        out["rope_scaling"] = {"rope_type": "llama3", "factor": s.factor,
                               "low_freq_factor": s.low_freq_factor,
                               "high_freq_factor": s.high_freq_factor,
                               "original_max_position_embeddings":
                                   s.original_max_position_embeddings}
    return out


def save_hf_llama(config: LlamaConfig, params: Params, path: str | os.PathLike,
                  max_shard_bytes: int = 2 << 30, vocabulary: str | None = None) -> None:
    """A folder `LlamaForCausalLM.from_pretrained` loads (same logits): config.json and
    safetensors (sharded with their index past `max_shard_bytes`); with `vocabulary` (a
    SentencePiece model) the tokenizer as `LlamaTokenizer` saves it."""
    path = Path(path)
    if config.scan_layers:
        params = unscan_params(params, config.replace(scan_layers=False))
        config = config.replace(scan_layers=False)
    write_safetensors(path, iter(params_to_hf(params, config).items()), max_shard_bytes)
    (path / "config.json").write_text(json.dumps(config_to_hf(config), indent=2))
    if vocabulary:
        (path / "tokenizer.model").write_bytes(storage.read_bytes(vocabulary))
        (path / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "LlamaTokenizer", "add_bos_token": config.bos_token_id
             is not None, "add_eos_token": False, "legacy": True}, indent=2))
    usual_modes(path)
