"""Token cross-entropy with z-loss and label smoothing, and T5X's normalisation modes.

Every mode is written as a (numerator, denominator) pair of sums over examples, so that
microbatches add their numerators and denominators and divide once: k microbatches then
give exactly the one-batch loss and gradient (MaxText's rule), never a mean of means.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from mtf.errors import SettingError

Array = jax.Array
TOKENS = "NUM_REAL_TARGET_TOKENS"
# How the fused projection + cross-entropy runs: XLA ops over LOSS_CHUNKS pieces (any
# platform), or mtf.loss_kernel's Pallas TPU kernels (no logits in HBM).
LOSS_KERNELS = ("xla", "pallas")
PER_SEQUENCE = "AVERAGE_PER_SEQUENCE"


def token_cross_entropy(logits: Array, targets: Array, z_loss: float = 0.0,
                        label_smoothing: float = 0.0) -> tuple[Array, Array]:
    """Per-token (total loss, z-loss part), both [batch, length] float32.

    z-loss (z_loss * logsumexp(logits)^2) keeps the softmax normaliser near 1, which the
    mT0 recipe uses at 1e-4. With label smoothing the minimum loss is shifted to 0, as T5X.
    """
    _, loss, z = _log_normaliser_and_loss(logits.astype(jnp.float32), targets, z_loss,
                                          label_smoothing)
    return loss, z


def _log_normaliser_and_loss(logits: Array, targets: Array, z_loss: float,
                             label_smoothing: float) -> tuple[Array, Array, Array]:
    """(logsumexp, per-token total loss, z part) of float32 logits: the one definition
    that `token_cross_entropy` and the fused loss share."""
    vocab = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    sum_logits = vocab * jnp.mean(logits, axis=-1) if label_smoothing else None
    return (log_z,) + _loss_from_statistics(log_z, target_logit, sum_logits, vocab, z_loss,
                                            label_smoothing)


def _loss_from_statistics(log_z: Array, target_logit: Array, sum_logits: Array | None,
                          vocab: int, z_loss: float, label_smoothing: float
                          ) -> tuple[Array, Array]:
    """Per-token (total loss, z part) from the log-normaliser, the target's logit and (for
    label smoothing) the sum of all logits: what the XLA and the Pallas loss share."""
    if label_smoothing:
        confidence, low, entropy = _smoothing(vocab, label_smoothing)
        smoothed = confidence * target_logit + low * (sum_logits - target_logit)
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
    raise SettingError(f"LOSS_NORMALIZING_FACTOR={mode!r}: use {TOKENS!r}, {PER_SEQUENCE!r} or "
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


@dataclasses.dataclass(frozen=True)
class ChunkedLoss:
    """How the fused output projection + cross-entropy runs (hashable: a static argument).

    chunks: pieces of the target length computed one after the other, so only
    [batch, length / chunks, vocab] logits exist at a time. compute_dtype/scale describe
    the projection (mT5: float32 kernel, no scale; tied T5 logits: activation dtype and
    1/sqrt(emb)).
    """

    chunks: int = 1
    z_loss: float = 0.0
    label_smoothing: float = 0.0
    compute_dtype: str = "float32"
    scale: float = 1.0
    unroll: bool = False  # unrolled chunk loop: XLA's cost analysis then counts every chunk
    kernel_grad: bool = True  # False: the output kernel is frozen (LoRA), skip its gradient
    kernel: str = "xla"  # one of LOSS_KERNELS


def _smoothing(vocab: int, label_smoothing: float) -> tuple[float, float, float]:
    """(confidence, weight of every other token, entropy offset), as `token_cross_entropy`."""
    if not label_smoothing:
        return 1.0, 0.0, 0.0
    confidence = 1.0 - label_smoothing
    low = label_smoothing / (vocab - 1)
    entropy = -(confidence * math.log(confidence) + (vocab - 1) * low * math.log(low + 1e-20))
    return confidence, low, entropy


def _chunk_loss(hidden: Array, targets: Array, kernel: Array, settings: ChunkedLoss
                ) -> tuple[Array, Array, Array, Array]:
    """One chunk's (logits, log-normaliser, per-token loss, z part), all float32."""
    logits = jnp.einsum("ble,ev->blv", hidden.astype(settings.compute_dtype),
                        kernel.astype(settings.compute_dtype))
    logits = logits.astype(jnp.float32)
    if settings.scale != 1.0:
        logits = logits * settings.scale
    logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
    log_z, loss, z = _log_normaliser_and_loss(logits, targets, settings.z_loss,
                                              settings.label_smoothing)
    return logits, log_z, loss, z


