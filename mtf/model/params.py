"""Parameter trees: initialisation, abstract shapes, logical axes, scanned <-> unscanned."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from mtf.errors import SettingError
from mtf.model.family import ModelConfig, family_of

Params = dict[str, Any]


TOKEN_ROWS = "_token_rows"  # the suffix of a vocabulary matrix's trainable rows (LoRA)


def _boxed_init(config: ModelConfig, rng: jax.Array) -> Params:
    boxed = family_of(config).boxed_params(rng)
    lora = config.lora
    if lora is None or lora.trainable_tokens is None:
        return boxed
    first, end = lora.trainable_tokens
    if end > config.vocab_size:
        raise SettingError(f"LORA_TRAINABLE_TOKENS={lora.trainable_tokens} ends beyond the "
                           f"model's {config.vocab_size} vocabulary rows")
    flat = traverse_util.flatten_dict(boxed)
    for key, leaf in list(flat.items()):
        names = tuple(getattr(leaf, "names", ()) or ())
        if "vocab" in names:  # the rows, as their matrix lays them out; that axis unsharded
            axis = names.index("vocab")
            flat[key[:-1] + (key[-1] + TOKEN_ROWS,)] = leaf.replace(
                value=jax.lax.slice_in_dim(leaf.value, first, end, axis=axis),
                names=tuple(None if n == "vocab" else n for n in names))
    return traverse_util.unflatten_dict(flat)


def init_params(config: ModelConfig, rng: jax.Array) -> Params:
    """Randomly initialised float32 parameters (T5X's initialisers)."""
    return nn.meta.unbox(_boxed_init(config, rng))


def _abstract_boxed(config: ModelConfig) -> Params:
    return jax.eval_shape(functools.partial(_boxed_init, config), jax.random.key(0))


def abstract_params(config: ModelConfig) -> Params:
    """The parameter tree as ShapeDtypeStructs, without allocating anything."""
    return nn.meta.unbox(_abstract_boxed(config))


def logical_axes(config: ModelConfig) -> Params:
    """The tree of logical-axis PartitionSpecs, one per parameter."""
    return nn.get_partition_spec(_abstract_boxed(config))


def flat_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """'encoder/layers_0/attention/query/kernel' -> shape, for checking checkpoints."""
    flat = traverse_util.flatten_dict(abstract_params(config), sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}


def scan_params(params: Params, config: ModelConfig) -> Params:
    """Stacks `layers_N` subtrees into one `layers` subtree with a leading layer axis."""
    out = dict(params)
    for stack, depth in family_of(config).layer_stacks.items():
        tree = dict(params[stack])
        layers = [tree.pop(f"layers_{i}") for i in range(depth)]
        tree["layers"] = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]),
                                      *layers)
        out[stack] = tree
    return out


def unscan_params(params: Params, config: ModelConfig) -> Params:
    """Inverse of `scan_params`."""
    out = dict(params)
    for stack, depth in family_of(config).layer_stacks.items():
        tree = dict(params[stack])
        stacked = tree.pop("layers")
        for i in range(depth):
            tree[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
        out[stack] = tree
    return out
