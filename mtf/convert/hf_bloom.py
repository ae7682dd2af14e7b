"""Hugging Face `BloomForCausalLM` <-> mtf's BLOOM: config fields and parameter names.

HF fuses query, key and value into one `query_key_value` Linear whose outputs are laid
out per head as [heads, 3, head_dim]; mtf keeps three kernels [emb, heads x head_dim]
(and their biases), so the fused weight is split on load and rebuilt on export. Every
other matrix is transposed one way (torch's [out, in] vs T5X-style [in, out]).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
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
from mtf.model.bloom import BloomConfig
from mtf.model.params import flat_shapes, unscan_params

Params = dict[str, Any]

# mtf's path inside `decoder/layers_N` -> HF's name inside `transformer.h.N` (weights
# transposed; norm scales and biases as they are)
_LAYER_NAMES = {
    ("pre_attention_layer_norm", "scale"): "input_layernorm.weight",
    ("pre_attention_layer_norm", "bias"): "input_layernorm.bias",
    ("attention", "out", "kernel"): "self_attention.dense.weight",
    ("attention", "out", "bias"): "self_attention.dense.bias",
    ("pre_mlp_layer_norm", "scale"): "post_attention_layernorm.weight",
    ("pre_mlp_layer_norm", "bias"): "post_attention_layernorm.bias",
    ("mlp", "wi", "kernel"): "mlp.dense_h_to_4h.weight",
    ("mlp", "wi", "bias"): "mlp.dense_h_to_4h.bias",
    ("mlp", "wo", "kernel"): "mlp.dense_4h_to_h.weight",
    ("mlp", "wo", "bias"): "mlp.dense_4h_to_h.bias",
}
_OUTSIDE = {
    "token_embedder/embedding": "transformer.word_embeddings.weight",
    "embedding_norm/scale": "transformer.word_embeddings_layernorm.weight",
    "embedding_norm/bias": "transformer.word_embeddings_layernorm.bias",
    "decoder/final_norm/scale": "transformer.ln_f.weight",
    "decoder/final_norm/bias": "transformer.ln_f.bias",
}
_QKV = ("query", "key", "value")


def config_from_hf(hf: Mapping[str, Any]) -> BloomConfig:
    """mtf's BloomConfig from an HF `config.json` of model_type 'bloom'."""
    if hf.get("model_type") != "bloom":
        raise CheckpointError(f"config.json has model_type {hf.get('model_type')!r}, not "
                              "'bloom'")
    if hf.get("apply_residual_connection_post_layernorm"):
        raise CheckpointError("BLOOM checkpoints with apply_residual_connection_post_layernorm "
                              "are not supported (every released BLOOM has it false)")
    bos = hf.get("bos_token_id", 1)
    return BloomConfig(
        vocab_size=int(hf["vocab_size"]), emb_dim=int(hf.get("hidden_size", hf.get("n_embed"))),
        num_heads=int(hf.get("n_head", hf.get("num_attention_heads"))),
        num_layers=int(hf.get("n_layer", hf.get("num_hidden_layers"))),
        layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
        bos_token_id=None if bos is None else int(bos),
        eos_token_id=int(hf.get("eos_token_id", 2)))


def config_to_hf(config: BloomConfig) -> dict[str, Any]:
    """HF's config.json for `config` (`BloomForCausalLM`, float32 weights)."""
    return {"architectures": ["BloomForCausalLM"], "model_type": "bloom",
            "vocab_size": config.vocab_size, "hidden_size": config.emb_dim,
            "n_head": config.num_heads, "n_layer": config.num_layers,
            "layer_norm_epsilon": config.layer_norm_epsilon,
            "apply_residual_connection_post_layernorm": False,
            "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
            "tie_word_embeddings": True, "torch_dtype": "float32"}


def _expected_hf_shapes(config: BloomConfig) -> dict[str, tuple[int, ...]]:
    shapes = flat_shapes(config)
    out = {hf: shapes[mtf] for mtf, hf in _OUTSIDE.items()}
    e = config.emb_dim
    for i in range(config.num_layers):
        for path, hf_name in _LAYER_NAMES.items():
            shape = shapes[f"decoder/layers_{i}/{'/'.join(path)}"]
            out[f"transformer.h.{i}.{hf_name}"] = shape[::-1] if path[-1] == "kernel" else shape
        out[f"transformer.h.{i}.self_attention.query_key_value.weight"] = (3 * e, e)
        out[f"transformer.h.{i}.self_attention.query_key_value.bias"] = (3 * e,)
    return out


def params_from_hf(tensors: Mapping[str, np.ndarray], config: BloomConfig) -> Params:
    """mtf's unscanned float32 parameter tree from HF's state dict (numpy arrays)."""

    def take(name: str) -> np.ndarray:
        if name not in tensors:
            raise CheckpointError(f"the HF checkpoint has no tensor {name!r}")
        return np.asarray(tensors[name], np.float32)

    heads, head_dim, emb = config.num_heads, config.head_dim, config.emb_dim
    flat = {tuple(mtf.split("/")): take(hf) for mtf, hf in _OUTSIDE.items()}
    for i in range(config.num_layers):
        prefix = f"transformer.h.{i}."
        for path, hf_name in _LAYER_NAMES.items():
            value = take(prefix + hf_name)
            flat[("decoder", f"layers_{i}", *path)] = value.T if path[-1] == "kernel" else value
        fused = take(prefix + "self_attention.query_key_value.weight").reshape(
            heads, 3, head_dim, emb)
        fused_bias = take(prefix + "self_attention.query_key_value.bias").reshape(
            heads, 3, head_dim)
        for j, name in enumerate(_QKV):
            attention = ("decoder", f"layers_{i}", "attention", name)
            flat[(*attention, "kernel")] = fused[:, j].reshape(heads * head_dim, emb).T
            flat[(*attention, "bias")] = fused_bias[:, j].reshape(heads * head_dim)
    return traverse_util.unflatten_dict(flat)


