"""The fused output projection + cross-entropy as Pallas TPU kernels: the logits exist only
tile by tile in VMEM, never in HBM.

`losses.fused_cross_entropy` (XLA) writes each chunk's float32 [tokens, vocab] logits and
reads them back 4-5 times (log-normaliser, target, softmax gradient, two gradient
matmuls): for mt0-small on v4-64 that is ~95 GB of HBM traffic a step, 40% of all of it.
Here three kernels each recompute the logits from the hidden states and the kernel:
  stats:    per token, the log-normaliser, the target's logit and the sum of logits;
  d_hidden: d_logits (softmax gradient with z-loss and label smoothing) x kernel^T;
  d_kernel: hidden^T x d_logits, its grid ordered vocabulary-major.
Written by hand because no maintained JAX library has a fused linear cross-entropy for TPU
(Liger's and Apple's cut-cross-entropy are Triton/GPU). The loss itself is formed from
these statistics by `losses` (its one formula); exact in float32 (tests run it in TPU
interpret mode).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

Array = jax.Array

# (token rows, vocabulary columns) per tile. The stats and d_hidden kernels stream the
# kernel once per token tile, d_kernel streams the hidden states once per vocabulary tile:
# each gets the long side where it saves re-reads. Powers of two (x 8 rows, x 128 columns),
# sized for v4's 16 MiB of VMEM with bf16 operands: checked by compiles at emb 512-1024;
# at emb 2048 the TPU compiler needs 16.47 of 16 MiB (mtf.plan reports it, test_plan).
ROW_TILES = (1024, 512)
COLUMN_TILES = (512, 1024)


def _tile(n: int, cap: int, quantum: int) -> int:
    """`cap`, or n rounded up to `quantum` when n is smaller."""
    return min(cap, -(-n // quantum) * quantum)


VMEM_BUDGET = 12 * 2**20  # of v4's 16 MiB: double-buffered operands + float32 temporaries


def _fit(rows: int, columns: int, emb: int, itemsize: int) -> tuple[int, int]:
    """Halves the longer side until the tile's VMEM use fits VMEM_BUDGET: two buffers of
    each operand tile, a float32 accumulator and ~3 float32 [rows, columns] temporaries."""
    def use(r, c):
        return 2 * (r + c) * emb * itemsize + r * emb * 4 + 3 * r * c * 4

    while use(rows, columns) > VMEM_BUDGET and max(rows, columns) > 128:
        if rows >= columns:
            rows //= 2
        else:
            columns //= 2
    return rows, columns


def operand_dtype(compute_dtype: str) -> jnp.dtype:
    """The MXU operands: float32 projections get bfloat16 operands (float32 accumulation),
    which is what XLA's default matmul precision does with them on TPU, unless JAX's
    `default_matmul_precision` asks for float32 ('float32' / 'highest')."""
    dtype = jnp.dtype(compute_dtype)
    precision = str(jax.config.jax_default_matmul_precision or "").lower()
    if dtype == jnp.float32 and precision not in ("float32", "highest"):
        return jnp.dtype(jnp.bfloat16)
    return dtype


def _logits(h_ref, w_ref, j, tv, vocab, scale):
    logits = jnp.dot(h_ref[...], w_ref[...], preferred_element_type=jnp.float32)
    if scale != 1.0:
        logits = logits * scale
    column = j * tv + jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1)
    return logits, column, column < vocab


def _stats_kernel(h_ref, w_ref, t_ref, lse_ref, tgt_ref, sum_ref, m_sc, l_sc, *, tv, vocab,
                  scale):
    j = pl.program_id(1)

    @pl.when(j == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        tgt_ref[...] = jnp.zeros(tgt_ref.shape, jnp.float32)
        sum_ref[...] = jnp.zeros(sum_ref.shape, jnp.float32)

    logits, column, valid = _logits(h_ref, w_ref, j, tv, vocab, scale)
    masked = jnp.where(valid, logits, -jnp.inf)
    m_new = jnp.maximum(m_sc[...], jnp.max(masked, axis=1, keepdims=True))
    l_sc[...] = (l_sc[...] * jnp.exp(m_sc[...] - m_new)
                 + jnp.sum(jnp.exp(masked - m_new), axis=1, keepdims=True))
    m_sc[...] = m_new
    tgt_ref[...] += jnp.sum(jnp.where(column == t_ref[...], logits, 0.0), axis=1,
                            keepdims=True)
    sum_ref[...] += jnp.sum(jnp.where(valid, logits, 0.0), axis=1, keepdims=True)

    @pl.when(j == pl.num_programs(1) - 1)
    def _done():
        lse_ref[...] = m_sc[...] + jnp.log(l_sc[...])


def _d_logits(h_ref, w_ref, t_ref, c_ref, j, tv, vocab, scale, confidence, low):
    """w * scale * (softmax * (1 + 2 z log_z) - smoothed one-hot), 0 past the vocabulary.
    c_ref columns: log_z, w * scale * (1 + 2 z log_z), w * scale."""
    logits, column, valid = _logits(h_ref, w_ref, j, tv, vocab, scale)
    c = c_ref[...]
    probs = jnp.exp(logits - c[:, 0:1])
    onehot = (column == t_ref[...]).astype(jnp.float32)
    d = c[:, 1:2] * probs - c[:, 2:3] * (low + (confidence - low) * onehot)
    return jnp.where(valid, d, 0.0).astype(h_ref.dtype)


def _d_hidden_kernel(h_ref, w_ref, t_ref, c_ref, dh_ref, acc, *, tv, vocab, scale,
                     confidence, low):
    j = pl.program_id(1)

    @pl.when(j == 0)
    def _init():
        acc[...] = jnp.zeros(acc.shape, jnp.float32)

    d = _d_logits(h_ref, w_ref, t_ref, c_ref, j, tv, vocab, scale, confidence, low)
    acc[...] += jax.lax.dot_general(d, w_ref[...], (((1,), (1,)), ((), ())),
                                    preferred_element_type=jnp.float32)

    @pl.when(j == pl.num_programs(1) - 1)
    def _done():
        dh_ref[...] = acc[...].astype(dh_ref.dtype)


def _d_kernel_kernel(h_ref, w_ref, t_ref, c_ref, dw_ref, *, tv, vocab, scale, confidence,
                     low):
    j, i = pl.program_id(0), pl.program_id(1)

    @pl.when(i == 0)
    def _init():
        dw_ref[...] = jnp.zeros(dw_ref.shape, jnp.float32)

    d = _d_logits(h_ref, w_ref, t_ref, c_ref, j, tv, vocab, scale, confidence, low)
    dw_ref[...] += jax.lax.dot_general(h_ref[...], d, (((0,), (0,)), ((), ())),
                                       preferred_element_type=jnp.float32)


def _cost(tokens: int, emb: int, vocab: int, matmuls: int, bytes_moved: float
          ) -> pl.CostEstimate:
    return pl.CostEstimate(flops=2 * matmuls * tokens * emb * vocab,
                           transcendentals=tokens * vocab, bytes_accessed=int(bytes_moved))


class Tiled(NamedTuple):
    """Padded operands and tile sizes, shared by `statistics` and `gradients`."""

    h: Array  # [n + pad, emb], operand dtype
    w: Array  # [emb, vocab + pad], operand dtype
    t: Array  # [n + pad, 1] int32
    tokens: int  # n, before padding
    vocab: int  # before padding
    rows: tuple[int, int]  # (token, vocabulary) tile of the token-major kernels
    columns: tuple[int, int]  # the same for the vocabulary-major d_kernel kernel


def prepare(hidden: Array, kernel: Array, targets: Array, compute_dtype: str) -> Tiled:
    """Casts to the MXU operand dtype and pads hidden [N, E] / kernel [E, V] / targets [N]
    to whole tiles (padded vocabulary columns are masked inside the kernels)."""
    n, emb = hidden.shape
    vocab = kernel.shape[1]
    cdt = operand_dtype(compute_dtype)
    rows = _fit(_tile(n, ROW_TILES[0], 8), _tile(vocab, ROW_TILES[1], 128), emb,
                cdt.itemsize)
    columns = _fit(_tile(n, COLUMN_TILES[0], 8), _tile(vocab, COLUMN_TILES[1], 128), emb,
                   cdt.itemsize)
    n_pad, v_pad = -n % max(rows[0], columns[0]), -vocab % max(rows[1], columns[1])
    return Tiled(jnp.pad(hidden.astype(cdt), ((0, n_pad), (0, 0))),
                 jnp.pad(kernel.astype(cdt), ((0, 0), (0, v_pad))),
                 jnp.pad(targets.astype(jnp.int32), (0, n_pad))[:, None],
                 n, vocab, rows, columns)


def statistics(tiled: Tiled, scale: float) -> tuple[Array, Array, Array]:
    """Per token [N]: the log-normaliser, the target's logit and the sum of all logits."""
    (n_all, emb), v_all = tiled.h.shape, tiled.w.shape[1]
    tn, tv = tiled.rows
    ni, nj = n_all // tn, v_all // tv
    h_bytes, w_bytes = tiled.h.size * tiled.h.dtype.itemsize, tiled.w.size * tiled.w.dtype.itemsize
    row = pl.BlockSpec((tn, 1), lambda i, j: (i, 0))
    stats = pl.pallas_call(
        functools.partial(_stats_kernel, tv=tv, vocab=tiled.vocab, scale=scale),
        grid=(ni, nj),
        in_specs=[pl.BlockSpec((tn, emb), lambda i, j: (i, 0)),
                  pl.BlockSpec((emb, tv), lambda i, j: (0, j)), row],
        out_specs=[row, row, row],
        out_shape=[jax.ShapeDtypeStruct((n_all, 1), jnp.float32)] * 3,
        scratch_shapes=[pltpu.VMEM((tn, 1), jnp.float32)] * 2,
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        cost_estimate=_cost(n_all, emb, v_all, 1, h_bytes + ni * w_bytes),
    )(tiled.h, tiled.w, tiled.t)
    log_z, target_logit, sum_logits = (x[:tiled.tokens, 0] for x in stats)
    return log_z, target_logit, sum_logits


