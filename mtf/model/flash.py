"""T5 attention through the TPU flash-attention kernel, so no [batch, heads, q, k] score
tensor is written to HBM.

The kernel is JAX's own Pallas kernel (`jax.experimental.pallas.ops.tpu.flash_attention`,
maintained with JAX; it has a bias input and segment ids, which T5 needs and splash
attention lacks). What is mtf's: T5's relative position bias as the kernel's `ab`, padding
and packing as segment ids, causality as its flag, T5's attention dropout folded into the
values (exact: T5 broadcasts the dropout mask along the query length, so dropping weight
[q, k] for every q is scaling value row k), and a shard_map that runs the kernel on each
device's batch and heads (a Pallas call cannot be partitioned by XLA).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash

from mtf.errors import SettingError
from mtf.model.masks import SegmentMask

Array = jax.Array

BLOCK = 128  # the kernel's tile along both lengths: lengths must be multiples of it


def check_lengths(*lengths: int) -> None:
    bad = [n for n in lengths if n % BLOCK]
    if bad:
        raise SettingError(
            f"attention_kernel='flash' tiles the sequence in blocks of {BLOCK}; lengths "
            f"{bad} are not multiples of it: set TASK_FEATURE_LENGTHS to multiples of {BLOCK} "
            "or ATTENTION_KERNEL = 'xla'")


def _kernel(query: Array, key: Array, value: Array, bias: Array | None,
            q_segments: Array, kv_segments: Array, causal: bool) -> Array:
    """The kernel on one device's shard: [b, h, L, d] inputs, bias [1, h, q, k]."""
    if bias is not None:  # the kernel reads a bias per batch row
        bias = jnp.broadcast_to(bias, (query.shape[0],) + bias.shape[1:])
    return tpu_flash.flash_attention(
        query, key, value, bias, tpu_flash.SegmentIds(q_segments, kv_segments),
        causal=causal, sm_scale=1.0)


def attention(query: Array, key: Array, value: Array, bias: Array | None,
              mask: SegmentMask, dropout_rng: Array | None, dropout_rate: float,
              dtype: jnp.dtype) -> Array:
    """`layers.dot_product_attention`'s result (unscaled, bias added, softmax in float32,
    T5's dropout) for [batch, length, heads, head_dim] inputs, by the flash kernel."""
    check_lengths(query.shape[1], key.shape[1])
    query, key, value = (t.astype(dtype) for t in (query, key, value))
    if dropout_rng is not None:
        keep_prob = 1.0 - dropout_rate
        b, k, h, _ = key.shape
        # The very draw dot_product_attention makes ([b, h, 1, k]), applied to the values.
        keep = jax.random.bernoulli(dropout_rng, keep_prob, (b, h, 1, k))
        scale = keep.astype(dtype) / jnp.asarray(keep_prob, dtype)
        value = value * jnp.transpose(scale, (0, 3, 1, 2))
    if bias is not None:
        bias = bias.astype(dtype)
    heads_first = (0, 2, 1, 3)
    q, k, v = (jnp.transpose(t, heads_first) for t in (query, key, value))

    def run(q, k, v, q_seg, kv_seg, *bias):
        return _kernel(q, k, v, bias[0] if bias else None, q_seg, kv_seg, mask.causal)

    args = (q, k, v, mask.query, mask.key) + (() if bias is None else (bias,))
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        qkv = nn.logical_to_mesh_axes(("batch", "heads", "length", "kv"))
        seg = nn.logical_to_mesh_axes(("batch", "length"))
        specs = (qkv, qkv, qkv, seg, seg)
        if bias is not None:
            specs += (nn.logical_to_mesh_axes((None, "heads", None, None)),)
        run = jax.shard_map(run, in_specs=specs, out_specs=qkv, check_vma=False)
    out = run(*args)
    return jnp.transpose(out, heads_first)
