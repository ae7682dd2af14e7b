"""The train step: microbatched loss and gradients that are exact for any microbatch count."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mtf import losses
from mtf.errors import SettingError
from mtf.model import ModelConfig, lora
from mtf.model.family import ModelFamily, family_of
from mtf.state import TrainState

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """normalizing_factor: T5X's LOSS_NORMALIZING_FACTOR; chunks: the target length is
    projected to the vocabulary in this many pieces (LOSS_CHUNKS), bounding the logits held
    at once to [batch, length / chunks, vocab] (`losses.fused_cross_entropy`)."""

    normalizing_factor: str | float = losses.TOKENS
    z_loss: float = 1e-4
    label_smoothing: float = 0.0
    chunks: int = 1
    unroll_loops: bool = False  # loss chunks, microbatches: XLA's cost analysis counts a loop once
    kernel: str = "xla"  # LOSS_KERNEL: one of losses.LOSS_KERNELS

    def __post_init__(self) -> None:
        if not isinstance(self.chunks, int) or self.chunks < 1:
            raise SettingError(f"LOSS_CHUNKS={self.chunks!r} must be a positive integer (1: the "
                               "whole target length at once)")
        if self.kernel not in losses.LOSS_KERNELS:
            raise SettingError(f"LOSS_KERNEL={self.kernel!r}: use one of {losses.LOSS_KERNELS}"
                               " ('pallas' runs on TPU only)")


def loss_terms(params: Any, batch: Batch, dropout_rng: jax.Array | None, family: ModelFamily,
               loss: LossConfig, frozen: Any = None
               ) -> tuple[jax.Array, tuple[dict[str, jax.Array], jax.Array]]:
    """Numerator (differentiated), the summed statistics of one microbatch, and each target
    token's weighted cross-entropy (for per-language and per-task loss on the host).
    `frozen`: the LoRA base, joined to `params` (the adapters) but not differentiated."""
    # LoRA's output projection is frozen (no kernel gradient) unless some of its rows train
    trains_rows = lora.trainable_tokens(family.config) is not None
    if frozen is not None:
        params = lora.with_token_rows(lora.join(frozen, params), family.config)
    spec = family.batch_spec
    hidden = family.hidden_states(params, batch, dropout_rng)
    targets = batch[spec.targets]
    weights = batch.get(spec.loss_weights, (targets > 0).astype(jnp.float32))
    weights = weights.astype(jnp.float32)
    token_weights, denominator = losses.normalization_weights(
        weights, loss.normalizing_factor, batch.get(spec.target_segments))
    kernel, compute_dtype, scale = family.output_projection(params)
    numerator, per_token, z = losses.fused_cross_entropy(
        hidden, kernel, targets, token_weights,
        losses.ChunkedLoss(loss.chunks, loss.z_loss, loss.label_smoothing, compute_dtype, scale,
                           loss.unroll_loops, kernel_grad=frozen is None or trains_rows,
                           kernel=loss.kernel))
    stats = {"denominator": denominator, "z_numerator": jnp.sum(z * token_weights),
             "tokens": jnp.sum(weights)}
    return numerator, (stats, per_token * weights)


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
    """[batch, ...] -> [k, batch / k, ...]. Microbatch i takes rows i, i + k, i + 2k, ...:
    every device holds a share of every microbatch, so no microbatch sits on 1/k of the
    data-parallel devices (MaxText)."""
    size = next(iter(batch.values())).shape[0]
    if size % num_microbatches:
        raise SettingError(f"batch size {size} is not divisible by "
                           f"{num_microbatches} microbatches")
    return jax.tree.map(lambda x: jnp.swapaxes(
        x.reshape((size // num_microbatches, num_microbatches) + x.shape[1:]), 0, 1), batch)


def _join_microbatches(x: jax.Array) -> jax.Array:
    """The inverse of `_split_microbatches` for one array: rows back in batch order."""
    return jnp.swapaxes(x, 0, 1).reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def _summed_over_microbatches(fn, batch: Batch, num_microbatches: int, unroll: bool = False):
    """fn(microbatch, index) -> (sums, per_row): the sums added over the microbatches (one
    scan, or unrolled for `mtf.plan`'s cost compiles), the per-row results back in batch
    order; k = 1 calls fn(batch, None) once."""
    if num_microbatches == 1:
        return fn(batch, None)
    micro = _split_microbatches(batch, num_microbatches)

    def body(carry, xs):
        index, mb = xs
        mb = {k: nn.with_logical_constraint(v, ("batch", "length")) for k, v in mb.items()}
        sums, per_row = fn(mb, index)
        return jax.tree.map(jnp.add, carry, sums), per_row

    shapes = jax.eval_shape(lambda mb: fn(mb, jnp.int32(0))[0],
                            jax.tree.map(lambda x: x[0], micro))
    zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    sums, per_row = jax.lax.scan(body, zero, (jnp.arange(num_microbatches), micro),
                                 unroll=num_microbatches if unroll else 1)
    return sums, _join_microbatches(per_row)


def gradients(params: Any, batch: Batch, dropout_rng: jax.Array | None, family: ModelFamily,
              loss: LossConfig, num_microbatches: int = 1, frozen: Any = None):
    """(loss, grads, stats): sums over microbatches, one division at the end; gradients
    of `params` only (with LoRA: the adapters, `frozen` being the base)."""
    grad_fn = jax.value_and_grad(loss_terms, has_aux=True)

    def terms(mb, index):
        rng = (dropout_rng if dropout_rng is None or index is None
               else jax.random.fold_in(dropout_rng, index))
        (numerator, (stats, token_loss)), grads = grad_fn(params, mb, rng, family, loss,
                                                          frozen)
        return (numerator, stats, grads), token_loss

    (numerator, stats, grads), token_loss = _summed_over_microbatches(
        terms, batch, num_microbatches, loss.unroll_loops)
    norm = losses.normalizer(loss.normalizing_factor, stats["denominator"])
    grads = jax.tree.map(lambda g: g / norm, grads)
    return numerator / norm, grads, {"z_loss": stats["z_numerator"] / norm,
                                     "tokens": stats["tokens"], "token_loss": token_loss}


def train_step(state: TrainState, batch: Batch, dropout_rng: jax.Array | None, *,
               config: ModelConfig, optimizer: optax.GradientTransformation, loss: LossConfig,
               num_microbatches: int = 1, learning_rate: optax.Schedule | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    family = family_of(config)
    rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, state.step)
    value, grads, stats = gradients(state.params, batch, rng, family, loss, num_microbatches,
                                    state.frozen)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": value, "grad_norm": optax.global_norm(grads), **stats}
    if learning_rate is not None:
        metrics["learning_rate"] = learning_rate(state.step)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_metrics(params: Any, batch: Batch, *, config: ModelConfig, loss: LossConfig,
                 num_microbatches: int = 1) -> dict[str, jax.Array]:
    """The train step's loss on a batch, without dropout or gradients (validation loss);
    microbatched the same way, so a batch that trains also evaluates in memory."""
    family = family_of(config)

    def terms(mb, _index):
        numerator, (stats, token_loss) = loss_terms(params, mb, None, family, loss)
        return (numerator, stats), token_loss

    (numerator, stats), token_loss = _summed_over_microbatches(terms, batch, num_microbatches)
    norm = losses.normalizer(loss.normalizing_factor, stats["denominator"])
    return {"loss": numerator / norm, "z_loss": stats["z_numerator"] / norm,
            "tokens": stats["tokens"], "token_loss": token_loss}