def gradients(tiled: Tiled, coefficients: Array, *, scale: float, confidence: float,
              low: float, kernel_grad: bool, hidden_dtype: jnp.dtype
              ) -> tuple[Array | None, Array]:
    """(d_kernel [E, V] float32 or None, d_hidden [N, E]) of the weighted loss sum, given
    per token [N, 3]: log_z, w * scale * (1 + 2 z log_z), w * scale (see `_d_logits`)."""
    (n_all, emb), v_all = tiled.h.shape, tiled.w.shape[1]
    h_bytes, w_bytes = tiled.h.size * tiled.h.dtype.itemsize, tiled.w.size * tiled.w.dtype.itemsize
    coefficients = jnp.pad(coefficients, ((0, n_all - tiled.tokens), (0, 0)))
    args = (tiled.h, tiled.w, tiled.t, coefficients)
    common = dict(vocab=tiled.vocab, scale=scale, confidence=confidence, low=low)
    tn, tv = tiled.rows
    ni = n_all // tn
    d_hidden = pl.pallas_call(
        functools.partial(_d_hidden_kernel, tv=tv, **common),
        grid=(ni, v_all // tv),
        in_specs=[pl.BlockSpec((tn, emb), lambda i, j: (i, 0)),
                  pl.BlockSpec((emb, tv), lambda i, j: (0, j)),
                  pl.BlockSpec((tn, 1), lambda i, j: (i, 0)),
                  pl.BlockSpec((tn, 3), lambda i, j: (i, 0))],
        out_specs=pl.BlockSpec((tn, emb), lambda i, j: (i, 0)),
        out_shape=jax.ShapeDtypeStruct((n_all, emb), hidden_dtype),
        scratch_shapes=[pltpu.VMEM((tn, emb), jnp.float32)],
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        cost_estimate=_cost(n_all, emb, v_all, 2, 2 * h_bytes + ni * w_bytes),
    )(*args)[:tiled.tokens]
    if not kernel_grad:
        return None, d_hidden
    tn, tv = tiled.columns
    nj = v_all // tv
    d_kernel = pl.pallas_call(
        functools.partial(_d_kernel_kernel, tv=tv, **common),
        grid=(nj, n_all // tn),
        in_specs=[pl.BlockSpec((tn, emb), lambda j, i: (i, 0)),
                  pl.BlockSpec((emb, tv), lambda j, i: (0, j)),
                  pl.BlockSpec((tn, 1), lambda j, i: (i, 0)),
                  pl.BlockSpec((tn, 3), lambda j, i: (i, 0))],
        out_specs=pl.BlockSpec((emb, tv), lambda j, i: (0, j)),
        out_shape=jax.ShapeDtypeStruct((emb, v_all), jnp.float32),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary")),
        cost_estimate=_cost(n_all, emb, v_all, 2, nj * h_bytes + w_bytes + emb * v_all * 4),
    )(*args)[:, :tiled.vocab]
    return d_kernel, d_hidden
