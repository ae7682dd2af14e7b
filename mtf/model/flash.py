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

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash

from mtf.errors import SettingError
from mtf.model.masks import SegmentMask

Array = jax.Array

BLOCK = 128  # the kernel's smallest tile: lengths must be multiples of it
# Larger tiles where the length allows: each kernel re-reads the other side's arrays once per
# tile of its outer length (the backward's softmax statistics are float32 x 128 lanes), so
# 512/1024-long tiles cut the traffic 4-8x against the library's 128 defaults; all fit
# v4's 16 MiB of VMEM at head_dim 64-128.
MAJOR_TILE, MINOR_TILE = 1024, 512


def check_lengths(*lengths: int) -> None:
    bad = [n for n in lengths if n % BLOCK]
    if bad:
        raise SettingError(
            f"attention_kernel='flash' tiles the sequence in blocks of {BLOCK}; lengths "
            f"{bad} are not multiples of it: set TASK_FEATURE_LENGTHS to multiples of {BLOCK} "
            "or ATTENTION_KERNEL = 'xla'")


def _check_split(size: int, axes, what: str, mesh) -> None:
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    shards = math.prod(mesh.shape[axis] for axis in axes)
    if size % shards:
        raise SettingError(
            f"attention_kernel='flash' runs per device: {size} {what} do not split over the "
            f"{shards} devices of mesh axes {axes}; use a multiple of it (for rows: "
            "BATCH_SIZE / NUM_MICROBATCHES) or ATTENTION_KERNEL = 'xla'")


def _tile(length: int, cap: int) -> int:
    """The largest power-of-two multiple of BLOCK up to `cap` that divides `length`."""
    tile = BLOCK
    while tile * 2 <= cap and length % (tile * 2) == 0:
        tile *= 2
    return tile


def block_sizes(q_len: int, kv_len: int) -> tpu_flash.BlockSizes:
    q_minor, k_minor = _tile(q_len, MINOR_TILE), _tile(kv_len, MINOR_TILE)
    return tpu_flash.BlockSizes(
        block_q=q_minor, block_k_major=k_minor, block_k=k_minor, block_b=1,
        block_q_major_dkv=BLOCK, block_k_major_dkv=_tile(kv_len, MAJOR_TILE),
        block_k_dkv=k_minor, block_q_dkv=BLOCK,
        block_k_major_dq=k_minor, block_k_dq=k_minor, block_q_dq=q_minor)


def _kernel(query: Array, key: Array, value: Array, bias: Array | None,
            q_segments: Array, kv_segments: Array, causal: bool) -> Array:
    """The kernel on one device's shard: [b, h, L, d] inputs, bias [1, h, q, k]."""
    if bias is not None:  # the kernel reads a bias per batch row
        bias = jnp.broadcast_to(bias, (query.shape[0],) + bias.shape[1:])
    return tpu_flash.flash_attention(
        query, key, value, bias, tpu_flash.SegmentIds(q_segments, kv_segments),
        causal=causal, sm_scale=1.0, block_sizes=block_sizes(query.shape[2], key.shape[2]))


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
        _check_split(query.shape[0], qkv[0], "(micro)batch rows", mesh)
        _check_split(query.shape[2], qkv[1], "heads", mesh)
        seg = nn.logical_to_mesh_axes(("batch", "length"))
        specs = (qkv, qkv, qkv, seg, seg)
        if bias is not None:
            specs += (nn.logical_to_mesh_axes((None, "heads", None, None)),)
        run = jax.shard_map(run, in_specs=specs, out_specs=qkv, check_vma=False)
    out = run(*args)
    return jnp.transpose(out, heads_first)


# What XLA cannot count. The library's backward kernels carry no cost estimate, and XLA's
# cost analysis counts a Pallas call without one as 0 FLOPs and 0 bytes (its forward's
# estimate counts each input once). mtf.plan adds this model of them instead.
KERNELS = ("flash_mha_bwd_dkv", "flash_mha_bwd_dq", "flash_attention")


def kernel_cost(kernel: str, operands: list[tuple[int, tuple[int, ...]]],
                results: list[tuple[int, tuple[int, ...]]]) -> dict[str, float]:
    """FLOPs and HBM bytes of one call of a flash kernel (one of KERNELS) from its operand
    and result (itemsize, shape)s, as its grid streams them with `block_sizes`' tiles.

    Operands: q, k, v [b, h, L, d], then the bias [b, h, q, k] if any, the segment ids
    (two int32 arrays) if any, and for the backward l, m, do, di. An operand is fetched
    once per tile of the grid's outer length unless its block does not move with the inner
    one; results are written once. Causal calls are counted in full (as XLA counts them).
    """
    nbytes = [size * math.prod(shape) for size, shape in operands]
    (b, h, q_len, d), kv_len = operands[0][1], operands[1][1][2]
    rest = list(range(3, len(operands)))
    bias = [i for i in rest[:1] if len(operands[i][1]) == 4 and operands[i][1][-1] == kv_len
            and operands[i][1][-2] == q_len]
    rest = rest[len(bias):]
    segments = rest[:2] if len(rest) in (2, 6) else []
    stats = rest[len(segments):]  # l, m, do, di (backward only)
    q_side = [0] + segments[:1] + stats
    kv_side = [1, 2] + segments[1:]
    blocks = block_sizes(q_len, kv_len)
    unit = 2.0 * b * h * q_len * kv_len * d  # one [q, k] x d product
    if kernel == "flash_mha_bwd_dkv":  # grid (b, h, k tiles, q tiles): q side re-read
        reads, flops = kv_len // blocks.block_k_major_dkv, 4 * unit
        moved = sum(nbytes[i] for i in kv_side) + reads * sum(nbytes[i] for i in q_side)
    elif kernel == "flash_mha_bwd_dq":  # grid (b, h, q tiles, k tiles): kv side re-read
        reads, flops = q_len // blocks.block_q_dq, 3 * unit
        moved = sum(nbytes[i] for i in q_side) + reads * sum(nbytes[i] for i in kv_side)
    elif kernel == "flash_attention":  # forward, grid (b, h, q tiles, k tiles)
        reads, flops = q_len // blocks.block_q, 2 * unit
        moved = sum(nbytes[i] for i in q_side) + reads * sum(nbytes[i] for i in kv_side)
    else:
        raise ValueError(f"unknown flash kernel {kernel!r}; known: {KERNELS}")
    moved += sum(nbytes[i] for i in bias) + sum(size * math.prod(shape) for size, shape in results)
    return {"flops": float(flops), "bytes": float(moved)}
