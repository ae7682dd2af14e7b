"""mtf's own parameter checkpoints: an Orbax PyTree of params beside the model's config.json.

Layout of a directory: `config.json` (T5Config) and `params/` (Orbax, float32). A training
run's step, `MODEL_DIR/checkpoints/<step>` (`state/`, `config/`), is read too: only its
parameters are restored. Paths may be local or gs:// (`mtf.storage`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from mtf import storage
from mtf.convert.errors import CheckpointError, check_names_and_shapes
from mtf.model import T5Config, abstract_params, flat_shapes

Params = dict[str, Any]


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


def save_params(path: str | os.PathLike, config: T5Config, params: Params) -> None:
    path = resolved_path(path)
    check_names_and_shapes(
        {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(params, sep="/").items()},
        flat_shapes(config), "the parameters given to save_params")
    path.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path / "params", params, force=True)
        checkpointer.wait_until_finished()
    (path / "config.json").write_text(config.to_json())


def load_params(path: str | os.PathLike) -> tuple[T5Config, Params]:
    """(config, float32 params) of a parameter directory or of a training run's step."""
    if is_train_step(path):
        return _load_train_step(resolved_path(path))
    path = resolved_path(path)
    if not (path / "config.json").exists() or not (path / "params").exists():
        raise CheckpointError(f"{path} is not an mtf parameter directory (expected "
                              "config.json and params/, as written by save_params) nor a "
                              "training step (MODEL_DIR/checkpoints/<step> with state/ and "
                              "config/)")
    config = T5Config.from_json((path / "config.json").read_text())
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, np.float32),
                          abstract_params(config))
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            params = checkpointer.restore(path / "params", target)
        except Exception as e:
            raise CheckpointError(f"{path}/params does not restore into the model of its "
                                  f"config.json: {e}") from e
    return config, params


def _load_train_step(path: Any) -> tuple[T5Config, Params]:
    """The parameters alone (no optimizer state) of `MODEL_DIR/checkpoints/<step>`."""
    config = T5Config.from_json(json.dumps(json.loads((path / "config" / "metadata")
                                                      .read_text())))
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
