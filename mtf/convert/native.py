"""mtf's own parameter checkpoints: an Orbax PyTree of params beside the model's config.json.

Layout of a directory: `config.json` (T5Config) and `params/` (Orbax, float32). A training
run's step (its layout is `mtf.checkpoint`'s) is read too: only its parameters are restored.
Paths may be local or gs:// (`mtf.storage`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from mtf import checkpoint
from mtf.convert.errors import CheckpointError, check_names_and_shapes
from mtf.model import T5Config, abstract_params, flat_shapes

Params = dict[str, Any]


def save_params(path: str | os.PathLike, config: T5Config, params: Params) -> None:
    path = checkpoint.resolved_path(path)
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
    if checkpoint.is_train_step(path):
        return checkpoint.train_step_params(path)
    path = checkpoint.resolved_path(path)
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
