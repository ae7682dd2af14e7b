"""LoRA parameter trees: which kernels get adapters, base/adapter split and join, merging.

Adapters live in the parameter tree beside their kernel (`.../query/lora_a`, `lora_b`), so
scanning, sharding and checkpoint code treat them like any parameter; training splits them
off (`split`) to differentiate and optimise them alone.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mtf.errors import SettingError
from mtf.model.family import ModelConfig, family_of
from mtf.model.params import TOKEN_ROWS, abstract_params, flat_shapes

Params = dict[str, Any]
ADAPTER_LEAVES = ("lora_a", "lora_b")
# the kernels an adapter can sit beside (attention projections and MLP layers)
_CANDIDATE = re.compile(r"/(attention|self_attention|encoder_decoder_attention|mlp)/[^/]+/kernel$")


def is_adapter(path: tuple[str, ...]) -> bool:
    return path[-1] in ADAPTER_LEAVES or path[-1].endswith(TOKEN_ROWS)


def _matrix_of(path: tuple[str, ...]) -> tuple[str, ...]:
    """The vocabulary matrix whose rows the leaf at `path` (`<matrix>_token_rows`) holds."""
    return path[:-1] + (path[-1][:-len(TOKEN_ROWS)],)


def _vocab_axis(matrix: tuple[int, ...], rows: tuple[int, ...]) -> int:
    """The axis the rows were cut along: where their shape differs from their matrix's (0
    when they are the whole matrix: every axis then starts at 0)."""
    return next((i for i, (m, r) in enumerate(zip(matrix, rows, strict=True)) if m != r), 0)


def trainable_tokens(config: ModelConfig) -> tuple[int, int] | None:
    """LORA_TRAINABLE_TOKENS: the ids whose rows train beside the adapters, or None."""
    return config.lora.trainable_tokens if config.lora is not None else None


def with_token_rows(params: Params, config: ModelConfig) -> Params:
    """The tree the network applies: each vocabulary matrix with its trainable rows
    (LORA_TRAINABLE_TOKENS) written in, the row leaves dropped (a tree of shardings or
    shapes only drops them). Without trainable rows, `params` as it is."""
    tokens = trainable_tokens(config)
    flat = traverse_util.flatten_dict(params)
    rows = [k for k in flat if k[-1].endswith(TOKEN_ROWS)]
    if tokens is None or not rows:
        return params
    for key in rows:
        value, matrix = flat.pop(key), _matrix_of(key)
        if isinstance(value, jax.Array | np.ndarray):
            start = [0] * np.ndim(value)
            start[_vocab_axis(np.shape(flat[matrix]), np.shape(value))] = tokens[0]
            flat[matrix] = jax.lax.dynamic_update_slice(
                flat[matrix], jnp.asarray(value, flat[matrix].dtype), tuple(start))
    return traverse_util.unflatten_dict(flat)


def token_rows_from(base: Params, config: ModelConfig) -> dict[tuple[str, ...], Any]:
    """{row leaf: the base's rows} for the trainable rows' leaves of `config`'s tree: what
    they start from (the adapted model equals the base at step 0)."""
    tokens = trainable_tokens(config)
    if tokens is None:
        return {}
    shapes = traverse_util.flatten_dict(abstract_params(config))
    flat = traverse_util.flatten_dict(base)
    return {key: jax.lax.slice_in_dim(
                flat[_matrix_of(key)], tokens[0], tokens[1],
                axis=_vocab_axis(shapes[_matrix_of(key)].shape, shape.shape))
            for key, shape in shapes.items() if key[-1].endswith(TOKEN_ROWS)}


def split(params: Params) -> tuple[Params, Params]:
    """(base, adapters) of an adapted model's parameter tree."""
    flat = traverse_util.flatten_dict(params)
    base = {k: v for k, v in flat.items() if not is_adapter(k)}
    adapters = {k: v for k, v in flat.items() if is_adapter(k)}
    return traverse_util.unflatten_dict(base), traverse_util.unflatten_dict(adapters)


def join(base: Params, adapters: Params) -> Params:
    """The adapted model's tree: the base with the adapters beside their kernels."""
    flat = traverse_util.flatten_dict(base)
    flat.update(traverse_util.flatten_dict(adapters))
    return traverse_util.unflatten_dict(flat)


def candidates(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The kernels LoRA may target, T5X name -> shape (of this config's tree)."""
    return {name: shape for name, shape in flat_shapes(config.base).items()
            if _CANDIDATE.search("/" + name)}


def targeted(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The kernels that get adapters, name -> shape; errors name what could have matched
    (a pattern that matches nothing) or the kernel a rank does not fit."""
    lora = config.lora
    if lora is None:
        return {}
    options = candidates(config)
    chosen = {n: s for n, s in options.items() if lora.applies_to(n)}
    if not chosen:
        layer0 = sorted(n for n in options if re.search(r"/layers(_0)?/", n))
        raise SettingError(
            f"LORA_TARGETS={lora.targets!r} matches no kernel. It is searched (re.search) in "
            f"the names {layer0} (and the same in every layer: layers_N, or layers when "
            "SCAN_LAYERS=True); e.g. 'attention/(query|value)/kernel$' for q and v only")
    for name, shape in chosen.items():
        dims = shape[-2:]
        if lora.rank > min(dims):
            raise SettingError(
                f"LORA_RANK={lora.rank} is larger than kernel {name}'s dimensions {dims}; a "
                f"rank above {min(dims)} adds nothing there. Lower LORA_RANK or leave that "
                "kernel out of LORA_TARGETS")
    return chosen


def count(adapters: Params) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(adapters)))


def merge(params: Params, config: ModelConfig) -> Params:
    """The plain model's tree: each kernel W + (alpha / r) A B in float32, adapters dropped
    (a checkpoint any mT5 code can load: no adapter code needed)."""
    if config.lora is None:
        return params
    scale = np.float32(config.lora.scale)
    flat = traverse_util.flatten_dict(with_token_rows(params, config))
    out = {k: v for k, v in flat.items() if not is_adapter(k)}
    for key in [k for k in flat if k[-1] == "lora_a"]:
        module = key[:-1]
        a = jnp.asarray(flat[key], jnp.float32)
        b = jnp.asarray(flat[module + ("lora_b",)], jnp.float32)
        kernel = jnp.asarray(flat[module + ("kernel",)], jnp.float32)
        # '...' keeps a scanned tree's leading layer axis
        out[module + ("kernel",)] = np.asarray(
            kernel + scale * jnp.einsum("...ri,...ro->...io", a, b,
                                        precision=jax.lax.Precision.HIGHEST))
    return traverse_util.unflatten_dict(out)


def unscan_adapters(adapters: Params) -> Params:
    """Adapters of a scanned tree (leading layer axis under `layers`) as `layers_N`."""
    out = {}
    for key, value in traverse_util.flatten_dict(adapters).items():
        if len(key) < 2 or key[1] != "layers":  # trainable token rows: outside the stacks
            out[key] = np.asarray(value)
            continue
        stack, rest = key[0], key[2:]
        for i in range(np.shape(value)[0]):
            out[(stack, f"layers_{i}") + rest] = np.asarray(value[i])
    return traverse_util.unflatten_dict(out)


def scan_adapters(adapters: Params, config: ModelConfig) -> Params:
    """Inverse of `unscan_adapters` (every layer of a stack must have the adapter: a scanned
    tree holds one for all)."""
    layers = family_of(config).layer_stacks
    groups: dict[tuple[str, ...], dict[int, Any]] = {}
    out = {}
    for key, value in traverse_util.flatten_dict(adapters).items():
        if len(key) < 2 or not key[1].startswith("layers_"):  # token rows: not in a stack
            out[key] = np.asarray(value)
            continue
        index = int(key[1][len("layers_"):])
        groups.setdefault((key[0], "layers") + key[2:], {})[index] = value
    for key, by_layer in groups.items():
        if sorted(by_layer) != list(range(layers[key[0]])):
            raise SettingError(f"adapters of {'/'.join(key)} exist in layers "
                               f"{sorted(by_layer)} only: a scanned model (SCAN_LAYERS=True) "
                               "needs them in every layer; use SCAN_LAYERS=False")
        out[key] = np.stack([np.asarray(by_layer[i]) for i in sorted(by_layer)])
    return traverse_util.unflatten_dict(out)
