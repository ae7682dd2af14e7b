"""Train state initialised directly sharded, from its abstract shape (nothing gathered).

With LoRA (the model config's `lora`) the state trains the adapters only: `params` holds
them and the optimizer state is theirs; the base sits in `frozen`, in the LoRA base dtype.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mtf import partitioning
from mtf.model import ModelConfig, init_params, logical_axes, lora


class TrainState(flax.struct.PyTreeNode):
    """`params` are what trains (all parameters; with LoRA the adapters alone), `frozen` the
    LoRA base that does not (no gradients, no optimizer state; None without LoRA)."""

    step: jax.Array
    params: Any
    opt_state: Any
    frozen: Any = None

    def model_params(self) -> Any:
        """The whole tree the network applies (the base joined with the adapters)."""
        return self.params if self.frozen is None else lora.join(self.frozen, self.params)


def trained_and_frozen(params: Any, config: ModelConfig) -> tuple[Any, Any]:
    """(what trains, what stays frozen or None) of a full parameter tree (or any tree shaped
    like it, e.g. its shardings)."""
    if config.lora is None:
        return params, None
    base, adapters = lora.split(params)
    return adapters, base


def frozen_dtype(config: ModelConfig) -> jnp.dtype:
    return jnp.dtype(config.lora.base_dtype if config.lora else "float32")


def _init(config: ModelConfig, optimizer: optax.GradientTransformation, rng: jax.Array
          ) -> TrainState:
    trained, frozen = trained_and_frozen(init_params(config, rng), config)
    if frozen is not None:
        frozen = jax.tree.map(lambda x: x.astype(frozen_dtype(config)), frozen)
    return TrainState(step=jnp.zeros((), jnp.int32), params=trained,
                      opt_state=optimizer.init(trained), frozen=frozen)


def state_shardings(config: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh,
                    rules=partitioning.RULES) -> tuple[TrainState, TrainState]:
    """(abstract state, its shardings). Optimizer statistics shaped like their parameter
    share its sharding (fully sharded optimizer state); factored rows/columns and scalars
    are replicated (they are small)."""
    lora.targeted(config)  # LoRA settings that select nothing, or do not fit, fail here
    abstract = jax.eval_shape(functools.partial(_init, config, optimizer), jax.random.key(0))
    specs = logical_axes(config)
    missing = partitioning.unannotated(specs, abstract.model_params())
    if missing:
        raise ValueError(f"parameters without logical axis names: {missing}")
    param_shardings, frozen_shardings = trained_and_frozen(
        partitioning.logical_to_sharding(specs, mesh, rules), config)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_shardings = optax.tree_map_params(
        optimizer,
        lambda leaf, sharding, param: sharding if leaf.shape == param.shape else replicated,
        abstract.opt_state, param_shardings, abstract.params,
        transform_non_params=lambda _: replicated)
    shardings = TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings,
                           frozen=frozen_shardings)
    return abstract, shardings


def init_state(config: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh,
               rng: jax.Array, rules=partitioning.RULES) -> TrainState:
    _, shardings = state_shardings(config, optimizer, mesh, rules)
    return jax.jit(functools.partial(_init, config, optimizer), out_shardings=shardings)(rng)


def init_adapters(config: ModelConfig, optimizer: optax.GradientTransformation, frozen: Any,
                  shardings: TrainState, rng: jax.Array) -> TrainState:
    """A LoRA state at step 0 on a loaded base: fresh adapters (B = 0: the base model's
    outputs) and their optimizer state; the base arrays are used as they are."""
    def fresh(key):  # the random base `_init` makes is dropped (dead code to XLA)
        return _init(config, optimizer, key).replace(frozen=None)

    state = jax.jit(fresh, out_shardings=shardings.replace(frozen=None))(rng)
    rows = lora.token_rows_from(frozen, config)
    if rows:  # trainable token rows start as the base's rows; fresh optimizer state for them
        flat = traverse_util.flatten_dict(state.params)
        places = traverse_util.flatten_dict(shardings.params)
        flat.update({k: jax.device_put(v.astype(jnp.float32), places[k])
                     for k, v in rows.items()})
        params = traverse_util.unflatten_dict(flat)
        state = state.replace(params=params, opt_state=jax.jit(
            optimizer.init, out_shardings=shardings.opt_state)(params))
    return state.replace(frozen=frozen)


def from_params(params: Any, optimizer: optax.GradientTransformation, shardings: TrainState
                ) -> TrainState:
    """A state at step 0 on loaded parameters (already on `shardings.params`): a fresh
    optimizer state, sharded as training shards it."""
    opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
    step0 = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
    return TrainState(step=step0, params=params, opt_state=opt_state)
