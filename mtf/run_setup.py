"""From a run's configuration to what the run works on, built in one place.

`setup(config)` gives the mesh, the compiled-ahead train program and its optimizer: train,
plan and bench all call it, so what `mtf.plan` measures and `mtf.bench` times is the step
`mtf.launch` trains (MaxText's one `train_compile` for train and AOT). `RunSetup` then
gives train its starting state (the newest readable checkpoint, else
INITIAL_CHECKPOINT_PATH, else random initialisation; a LoRA run's frozen base) and its
data stream from a saved position. The eval and infer runs, which start from one
checkpoint rather than a run config, load their placed parameters with
`checkpoint_params`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import jax
import optax
from jax.sharding import Mesh

from mtf import checkpoint, partitioning, program, state, storage
from mtf.convert import adapters, loading
from mtf.data import batches
from mtf.errors import SettingError
from mtf.model import ModelConfig
from mtf.run_config import RunConfig


@dataclasses.dataclass(frozen=True)
class Start:
    """Where a run starts: its state, the data position, a line saying from what, and (for
    a LoRA run) the record of its frozen base that is saved with the adapters."""

    state: state.TrainState
    position: checkpoint.DataPosition
    source: str
    lora_base: dict[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class RunSetup:
    """A run's mesh, its compiled-ahead train program and the optimizer that program
    applies, for `config`."""

    config: RunConfig
    mesh: Mesh
    program: program.TrainProgram
    optimizer: optax.GradientTransformation

    @property
    def lengths(self) -> dict[str, int]:
        """Every batch feature's length (TASK_FEATURE_LENGTHS, metadata at target length)."""
        return batches.task_feature_lengths(self.config.data.task_feature_lengths)

    def checkpoints(self) -> checkpoint.Checkpoints:
        return checkpoint.Checkpoints(self.config.model_dir, self.config.checkpoint_config)

    def start(self, ckpts: checkpoint.Checkpoints) -> Start:
        """The newest readable checkpoint in MODEL_DIR (damaged ones set aside), else
        INITIAL_CHECKPOINT_PATH's parameters with a fresh optimizer, else random init."""
        config = self.config
        base = self._lora_base() if config.model_config.lora is not None else None
        resumed = self._resume(ckpts, base)
        if resumed is not None:
            return resumed
        shardings = self.program.shardings
        model_config, path = config.model_config, config.initial_checkpoint_path
        if base is not None:
            fresh = state.init_adapters(model_config, self.optimizer, base[0], shardings,
                                        jax.random.key(config.seed))
            return Start(fresh, checkpoint.DataPosition(), f"LoRA adapters (rank "
                         f"{model_config.lora.rank}) initialised on {path}", base[1])
        if path:
            params = partitioning.place(loading.load_initial_params(path, model_config),
                                        shardings.params)
            return Start(state.from_params(params, self.optimizer, shardings),
                         checkpoint.DataPosition(), f"initialised from {path}")
        fresh = state.init_state(model_config, self.optimizer, self.mesh,
                                 jax.random.key(config.seed))
        return Start(fresh, checkpoint.DataPosition(), "random initialisation")

    def stream(self, position: checkpoint.DataPosition) -> batches.Batches:
        """This process's batches after `position` (a packed cached stream from its saved
        state when the checkpoint has one per process, else by its batch count)."""
        config = self.config
        return batches.batches(config.data, config.batch_size, position.batches,
                               jax.process_index(), jax.process_count(),
                               _saved_stream_state(position))

    def _lora_base(self) -> tuple[Any, dict[str, str]]:
        """The frozen base of a LoRA run, placed in its dtype, and its record (checked
        against the one saved with the adapters when resuming)."""
        model_config, path = self.config.model_config, self.config.initial_checkpoint_path
        if not path:
            raise SettingError("a LoRA run (runs/lora.gin) adapts a trained model: set "
                               "INITIAL_CHECKPOINT_PATH to it (an mtf, T5X or Hugging Face "
                               "checkpoint); it is loaded on every start, resume included")
        base = loading.load_initial_params(path, model_config.base)
        record = adapters.base_record(path, model_config, base)
        return (partitioning.place(base, self.program.shardings.frozen,
                                   state.frozen_dtype(model_config)), record)

    def _resume(self, ckpts: checkpoint.Checkpoints,
                lora_base: tuple[Any, dict[str, str]] | None) -> Start | None:
        """The newest readable checkpoint's state and position, or None if there is none."""
        config, abstract, shardings = self.config, self.program.abstract_state, \
            self.program.shardings
        if lora_base is not None:  # only the adapters and their optimizer state are saved
            abstract, shardings = abstract.replace(frozen=None), shardings.replace(frozen=None)
        damaged = []
        for candidate in sorted(ckpts.all_steps(), reverse=True):
            try:
                restored, position, saved = ckpts.restore(candidate, abstract, shardings)
            except checkpoint.UnreadableCheckpointError as e:
                damaged.append(str(e))
                moved = ckpts.set_aside(candidate)
                if jax.process_index() == 0:
                    print(f"warning: {e}; moved it to {moved} and trying the checkpoint "
                          "before it", flush=True)
                continue
            _check_resumable(config, ckpts, candidate, position, saved)
            if lora_base is None:
                return Start(restored, position, f"resumed from step {candidate}")
            frozen, record = lora_base
            adapters.check_base(position.lora_base, record, f"{ckpts.directory}/{candidate}")
            return Start(restored.replace(frozen=frozen), position,
                         f"resumed from step {candidate}", record)
        if damaged:
            raise checkpoint.UnreadableCheckpointError(
                f"no checkpoint in {ckpts.directory} can be read: {'; '.join(damaged)}. They "
                "were moved to damaged_checkpoints/ beside it; rerun to start from "
                "INITIAL_CHECKPOINT_PATH (or random initialisation)")
        return None


