"""The decoder-only skeleton LLaMA and BLOOM share: pre-norm residual layers (norm ->
attention -> add, norm -> MLP -> add) stacked by `network.run_layers` (unscanned or
scanned, with remat) under a final norm, and the causal, segment-aware attention bias.
Each family brings its parts (`DecoderParts`: its norm, attention and MLP modules) and its
own embedding and output; the parameter tree is the same for both: `decoder/layers_N/
{pre_attention_layer_norm, attention, pre_mlp_layer_norm, mlp}` and `decoder/final_norm`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtf.model.layers import NEG_INF, constrain
from mtf.model.network import EMBED_AXES, run_layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class DecoderParts:
    """A family's modules: `norm(epsilon=, dtype=, name=)`, `attention(config,
    cache_length, name=)(x, positions, bias, cache_start)` and `mlp(config, name=)(x)`."""

    norm: type[nn.Module]
    attention: type[nn.Module]
    mlp: type[nn.Module]


def causal_segment_bias(segment_ids: Array, dtype: jnp.dtype) -> Array:
    """Additive attention bias [batch, 1, q, k]: a query sees earlier and equal positions of
    its own segment; segment 0 is padding and sees nothing it could be harmed by."""
    length = segment_ids.shape[-1]
    causal = jnp.tril(jnp.ones((length, length), bool))[None]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    allowed = causal & same & (segment_ids[:, None, :] > 0)
    return jnp.where(allowed, 0.0, NEG_INF).astype(dtype)[:, None]


def positions_and_bias(tokens: Array, segment_ids: Array | None, positions: Array | None,
                       attention_bias: Array | None, dtype: jnp.dtype
                       ) -> tuple[Array, Array]:
    """The positions (default: 0.. along the row) and the attention bias (default: causal
    within segments; without segment ids the whole row is one sequence) a network call
    runs with."""
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[-1]), tokens.shape)
    if attention_bias is not None:
        return positions, attention_bias
    if segment_ids is None:
        segment_ids = jnp.ones(tokens.shape, jnp.int32)
    return positions, causal_segment_bias(segment_ids, dtype)


def cached(module: nn.Module, name: str, value: Array, cache_length: int,
           cache_start: Array) -> Array:
    """`value` [batch, length, ...] written at `cache_start` into the module's 'cache'
    variable `name` (`cache_length` slots, zeros at first); the whole cache returned."""
    shape = (value.shape[0], cache_length, *value.shape[2:])
    variable = module.variable("cache", name, jnp.zeros, shape, value.dtype)
    at = (0, cache_start) + (0,) * (value.ndim - 2)
    variable.value = jax.lax.dynamic_update_slice(variable.value, value, at)
    return variable.value


class DecoderLayer(nn.Module):
    config: Any
    parts: DecoderParts
    cache_length: int | None = None

    @nn.compact
    def __call__(self, x: Array, positions: Array, bias: Array, cache_start: Array | None):
        cfg, parts = self.config, self.parts
        norm = dict(epsilon=cfg.norm_epsilon, dtype=cfg.activation_dtype)
        h = parts.attention(cfg, self.cache_length, name="attention")(
            parts.norm(**norm, name="pre_attention_layer_norm")(x), positions, bias,
            cache_start)
        x = constrain(x + h, EMBED_AXES)
        h = parts.mlp(cfg, name="mlp")(parts.norm(**norm, name="pre_mlp_layer_norm")(x))
        x = constrain(x + h, EMBED_AXES)
        return (x, None) if cfg.scan_layers else x


class DecoderStack(nn.Module):
    """The layers (`layers_N`, or one scanned `layers`) and the final norm."""

    config: Any
    parts: DecoderParts
    cache_length: int | None = None

    @nn.compact
    def __call__(self, x: Array, positions: Array, bias: Array,
                 cache_start: Array | None = None) -> Array:
        cfg = self.config
        x = run_layers(cfg, DecoderLayer, cfg.num_layers, x,
                       {"parts": self.parts, "cache_length": self.cache_length},
                       (positions, bias, cache_start))
        return self.parts.norm(epsilon=cfg.norm_epsilon, dtype=cfg.activation_dtype,
                               name="final_norm")(x)