def _split(x: Array, chunks: int) -> Array:
    """[batch, length, ...] -> [chunks, batch, length / chunks, ...] (length padded)."""
    length = x.shape[1]
    pad = -length % chunks
    if pad:
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape((x.shape[0], chunks, -1) + x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _join(x: Array, length: int) -> Array:
    """Inverse of `_split`."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape((x.shape[0], -1) + x.shape[3:])[:, :length]


def _fused_forward(hidden, kernel, targets, token_weights, settings, with_grads):
    if settings.kernel == "pallas":
        return _pallas_forward(hidden, kernel, targets, token_weights, settings, with_grads)
    length = hidden.shape[1]
    chunks = max(1, min(settings.chunks, length))
    xs = (_split(hidden, chunks), _split(targets, chunks), _split(token_weights, chunks))
    vocab = kernel.shape[-1]
    confidence, low, _ = _smoothing(vocab, settings.label_smoothing)
    cdt = jnp.dtype(settings.compute_dtype)

    def body(d_kernel, x):
        h, t, w = x
        logits, log_z, loss, z = _chunk_loss(h, t, kernel, settings)
        if not with_grads:
            return d_kernel, (loss, z)
        # d(w * loss)/d logits = w * (softmax * (1 + 2 z_loss log_z) - smoothed one-hot)
        probs = jnp.exp(logits - log_z[..., None])
        onehot = jnp.arange(vocab, dtype=t.dtype) == t[..., None]
        d_logits = w[..., None] * (probs * (1.0 + 2.0 * settings.z_loss * log_z)[..., None]
                                   - low - (confidence - low) * onehot)
        d_logits = (d_logits * settings.scale).astype(cdt)
        d_hidden = jnp.einsum("blv,ev->ble", d_logits, kernel.astype(cdt)).astype(h.dtype)
        if settings.kernel_grad:
            d_kernel = d_kernel + jnp.einsum("ble,blv->ev", h.astype(cdt), d_logits,
                                             preferred_element_type=jnp.float32)
        return d_kernel, (loss, z, d_hidden)

    d_kernel = (jnp.zeros(kernel.shape, jnp.float32) if with_grads and settings.kernel_grad
                else None)
    d_kernel, outs = jax.lax.scan(body, d_kernel, xs, unroll=settings.unroll or 1)
    per_token, z = _join(outs[0], length), _join(outs[1], length)
    numerator = jnp.sum(per_token * token_weights)
    if not with_grads:
        return numerator, per_token, z
    if d_kernel is not None:
        d_kernel = d_kernel.astype(kernel.dtype)
    return (numerator, per_token, z), (d_kernel, _join(outs[2], length), per_token)


def _pallas_forward(hidden, kernel, targets, token_weights, settings, with_grads):
    """`_fused_forward` by `loss_kernel`'s Pallas kernels, per device under a mesh
    (a Pallas call is not partitioned by XLA): tokens stay where they are, the kernel is
    whole on each device, the numerator and the kernel's gradient are summed over them."""
    from mtf import loss_kernel  # Pallas TPU kernels: loaded only when LOSS_KERNEL asks

    b, length, emb = hidden.shape
    vocab = kernel.shape[-1]

    def run(h, w, t, tw):
        rows = (h.shape[0], length)
        tiled = loss_kernel.prepare(h.reshape(-1, emb), w, t.reshape(-1),
                                    settings.compute_dtype)
        log_z, target_logit, sum_logits = loss_kernel.statistics(tiled, settings.scale)
        per_token, z = _loss_from_statistics(log_z, target_logit, sum_logits, vocab,
                                             settings.z_loss, settings.label_smoothing)
        tw = tw.reshape(-1)
        numerator = jnp.sum(per_token * tw)
        if axes:
            numerator = jax.lax.psum(numerator, axes)
        values = (numerator, per_token.reshape(rows), z.reshape(rows))
        if not with_grads:
            return values
        confidence, low, _ = _smoothing(vocab, settings.label_smoothing)
        coefficients = jnp.stack(
            [log_z, tw * settings.scale * (1.0 + 2.0 * settings.z_loss * log_z),
             tw * settings.scale], axis=1)
        d_kernel, d_hidden = loss_kernel.gradients(
            tiled, coefficients, scale=settings.scale, confidence=confidence, low=low,
            kernel_grad=settings.kernel_grad, hidden_dtype=h.dtype)
        if axes and d_kernel is not None:
            d_kernel = jax.lax.psum(d_kernel, axes)
        return values, (d_kernel, d_hidden.reshape(h.shape), per_token.reshape(rows))

    mesh = jax.sharding.get_abstract_mesh()
    axes: tuple[str, ...] = ()
    if not mesh.empty:
        batch_axes = nn.logical_to_mesh_axes(("batch",))[0]
        axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes or ())
        axes = tuple(a for a in axes if mesh.shape[a] > 1)
        vocab_axes = nn.logical_to_mesh_axes(("vocab",))[0]
        vocab_axes = (vocab_axes,) if isinstance(vocab_axes, str) else tuple(vocab_axes or ())
        if any(mesh.shape[a] > 1 for a in vocab_axes):
            raise SettingError(
                f"LOSS_KERNEL='pallas' keeps the whole output kernel on each device; the mesh "
                f"shards the vocabulary over {vocab_axes}: set MESH_SHAPE's model axis to 1 or "
                "LOSS_KERNEL='xla'")
        shards = math.prod(mesh.shape[a] for a in axes)
        if b % shards:
            raise SettingError(
                f"LOSS_KERNEL='pallas' runs per device: the (micro)batch of {b} rows does not "
                f"split over the {shards} devices of mesh axes {axes}; use a batch per "
                "microbatch that is a multiple of it (BATCH_SIZE / NUM_MICROBATCHES)")
        rows = PartitionSpec(axes or None)
        values = (PartitionSpec(), rows, rows)
        out_specs = values if not with_grads else (
            values, (None if not settings.kernel_grad else PartitionSpec(), rows, rows))
        run = jax.shard_map(run, in_specs=(rows, PartitionSpec(), rows, rows),
                            out_specs=out_specs, check_vma=False)
    return run(hidden, kernel, targets, token_weights)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused(hidden, kernel, targets, token_weights, settings):
    return _fused_forward(hidden, kernel, targets, token_weights, settings, False)


