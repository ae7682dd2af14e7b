"""The device mesh, the one logical-axis rule table, and the shardings derived from it.

The model names axes logically; this table alone decides parallelism. Mesh axes:
`data` (batch), `fsdp` (batch, and parameters / optimizer state fully sharded),
`model` (tensor parallel over heads, mlp and vocab).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mtf.errors import SettingError
from mtf.model import ModelConfig, logical_axes

MESH_AXES = ("data", "fsdp", "model")

# logical name -> mesh axes. Parameters shard `embed` over fsdp (FSDP/ZeRO-3) and the
# wide dimensions over model (Megatron-style); activations shard batch over data x fsdp.
RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("joined_kv", "model"),
    ("kv", None),
    ("relpos_buckets", None),
    ("layers", None),
    ("lora_rank", None),  # adapters shard like their kernels along the other axis
)


def mesh_shape(sizes: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Resolves one -1 ("the rest") and checks the product equals the device count."""
    sizes = list(sizes)
    if len(sizes) != len(MESH_AXES):
        raise SettingError(f"mesh shape {sizes} must give a size for each of {MESH_AXES}")
    if sizes.count(-1) > 1:
        raise SettingError(f"mesh shape {sizes}: at most one axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if num_devices % known:
            raise SettingError(f"mesh shape {sizes} does not divide {num_devices} devices")
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise SettingError(f"mesh shape {dict(zip(MESH_AXES, sizes, strict=True))} uses "
                           f"{int(np.prod(sizes))} devices, but there are {num_devices}")
    return tuple(sizes)


def make_mesh(sizes: Sequence[int] = (-1, 1, 1), devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh over all devices of all hosts, (data, fsdp, model)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(sizes, len(devices))
    try:
        device_array = jax.experimental.mesh_utils.create_device_mesh(shape, devices)
    except Exception:  # topology-aware placement is a TPU nicety; fall back to plain order
        device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, MESH_AXES)


def logical_to_sharding(logical_specs: Any, mesh: Mesh,
                        rules: Sequence[tuple[str, Any]] = RULES) -> Any:
    """A tree of logical PartitionSpecs -> NamedShardings on `mesh`."""
    mesh_specs = nn.logical_to_mesh(logical_specs, rules)
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), mesh_specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]] = RULES) -> NamedSharding:
    """[batch, length] arrays: batch over the data-parallel axes."""
    (spec,) = nn.logical_to_mesh([PartitionSpec("batch", "length")], rules)
    return NamedSharding(mesh, spec)


def unannotated(logical_specs: Any, abstract: Any) -> list[str]:
    """Paths of parameters whose logical spec is missing or of the wrong rank."""
    bad = []
    specs = jax.tree_util.tree_leaves_with_path(
        logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None)
    leaves = jax.tree_util.tree_leaves_with_path(abstract)
    spec_by_path = {jax.tree_util.keystr(p): s for p, s in specs}
    for path, leaf in leaves:
        spec = spec_by_path.get(jax.tree_util.keystr(path))
        if spec is None or len(spec) != len(leaf.shape):
            bad.append(jax.tree_util.keystr(path))
    return bad


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding,
                 keys: Sequence[str]) -> dict[str, jax.Array]:
    """Each process's rows of a batch -> global arrays on `sharding`."""
    return {k: jax.make_array_from_process_local_data(sharding, local[k]) for k in keys}


def gather(x: jax.Array | np.ndarray) -> np.ndarray:
    """The global array on every host: a global jax.Array, or each host's local rows."""
    if jax.process_count() == 1:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def place(params: Any, shardings: Any, dtype: Any = np.float32) -> Any:
    """Host numpy params -> global arrays on `shardings` (each process puts its shards)."""
    return jax.tree.map(
        lambda x, s: jax.make_array_from_callback(
            np.shape(x), s, lambda index: np.asarray(x[index], dtype)), params, shardings)


@contextlib.contextmanager
def mesh_context(mesh: Mesh) -> Iterator[None]:
    """Where a program is traced or run: `mesh` current, the logical axes ruled by RULES."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(RULES):
        yield


def params_shardings(config: ModelConfig, mesh: Mesh) -> Any:
    """The parameters' shardings on `mesh` under the training rule table."""
    return logical_to_sharding(logical_axes(config), mesh)


def place_params(params: Any, config: ModelConfig, mesh: Mesh) -> Any:
    """Host parameters onto the mesh with the training shardings."""
    return place(params, params_shardings(config, mesh))


def global_array(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """The same host array on every process -> one global array on `sharding`."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
