"""Attention masks for padding, causality and packed segments ([batch, 1, q, k] booleans)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

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


@struct.dataclass
class SegmentMask:
    """A mask the kernel can apply: query and key positions attend where their segment ids
    are equal (0 = padding), and, when `causal`, only to earlier keys."""

    query: Array  # [batch, q] int32
    key: Array  # [batch, k] int32
    causal: bool = struct.field(pytree_node=False, default=False)

    def dense(self) -> Array:
        """The same mask as [batch, 1, q, k] booleans (for the XLA attention)."""
        mask = self.query[:, None, :, None] == self.key[:, None, None, :]
        if self.causal:
            q, k = self.query.shape[-1], self.key.shape[-1]
            mask = mask & (jnp.arange(q)[:, None] >= jnp.arange(k)[None, :])
        return mask


def encoder_segments(tokens: Array, segment_ids: Array | None) -> SegmentMask:
    """`encoder_mask` as segment ids. Padding queries attend to padding keys rather than
    to nothing: their outputs reach no real position and no loss, so nothing changes."""
    ids = _segment_ids(tokens, segment_ids)
    return SegmentMask(ids, ids)


def decoder_segments(target_tokens: Array, segment_ids: Array | None) -> SegmentMask:
    ids = _segment_ids(target_tokens, segment_ids)
    return SegmentMask(ids, ids, causal=True)


def cross_segments(target_tokens: Array, input_tokens: Array,
                   target_segment_ids: Array | None,
                   input_segment_ids: Array | None) -> SegmentMask:
    if (target_segment_ids is None) != (input_segment_ids is None):
        target_segment_ids = input_segment_ids = None  # as cross_mask: padding only
    return SegmentMask(_segment_ids(target_tokens, target_segment_ids),
                       _segment_ids(input_tokens, input_segment_ids))


def _segment_ids(tokens: Array, segment_ids: Array | None) -> Array:
    """0 at padding (token 0), else the packed segment's id (1 when unpacked)."""
    ids = jnp.ones_like(tokens, jnp.int32) if segment_ids is None else segment_ids
    return jnp.where(tokens > 0, ids.astype(jnp.int32), 0)
