"""Attention masks for padding, causality and packed segments ([batch, 1, q, k] booleans)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def make_attention_mask(query_input: Array, key_input: Array, pairwise_fn=jnp.logical_and
                        ) -> Array:
    """mask[b, 0, q, k] = pairwise_fn(query_input[b, q], key_input[b, k])."""
    return pairwise_fn(query_input[:, None, :, None], key_input[:, None, None, :])


def make_causal_mask(x: Array) -> Array:
    idx = jnp.broadcast_to(jnp.arange(x.shape[-1], dtype=jnp.int32), x.shape)
    return make_attention_mask(idx, idx, jnp.greater_equal)


def combine_masks(*masks: Array | None) -> Array | None:
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = jnp.logical_and(out, m)
    return out


def encoder_mask(tokens: Array, segment_ids: Array | None) -> Array:
    """Padding (token 0) and, for packed inputs, same-segment attention only."""
    mask = make_attention_mask(tokens > 0, tokens > 0)
    if segment_ids is not None:
        mask = jnp.logical_and(mask, make_attention_mask(segment_ids, segment_ids, jnp.equal))
    return mask


def decoder_mask(target_tokens: Array, segment_ids: Array | None) -> Array:
    """Causal, padding by the *targets* (inputs start with BOS 0), same segment."""
    valid = target_tokens > 0
    return combine_masks(
        make_causal_mask(target_tokens),
        make_attention_mask(valid, valid),
        None if segment_ids is None
        else make_attention_mask(segment_ids, segment_ids, jnp.equal))


def cross_mask(target_tokens: Array, input_tokens: Array, target_segment_ids: Array | None,
               input_segment_ids: Array | None) -> Array:
    mask = make_attention_mask(target_tokens > 0, input_tokens > 0)
    if target_segment_ids is not None and input_segment_ids is not None:
        mask = jnp.logical_and(
            mask, make_attention_mask(target_segment_ids, input_segment_ids, jnp.equal))
    return mask