def _fused_fwd(hidden, kernel, targets, token_weights, settings):
    return _fused_forward(hidden, kernel, targets, token_weights, settings, True)


def _fused_bwd(settings, residuals, cotangents):
    d_kernel, d_hidden, per_token = residuals
    g = cotangents[0]  # only the numerator is differentiable (see fused_cross_entropy)
    return ((g * d_hidden.astype(jnp.float32)).astype(d_hidden.dtype),
            None if d_kernel is None else g * d_kernel, None, g * per_token)


_fused.defvjp(_fused_fwd, _fused_bwd)


def fused_cross_entropy(hidden: Array, kernel: Array, targets: Array, token_weights: Array,
                        settings: ChunkedLoss) -> tuple[Array, Array, Array]:
    """(sum of per-token loss x token_weights, per-token loss, per-token z part) straight
    from the decoder's last hidden states [batch, length, emb] and the output kernel
    [emb, vocab], never holding the [batch, length, vocab] logits.

    Written by hand because no maintained JAX library has it (MaxText's vocab tiling and
    Liger's fused linear cross-entropy are the references). The gradient of the weighted
    sum is formed chunk by chunk in the forward pass (the loss is the last operation, so
    only a scalar cotangent is still to come), saving nothing of vocabulary size. Equal to
    `token_cross_entropy` on the projected logits; the per-token outputs are for metrics
    and carry no gradient.
    """
    numerator, per_token, z = _fused(hidden, kernel, targets,
                                     token_weights.astype(jnp.float32), settings)
    return numerator, jax.lax.stop_gradient(per_token), jax.lax.stop_gradient(z)