def lora_modules(config: BloomConfig) -> dict[str, tuple[str, int | None]]:
    """mtf kernel path (unscanned) -> (HF module name, its slot in the fused
    query_key_value or None) for the kernels LoRA can target: what PEFT adapts."""
    out: dict[str, tuple[str, int | None]] = {}
    for i in range(config.num_layers):
        layer, prefix = f"decoder/layers_{i}/", f"transformer.h.{i}."
        for path, hf_name in _LAYER_NAMES.items():
            if path[-1] == "kernel":
                out[layer + "/".join(path)] = (prefix + hf_name[:-len(".weight")], None)
        for slot, name in enumerate(_QKV):
            out[f"{layer}attention/{name}/kernel"] = (
                prefix + "self_attention.query_key_value", slot)
    return out


def fuse_lora_b(parts: list[np.ndarray], config: BloomConfig) -> np.ndarray:
    """PEFT's lora_B [3 emb, 3r] of the fused query_key_value from mtf's query, key and
    value lora_b ([r, emb] each): block j of the rank feeds only slot j of every head."""
    heads, head_dim = config.num_heads, config.head_dim
    rank = parts[0].shape[0]
    fused = np.zeros((heads, 3, head_dim, 3 * rank), np.float32)
    for slot, b in enumerate(parts):
        fused[:, slot, :, slot * rank:(slot + 1) * rank] = b.T.reshape(heads, head_dim, rank)
    return fused.reshape(3 * config.emb_dim, 3 * rank)


def split_lora_b(fused: np.ndarray, config: BloomConfig) -> list[np.ndarray]:
    """mtf's query, key and value lora_b ([r, emb]) of PEFT's fused lora_B [3 emb, r]."""
    heads, head_dim = config.num_heads, config.head_dim
    rows = fused.reshape(heads, 3, head_dim, fused.shape[-1])
    return [rows[:, slot].reshape(heads * head_dim, -1).T.copy() for slot in range(3)]


def params_to_hf(params: Params, config: BloomConfig) -> dict[str, np.ndarray]:
    """HF's state dict (float32 numpy) from mtf's unscanned parameter tree."""
    flat = {k: np.asarray(v, np.float32)
            for k, v in traverse_util.flatten_dict(params, sep="/").items()}
    check_names_and_shapes({k: v.shape for k, v in flat.items()}, flat_shapes(config),
                           "the parameters given to params_to_hf")
    heads, head_dim, emb = config.num_heads, config.head_dim, config.emb_dim
    out = {hf: flat[mtf] for mtf, hf in _OUTSIDE.items()}
    for i in range(config.num_layers):
        layer, prefix = f"decoder/layers_{i}/", f"transformer.h.{i}."
        for path, hf_name in _LAYER_NAMES.items():
            value = flat[layer + "/".join(path)]
            out[prefix + hf_name] = value.T if path[-1] == "kernel" else value
        kernels = [flat[f"{layer}attention/{n}/kernel"].T.reshape(heads, head_dim, emb)
                   for n in _QKV]
        biases = [flat[f"{layer}attention/{n}/bias"].reshape(heads, head_dim) for n in _QKV]
        out[prefix + "self_attention.query_key_value.weight"] = np.stack(
            kernels, axis=1).reshape(3 * emb, emb)
        out[prefix + "self_attention.query_key_value.bias"] = np.stack(
            biases, axis=1).reshape(3 * emb)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def load_hf_bloom(path: str | os.PathLike) -> tuple[BloomConfig, Params]:
    """A local HF BloomForCausalLM directory as (BloomConfig, float32 params); names and
    shapes checked against the config first, every problem in one error. Hub BLOOM
    checkpoints were saved from `BloomModel`: their names lack `transformer.`."""
    path = Path(path)
    config = config_from_hf(read_config(path))
    source = TensorSource(path)
    saved_from_base = not any(k.startswith("transformer.") for k in source.shapes)
    tensors = LazyTensors(source, "transformer." if saved_from_base else "")
    check_names_and_shapes(tensors.shapes, _expected_hf_shapes(config), str(path),
                           ignored=["lm_head.weight"])
    return config, params_from_hf(tensors, config)


def save_hf_bloom(config: BloomConfig, params: Params, path: str | os.PathLike,
                  max_shard_bytes: int = 2 << 30, vocabulary: str | None = None) -> None:
    """A folder `BloomForCausalLM.from_pretrained` loads (same logits). BLOOM's tokenizer
    is a `tokenizers` BPE file (tokenizer.json), copied when `vocabulary` is one."""
    path = Path(path)
    if config.scan_layers:
        params = unscan_params(params, config.replace(scan_layers=False))
        config = config.replace(scan_layers=False)
    write_safetensors(path, iter(params_to_hf(params, config).items()), max_shard_bytes)
    (path / "config.json").write_text(json.dumps(config_to_hf(config), indent=2))
    if vocabulary and vocabulary.endswith(".json"):
        (path / "tokenizer.json").write_bytes(storage.read_bytes(vocabulary))
    usual_modes(path)
