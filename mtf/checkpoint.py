"""Orbax checkpoints of a run: the train state, the data position, the model config.

`MODEL_DIR/checkpoints/<step>/` holds `state` (Orbax PyTree; params optionally stored in
bfloat16), `data` (JSON: batches consumed, seed) and `config` (JSON: ModelConfig). Orbax
writes each step to a temporary directory and renames it when complete, so a half-written
checkpoint is never picked up. Saves are asynchronous: training goes on while they write.
Restoring into shardings of another mesh (or host count) reshards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mtf import storage
from mtf.errors import CheckpointError, SettingError
from mtf.model import ModelConfig, abstract_params, config_from_json

Params = dict[str, Any]

STORAGE_DTYPES = ("float32", "bfloat16")


class UnreadableCheckpointError(CheckpointError):
    """A saved step whose files cannot be read (damaged); an earlier step may be intact."""


@gin.configurable(module="mtf.checkpoint")
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """period: save every N steps (and at the end, and on SIGTERM); minutes: also save when
    this many minutes passed since the last save (a hard crash loses minutes, not hours);
    keep: newest N kept; dtype: storage dtype of the parameters (optimizer state stays
    float32)."""

    period: int = 1000
    minutes: float | None = None
    keep: int | None = 3
    dtype: str = "float32"
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class DataPosition:
    """Where a run's data stands at a saved step (the step's `data/`): the batches consumed,
    what they were drawn from (mixture, shuffle seed, batch size, vocabulary, token cache),
    a LoRA run's base record, and each process's stream state (packed token-cache streams:
    the batch count alone cannot place them). A fresh run is at `DataPosition()`."""

    batches: int = 0
    mixture: str | None = None
    seed: int | None = None
    batch_size: int | None = None
    vocabulary: str | None = None
    cache: str | None = None
    lora_base: dict[str, str] | None = None
    streams: list[dict[str, Any]] | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> DataPosition:
        """A saved position (keys it does not know, from another version, are left out)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in saved.items() if k in known})


def _cast_params(state: Any, dtype: str) -> Any:
    if dtype == "float32":
        return state
    return state.replace(params=jax.tree.map(lambda x: x.astype(jnp.bfloat16), state.params))


class Checkpoints:
    """One run's CheckpointManager."""

    def __init__(self, model_dir: str, config: CheckpointConfig = CheckpointConfig()):
        if config.dtype not in STORAGE_DTYPES:
            raise SettingError(f"checkpoint dtype {config.dtype!r}: use one of {STORAGE_DTYPES}")
        self.config = config
        self.directory = storage.path(model_dir) / "checkpoints"
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=config.keep, save_interval_steps=1, create=True,
                enable_async_checkpointing=config.async_save, cleanup_tmp_directories=True),
            item_names=("state", "data", "config"))

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, data_position: DataPosition,
             model_config: ModelConfig) -> None:
        with self._disk_errors(step):
            if step in self.manager.all_steps():
                return
            stored = _cast_params(state, self.config.dtype)
            self.state_bytes = sum(x.nbytes for x in jax.tree.leaves(stored))
            self._check_free_space(step)
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(stored),
                data=ocp.args.JsonSave(data_position.to_json()),
                config=ocp.args.JsonSave(json.loads(model_config.to_json()))), force=True)

    def wait(self) -> None:
        with self._disk_errors(None):
            self.manager.wait_until_finished()

    def close(self) -> None:
        with self._disk_errors(None):
            self.manager.wait_until_finished()
        self.manager.close()

    state_bytes = 0

    def _free_bytes(self) -> int | None:
        if storage.is_remote(str(self.directory)):
            return None
        return shutil.disk_usage(str(self.directory)).free

    def _full(self, step: int | None, free: int | None) -> storage.StorageError:
        need = self.state_bytes / jax.process_count() / 2 ** 20
        have = f"{free / 2 ** 20:.0f} MiB are free" if free is not None else "it is full"
        saved = self.all_steps()
        kept = (f"the checkpoints already saved (steps {saved}) are intact and a rerun resumes "
                f"from step {saved[-1]}" if saved else "no checkpoint was saved yet")
        what = f"step {step}" if step is not None else "a checkpoint"
        return storage.StorageError(
            f"no space left in {self.directory} to save {what}: each needs about {need:.0f} "
            f"MiB on this host and {have}. Free space there (KEEP_CHECKPOINTS keeps fewer) or "
            f"set MODEL_DIR to a larger disk; {kept}")

    def _check_free_space(self, step: int) -> None:
        free = self._free_bytes()
        if free is not None and free < self.state_bytes / jax.process_count():
            self.manager.wait_until_finished()
            raise self._full(step, free)

    @contextlib.contextmanager
    def _disk_errors(self, step: int | None):
        """An out-of-space error from Orbax's (background) writes, named as one."""
        try:
            yield
        except Exception as e:
            chain, cause = [], e
            while cause is not None and len(chain) < 10:
                chain.append(cause)
                cause = cause.__cause__ or cause.__context__
            if any(getattr(c, "errno", None) == errno.ENOSPC or "No space left on device"
                   in str(c) for c in chain):
                raise self._full(step, self._free_bytes()) from e
            raise

    def set_aside(self, step: int) -> str:
        """Moves a damaged step out of the way (kept, never deleted) so that saving that
        step again and the next restart do not meet it; returns where it went."""
        target = self.directory.parent / "damaged_checkpoints" / str(step)
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"mtf set aside step {step}")
        self.manager.reload()
        return str(target)

    def _shapes_match(self, step: int, abstract_state: Any) -> bool:
        """Whether the step's saved array shapes are those of `abstract_state` (True when
        its metadata cannot be read either: then the step is damaged, not mismatched)."""
        try:
            with ocp.StandardCheckpointer() as reader:
                meta = reader.metadata(self.directory / str(step) / "state")
        except Exception:
            return True
        tree = getattr(meta, "item_metadata", meta)
        saved = sorted(tuple(m.shape) for m in jax.tree.leaves(getattr(tree, "tree", tree))
                       if hasattr(m, "shape"))
        wanted = sorted(tuple(a.shape) for a in jax.tree.leaves(abstract_state))
        return saved == wanted

    def restore(self, step: int, abstract_state: Any, shardings: Any
                ) -> tuple[Any, DataPosition, ModelConfig]:
        """(state placed on `shardings`, data position, saved config). Reshards as needed."""
        target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                              abstract_state, shardings)
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore()))
        except Exception as e:
            if not self._shapes_match(step, abstract_state):
                raise CheckpointError(
                    f"checkpoint {self.directory / str(step)} does not fit this run's model or "
                    f"optimizer: {e}. Use a fresh MODEL_DIR, or the matching model gin file"
                ) from e
            reason = str(e).splitlines()[0].split(" See full TensorStore details")[0][:300]
            raise UnreadableCheckpointError(
                f"checkpoint {self.directory / str(step)} cannot be read ({type(e).__name__}: "
                f"{reason}); a file of it is damaged or missing") from e
        saved = config_from_json(json.dumps(dict(restored["config"])))
        return restored["state"], DataPosition.from_json(dict(restored["data"])), saved


