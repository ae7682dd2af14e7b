"""mtf's own parameter checkpoints: an Orbax PyTree of params beside the model's config.json.

Layout of a directory: `config.json` (the model config), `params/` (Orbax, float32) and
the tokenizer as `vocabulary.model` (SentencePiece) or `vocabulary.json` when known. A training
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

from mtf import checkpoint, storage
from mtf.convert.errors import CheckpointError, check_names_and_shapes
from mtf.model import ModelConfig, abstract_params, config_from_json, flat_shapes

Params = dict[str, Any]


# the tokenizer beside the parameters: a SentencePiece model, or a tokenizers JSON file
VOCABULARY_FILES = ("vocabulary.model", "vocabulary.json")


def save_params(path: str | os.PathLike, config: ModelConfig, params: Params,
                vocabulary: str | None = None) -> None:
    """config.json, params/ and, given one, the tokenizer as vocabulary.model (SentencePiece)
    or vocabulary.json (`tokenizers`): what evaluation and inference read by default."""
    path = checkpoint.resolved_path(path)
    check_names_and_shapes(
        {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(params, sep="/").items()},
        flat_shapes(config), "the parameters given to save_params")
    path.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path / "params", params, force=True)
        checkpointer.wait_until_finished()
    (path / "config.json").write_text(config.to_json())
    if vocabulary:
        name = VOCABULARY_FILES[1] if vocabulary.endswith(".json") else VOCABULARY_FILES[0]
        (path / name).write_bytes(storage.read_bytes(vocabulary))


def load_params(path: str | os.PathLike) -> tuple[ModelConfig, Params]:
    """(config, float32 params) of a parameter directory or of a training run's step."""
    if checkpoint.is_train_step(path):
        return checkpoint.train_step_params(path)
    path = checkpoint.resolved_path(path)
    if not (path / "config.json").exists() or not (path / "params").exists():
        raise CheckpointError(f"{path} is not an mtf parameter directory (expected "
                              "config.json and params/, as written by save_params) nor a "
                              "training step (MODEL_DIR/checkpoints/<step> with state/ and "
                              "config/)")
    config = config_from_json((path / "config.json").read_text())
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, np.float32),
                          abstract_params(config))
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            params = checkpointer.restore(path / "params", target)
        except Exception as e:
            raise CheckpointError(f"{path}/params does not restore into the model of its "
                                  f"config.json: {e}") from e
    return config, params
