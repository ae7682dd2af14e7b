"""A model's vocabulary-sized matrices grown to an extended vocabulary, nothing else touched.

Every parameter with a logical `vocab` axis (the input embedding; mT5's untied output
projection; a tied family has only the one) gains rows; old rows keep their values, so
text the old vocabulary splits the same way gives the same logits for every old id. A new
piece's row is the mean of the rows of the base pieces the old vocabulary splits it into,
in the input and output matrices alike (the initialisation of Chinese-LLaMA-style
extensions and the baseline of FOCUS, arXiv 2305.14481); rows no piece uses (padding up to
a multiple of 128, which keeps the vocabulary axis shardable) get the mean of all old rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from mtf.errors import UserError
from mtf.model import ModelConfig, logical_axes

VOCAB_AXIS = "vocab"
PAD_TO = 128  # the vocabulary axis is sharded over the model axis: keep it divisible


def padded(size: int) -> int:
    return -(-size // PAD_TO) * PAD_TO


def grow(config: ModelConfig, params: Any, first_new_id: int,
         new_rows: Sequence[Sequence[int]]) -> tuple[ModelConfig, Any]:
    """(config, params) with `vocab_size` = the extended vocabulary padded to 128, row
    `first_new_id + k` initialised from the old rows `new_rows[k]`."""
    old = config.vocab_size
    if first_new_id > old:
        raise UserError(f"the extended vocabulary's first new id {first_new_id} is beyond "
                        f"the model's {old} rows: the checkpoint is not of this vocabulary's "
                        "base")
    size = padded(first_new_id + len(new_rows))
    axes = traverse_util.flatten_dict(logical_axes(config), sep="/")
    flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, params), sep="/")
    grown = {}
    for name, value in flat.items():
        spec = tuple(axes[name])
        if VOCAB_AXIS not in spec:
            grown[name] = value
            continue
        axis = spec.index(VOCAB_AXIS)
        rows = np.moveaxis(value, axis, 0)  # [vocab, ...]
        used = rows[:first_new_id]
        out = np.broadcast_to(used.mean(axis=0), (size, *rows.shape[1:])).copy()
        out[:first_new_id] = used
        for k, ids in enumerate(new_rows):
            ids = [i for i in ids if i < first_new_id]
            if ids:  # a piece the old vocabulary cannot spell keeps the mean of all rows
                out[first_new_id + k] = rows[ids].mean(axis=0)
        grown[name] = np.moveaxis(out.astype(value.dtype), 0, axis)
    return (config.replace(vocab_size=size),
            traverse_util.unflatten_dict(grown, sep="/"))