# The run directory's layout, read back by conversion, evaluation and inference.

def resolved_path(path: str | os.PathLike) -> Any:
    """An epath for a local (made absolute) or gs:// path."""
    path = os.fspath(path)
    return storage.path(path if storage.is_remote(path) else os.path.abspath(path))


def is_train_step(path: str | os.PathLike) -> bool:
    """True for a training run's `MODEL_DIR/checkpoints/<step>` directory."""
    p = resolved_path(path)
    return (p / "state").exists() and (p / "config" / "metadata").exists()


def training_step(path: str | os.PathLike, step: int | None = None) -> str | None:
    """The step folder a path names: `MODEL_DIR` (its newest step, or `step`), a
    `checkpoints/` folder, or a step folder itself; None when it is none of these."""
    p = resolved_path(path)
    if step is None and is_train_step(p):
        return os.fspath(p)
    for folder in (p / "checkpoints", p):
        if folder.is_dir():
            steps = sorted(int(q.name) for q in folder.iterdir() if q.name.isdigit()
                           and is_train_step(q))
            if steps:
                if step is None:
                    return os.fspath(folder / str(steps[-1]))
                if step not in steps:
                    raise CheckpointError(f"{folder} has no step {step}; it has {steps}")
                return os.fspath(folder / str(step))
    return None


def step_vocabulary(step_dir: str | os.PathLike) -> str | None:
    """The SentencePiece model the run trained with (recorded with each step), if any."""
    data = resolved_path(step_dir) / "data" / "metadata"
    if not data.exists():
        return None
    return json.loads(data.read_text()).get("vocabulary")


def train_step_params(path: str | os.PathLike) -> tuple[ModelConfig, Params]:
    """(config, float32 params) of `MODEL_DIR/checkpoints/<step>`: the parameters alone, no
    optimizer state."""
    path = resolved_path(path)
    config = config_from_json((path / "config" / "metadata").read_text())
    return config, restore_float32(path / "state", abstract_params(config), "params",
                                   "the parameters of this training step")


def restore_float32(where: Any, abstract: Params, key: str | None, what: str) -> Params:
    """The float32 numpy tree shaped like `abstract` from an Orbax PyTree at `where` (under
    `key` of it when given, the rest of it left unread)."""
    target = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), abstract)
    restore = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray,
                                                     dtype=np.float32), target)
    item, args = (target, restore) if key is None else ({key: target}, {key: restore})
    with ocp.PyTreeCheckpointer() as checkpointer:
        try:
            out = checkpointer.restore(where, args=ocp.args.PyTreeRestore(
                item=item, restore_args=args, partial_restore=True))
        except Exception as e:
            raise CheckpointError(f"{where}: cannot read {what} ({type(e).__name__}: {e}); "
                                  "the step may be incomplete or corrupt: try an earlier "
                                  "one") from e
    return out if key is None else out[key]
