"""The train step as one compiled program: its batch schema, shardings and abstract inputs.

Train, plan and bench build it here, so all three compile exactly the same step (same
shardings, microbatches, loss and remat) whether it then runs or is only measured.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mtf import partitioning, state, step
from mtf.errors import SettingError
from mtf.model import BatchSpec, ModelConfig

DROPOUT_RNGS = ("threefry2x32", "rbg")  # jax.random key implementations for the dropout key



def abstract_batch(spec: BatchSpec, batch_size: int, lengths: Mapping[str, int], pack: bool,
                   sharding: NamedSharding) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct((batch_size, spec.length(k, lengths)), jnp.int32,
                                    sharding=sharding) for k in spec.step_inputs(pack)}


@dataclasses.dataclass(frozen=True)
class TrainProgram:
    """The jitted train step and the abstract (shape, dtype, sharding) of its arguments."""

    mesh: Mesh
    jitted: Any
    abstract_state: state.TrainState
    shardings: state.TrainState
    batch_sharding: NamedSharding
    abstract_batch: dict[str, jax.ShapeDtypeStruct]
    dropout: bool
    dropout_rng: str = "threefry2x32"

    def dropout_key(self, seed: int) -> jax.Array:
        """The dropout key of this program's PRNG implementation ('rbg': the chip's
        hardware generator, T5X's use_hardware_rng; bits then depend on the partitioning)."""
        return jax.random.key(seed, impl=self.dropout_rng)

    def lower(self, rng: jax.Array | None = None) -> Any:
        """Lowers for the abstract arguments (`rng`: the dropout key, or None)."""
        if self.dropout and rng is None:
            rng = jax.ShapeDtypeStruct((), self.dropout_key(0).dtype,
                                       sharding=NamedSharding(self.mesh, PartitionSpec()))
        with partitioning.mesh_context(self.mesh):
            return self.jitted.lower(self.abstract_state, self.abstract_batch,
                                     rng if self.dropout else None)

    def compile(self, rng: jax.Array | None = None) -> Any:
        return self.lower(rng).compile()


def check_kernels_run_on(mesh: Mesh, model_config: ModelConfig, loss: step.LossConfig) -> None:
    """The Pallas TPU kernels (flash attention, the fused loss) compile for TPUs only: say
    so before tracing, not with a lowering error from inside Pallas."""
    platform = mesh.devices.flat[0].platform
    settings = (("ATTENTION_KERNEL", model_config.attention_kernel), ("LOSS_KERNEL", loss.kernel))
    chosen = [(name, value) for name, value in settings if value != "xla"]
    if chosen and platform != "tpu":
        now = " and ".join(f"{name} = {value!r}" for name, value in chosen)
        fix = " and ".join(f"{name} = 'xla'" for name, _ in chosen)
        raise SettingError(
            f"{now} run on TPU only; these devices are {platform}: set {fix} "
            "(the gin files for TPU slices, e.g. gin/mt0_small.gin, set the TPU kernels)")


def check_batch_splits(batch_size: int, batch_sharding: NamedSharding) -> None:
    """BATCH_SIZE must split evenly over the devices the batch is sharded on: say so with
    the mesh, rather than with jax's IndivisibleError from inside tracing."""
    axes = batch_sharding.spec[0] or ()
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    ways = math.prod(batch_sharding.mesh.shape[a] for a in axes)
    if batch_size % ways:
        raise SettingError(
            f"BATCH_SIZE={batch_size} does not split over the {ways} devices the batch is "
            f"sharded on ({' x '.join(axes)} of the mesh {dict(batch_sharding.mesh.shape)}); "
            f"choose a multiple of {ways}, or change MESH_SHAPE")


def train_program(model_config: ModelConfig, optimizer: optax.GradientTransformation,
                  mesh: Mesh, batch_size: int, lengths: Mapping[str, int], pack: bool,
                  loss: step.LossConfig, num_microbatches: int = 1,
                  learning_rate: optax.Schedule | None = None,
                  dropout_rng: str = "threefry2x32") -> TrainProgram:
    """The train step of these settings on `mesh`, ready to lower and compile."""
    if dropout_rng not in DROPOUT_RNGS:
        raise SettingError(f"DROPOUT_RNG={dropout_rng!r}: use one of {DROPOUT_RNGS} ('rbg': "
                           "the hardware generator, much cheaper for large dropout masks)")
    check_kernels_run_on(mesh, model_config, loss)
    abstract, shardings = state.state_shardings(model_config, optimizer, mesh)
    batch_sharding = partitioning.batch_sharding(mesh)
    check_batch_splits(batch_size, batch_sharding)
    replicated = NamedSharding(mesh, PartitionSpec())
    step_fn = functools.partial(step.train_step, config=model_config, optimizer=optimizer,
                                loss=loss, num_microbatches=num_microbatches,
                                learning_rate=learning_rate)
    jitted = jax.jit(step_fn, in_shardings=(shardings, batch_sharding, replicated),
                     out_shardings=(shardings, None), donate_argnums=(0,))
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    return TrainProgram(mesh, jitted, abstract_state, shardings, batch_sharding,
                        abstract_batch(model_config.batch_spec, batch_size, lengths, pack,
                                       batch_sharding),
                        model_config.uses_dropout, dropout_rng)


def eval_program(model_config: ModelConfig, mesh: Mesh, params_sharding: Any,
                 loss: step.LossConfig, num_microbatches: int = 1) -> Any:
    """`step.eval_metrics` jitted with the train step's parameter and batch shardings."""
    check_kernels_run_on(mesh, model_config, loss)
    fn = functools.partial(step.eval_metrics, config=model_config, loss=loss,
                           num_microbatches=num_microbatches)
    jitted = jax.jit(fn, in_shardings=(params_sharding, partitioning.batch_sharding(mesh)))

    def run(params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        with partitioning.mesh_context(mesh):
            return jitted(params, batch)

    return run
