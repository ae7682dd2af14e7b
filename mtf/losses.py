"""Token cross-entropy with z-loss and label smoothing, and T5X's normalisation modes.

Every mode is written as a (numerator, denominator) pair of sums over examples, so that
microbatches add their numerators and denominators and divide once: k microbatches then
give exactly the one-batch loss and gradient (MaxText's rule), never a mean of means.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
TOKENS = "NUM_REAL_TARGET_TOKENS"
PER_SEQUENCE = "AVERAGE_PER_SEQUENCE"


def token_cross_entropy(logits: Array, targets: Array, z_loss: float = 0.0,
                        label_smoothing: float = 0.0) -> tuple[Array, Array]:
    """Per-token (total loss, z-loss part), both [batch, length] float32.

    z-loss (z_loss * logsumexp(logits)^2) keeps the softmax normaliser near 1, which the
    mT0 recipe uses at 1e-4. With label smoothing the minimum loss is shifted to 0, as T5X.
    """
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    if label_smoothing:
        confidence = 1.0 - label_smoothing
        low = label_smoothing / (vocab - 1)
        mean_logit = jnp.mean(logits, axis=-1)
        smoothed = confidence * target_logit + low * (vocab * mean_logit - target_logit)
        entropy = -(confidence * jnp.log(confidence)
                    + (vocab - 1) * low * jnp.log(low + 1e-20))
        loss = log_z - smoothed - entropy
    else:
        loss = log_z - target_logit
    z = z_loss * jnp.square(log_z)
    return loss + z, z


def _segment_token_counts(weights: Array, segment_ids: Array | None) -> Array:
    """For every token, the number of real target tokens in its sequence (or segment)."""
    if segment_ids is None:
        return jnp.broadcast_to(weights.sum(axis=-1, keepdims=True), weights.shape)
    batch, length = weights.shape
    ids = (jnp.arange(batch)[:, None] * length + segment_ids).reshape(-1)
    counts = jax.ops.segment_sum(weights.reshape(-1), ids, num_segments=batch * length)
    return counts[ids].reshape(batch, length)


def normalization_weights(weights: Array, mode: str | float,
                          segment_ids: Array | None = None) -> tuple[Array, Array]:
    """(per-token weights, denominator) of a normalisation mode; see `loss_terms`."""
    weights = weights.astype(jnp.float32)
    if mode == TOKENS:
        return weights, jnp.sum(weights)
    if mode == PER_SEQUENCE:
        counts = _segment_token_counts(weights, segment_ids)
        share = jnp.where(counts > 0, weights / jnp.maximum(counts, 1.0), 0.0)
        # each sequence's shares sum to 1, so the shares add up to the sequence count
        return share, jnp.sum(share)
    if isinstance(mode, int | float) and not isinstance(mode, bool) and mode > 0:
        return weights, jnp.zeros((), jnp.float32)
    raise ValueError(f"LOSS_NORMALIZING_FACTOR={mode!r}: use {TOKENS!r}, {PER_SEQUENCE!r} or "
                     "a positive number")


def loss_terms(per_token: Array, weights: Array, mode: str | float,
               segment_ids: Array | None = None) -> tuple[Array, Array]:
    """(numerator, denominator) of the batch loss under a normalisation mode.

    `mode`: 'NUM_REAL_TARGET_TOKENS' (mean over real tokens), 'AVERAGE_PER_SEQUENCE' (each
    sequence, or packed segment, averaged over its own tokens, then over sequences) or a
    number (sum of token losses divided by that constant, T5X's default 233472).
    """
    token_weights, denominator = normalization_weights(weights, mode, segment_ids)
    return jnp.sum(per_token * token_weights), denominator


def normalizer(mode: str | float, summed_denominator: Array) -> Array:
    """What the summed numerator is divided by: the summed denominators, or the constant."""
    if mode in (TOKENS, PER_SEQUENCE):
        return jnp.maximum(summed_denominator, 1e-8)
    return jnp.asarray(float(mode), jnp.float32)
