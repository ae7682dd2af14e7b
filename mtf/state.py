"""Train state initialised directly sharded, from its abstract shape (nothing gathered)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mtf import partitioning
from mtf.model import T5Config, init_params, logical_axes
from mtf.step import TrainState


def _init(config: T5Config, optimizer: optax.GradientTransformation, rng: jax.Array
          ) -> TrainState:
    params = init_params(config, rng)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params))


def state_shardings(config: T5Config, optimizer: optax.GradientTransformation, mesh: Mesh,
                    rules=partitioning.RULES) -> tuple[TrainState, TrainState]:
    """(abstract state, its shardings). Optimizer statistics shaped like their parameter
    share its sharding (fully sharded optimizer state); factored rows/columns and scalars
    are replicated (they are small)."""
    abstract = jax.eval_shape(functools.partial(_init, config, optimizer), jax.random.key(0))
    specs = logical_axes(config)
    missing = partitioning.unannotated(specs, abstract.params)
    if missing:
        raise ValueError(f"parameters without logical axis names: {missing}")
    param_shardings = partitioning.logical_to_sharding(specs, mesh, rules)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_shardings = optax.tree_map_params(
        optimizer,
        lambda leaf, sharding, param: sharding if leaf.shape == param.shape else replicated,
        abstract.opt_state, param_shardings, abstract.params,
        transform_non_params=lambda _: replicated)
    shardings = TrainState(step=replicated, params=param_shardings, opt_state=opt_shardings)
    return abstract, shardings


def init_state(config: T5Config, optimizer: optax.GradientTransformation, mesh: Mesh,
               rng: jax.Array, rules=partitioning.RULES) -> TrainState:
    _, shardings = state_shardings(config, optimizer, mesh, rules)
    return jax.jit(functools.partial(_init, config, optimizer), out_shardings=shardings)(rng)