def _check_resumable(config: RunConfig, ckpts: checkpoint.Checkpoints, step: int,
                     position: checkpoint.DataPosition, saved: ModelConfig) -> None:
    """Refuses a batch size the checkpoint's position was not counted in; warns on a model
    or mixture that differs from the one it was trained with."""
    if (type(saved) is not type(config.model_config)
            or saved.without_dropout.replace(dtype="float32")
            != config.model_config.without_dropout.replace(dtype="float32")):
        logging.warning("the checkpoint's model config differs from the gin config in "
                        "more than dropout/dtype: %s vs %s", saved, config.model_config)
    if position.batch_size not in (None, config.batch_size):
        raise SettingError(
            f"BATCH_SIZE={config.batch_size}, but the checkpoint at step {step} in "
            f"{ckpts.directory} was trained with BATCH_SIZE={position.batch_size}: the "
            "data position is counted in batches, so resuming would change which examples "
            f"come next. Resume with --gin.BATCH_SIZE={position.batch_size}, or start a "
            f"new MODEL_DIR with --gin.INITIAL_CHECKPOINT_PATH={ckpts.directory}/{step} "
            "(parameters only) to train on with another batch size")
    if position.mixture not in (None, config.data.mixture_or_task_name):
        logging.warning("resuming with mixture %s; the checkpoint was trained on %s",
                        config.data.mixture_or_task_name, position.mixture)


def _saved_stream_state(position: checkpoint.DataPosition) -> dict[str, Any] | None:
    """This process's stream state from a checkpoint's data position (packed cached runs
    save one per process), or None."""
    states = position.streams
    if not states:
        return None
    if len(states) != jax.process_count():
        logging.warning("the checkpoint's stream states are for %d processes, this run has "
                        "%d: the packed stream replays to its position", len(states),
                        jax.process_count())
        return None
    return states[jax.process_index()]


def setup(config: RunConfig, devices: Sequence[Any] | None = None) -> RunSetup:
    """The mesh over `devices` (default: all of them) and the train program `config`
    describes, not yet compiled (train compiles it with its dropout key; plan compiles it
    for its report)."""
    mesh = partitioning.make_mesh(config.mesh_shape, devices)
    schedule_fn, tx = config.optimizer.build()
    lengths = batches.task_feature_lengths(config.data.task_feature_lengths)
    built = program.train_program(config.model_config, tx, mesh, config.batch_size, lengths,
                                  config.data.pack, config.loss, config.num_microbatches,
                                  schedule_fn, config.dropout_rng)
    return RunSetup(config, mesh, built, tx)


def checkpoint_params(model_config: ModelConfig, checkpoint_path: str | None, mesh: Mesh,
                      adapter_path: str | None = None) -> loading.LoadedCheckpoint:
    """One checkpoint's parameters (with ADAPTER_PATH's LoRA adapters merged), placed on
    `mesh` for the eval and infer runs."""
    if not checkpoint_path:
        raise SettingError("CHECKPOINT_PATH is empty; bind it to an mtf MODEL_DIR (its newest "
                           "step), a step folder, a T5X checkpoint or an HF folder")
    storage.check_bucket(checkpoint_path, "CHECKPOINT_PATH")
    loaded = loading.load_checkpoint(checkpoint_path, model_config.base, adapter=adapter_path)
    placed = partitioning.place_params(loaded.params, model_config.base, mesh)
    return dataclasses.replace(loaded, params=placed)
