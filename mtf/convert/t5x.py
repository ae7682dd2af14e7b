"""Legacy T5X checkpoints (the format of the public mT5 checkpoints) -> mtf parameters.

A T5X checkpoint is one msgpack file, `checkpoint`, holding the state tree
{'optimizer': {'target': params, 'state': {'step', 'param_states'}}}. Small arrays sit
inline; large ones are tensorstore specs pointing at zarr folders beside it. Specs are
opened one array at a time, so a 13B-parameter checkpoint never sits twice in memory.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import posixpath
from typing import Any

import numpy as np
from flax import serialization, traverse_util

from mtf import storage
from mtf.convert.errors import CheckpointError, check_names_and_shapes
from mtf.model import T5Config, flat_shapes, scan_params

Params = dict[str, Any]


def resolve_spec(spec: dict[str, Any], checkpoint_dir: str) -> dict[str, Any]:
    """Points a stored tensorstore spec at real storage.

    T5X writes `kvstore: {driver: gfile, path: <relative dir>}`; tensorstore has no gfile
    driver, so relative paths are joined to the checkpoint directory and served by the
    `file` driver locally or the `gcs` driver for gs:// paths.
    """
    spec = copy.deepcopy(spec)
    kvstore = spec.get("kvstore")
    if not isinstance(kvstore, dict) or "path" not in kvstore:
        raise CheckpointError(f"tensorstore spec without a kvstore path: {spec}")
    if kvstore.get("driver") == "gcs" and "bucket" in kvstore:
        return spec
    path = kvstore["path"]
    if not (storage.is_remote(path) or os.path.isabs(path)):
        path = storage.join(checkpoint_dir, path)
    if path.startswith("gs://"):
        bucket, _, key = path[len("gs://"):].partition("/")
        spec["kvstore"] = {"driver": "gcs", "bucket": bucket, "path": key}
    else:
        spec["kvstore"] = {"driver": "file", "path": path}
    return spec


@dataclasses.dataclass(frozen=True)
class StoredArray:
    """An array kept out of line in a tensorstore (zarr) folder; read on demand."""

    spec: dict[str, Any]
    name: str

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.spec["metadata"]["shape"])

    def read(self) -> np.ndarray:
        import tensorstore as ts

        try:
            try:
                store = ts.open(self.spec, open=True, read=True).result()
            except ValueError as e:
                if "NOT_FOUND" not in str(e) or ".zarray" not in str(e):
                    raise
                # Copies that lost the dot-file `.zarray`: the spec in the msgpack carries
                # the same metadata, so trust it - but only if chunks are there, since
                # assumed metadata over an absent folder would read as all zeros.
                if not ts.KvStore.open(self.spec["kvstore"]).result().list().result():
                    raise CheckpointError(
                        f"array {self.name}: its folder {self.spec['kvstore']['path']} is "
                        "missing or empty (no .zarray, no chunks); the checkpoint copy is "
                        "incomplete - copy the whole checkpoint directory again") from e
                store = ts.open(self.spec, open=True, read=True, assume_metadata=True).result()
            return np.asarray(store.read().result())
        except CheckpointError:
            raise
        except Exception as e:  # tensorstore raises ValueError with its own codes
            raise CheckpointError(f"cannot read array {self.name} from "
                                  f"{self.spec['kvstore']}: {e}") from e


def _is_spec(node: Any) -> bool:
    return isinstance(node, dict) and "driver" in node and "kvstore" in node


def _attach_specs(node: Any, checkpoint_dir: str, name: str = "") -> Any:
    if _is_spec(node):
        return StoredArray(resolve_spec(node, checkpoint_dir), name)
    if isinstance(node, dict):
        return {k: _attach_specs(v, checkpoint_dir, f"{name}/{k}" if name else k)
                for k, v in node.items()}
    return node


def read_t5x_tree(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's state tree; out-of-line arrays come back as `StoredArray`s."""
    path = os.fspath(path)
    folder = storage.isdir(path)
    file = storage.join(path, "checkpoint") if folder else path
    if not storage.exists(file):
        hint = " (a checkpoint_N directory holds a 'checkpoint' file)" if folder else ""
        raise CheckpointError(f"no T5X checkpoint at {file}{hint}")
    try:
        tree = serialization.msgpack_restore(storage.read_bytes(file))
    except Exception as e:
        raise CheckpointError(f"{file}: not a readable T5X msgpack checkpoint ({e}); it may "
                              "be truncated or corrupt") from e
    if not isinstance(tree, dict) or "optimizer" not in tree:
        keys = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
        raise CheckpointError(f"{file}: not a T5X checkpoint (top level {keys}, expected "
                              "'optimizer' with 'target' and 'state')")
    return _attach_specs(tree, posixpath.dirname(file) if storage.is_remote(file)
                         else os.path.dirname(os.path.abspath(file)))


def materialize(node: Any) -> Any:
    """Reads every StoredArray of a (sub)tree."""
    if isinstance(node, StoredArray):
        return node.read()
    if isinstance(node, dict):
        return {k: materialize(v) for k, v in node.items()}
    return node


def _shape(leaf: Any) -> tuple[int, ...]:
    return tuple(np.shape(leaf)) if not isinstance(leaf, StoredArray) else leaf.shape


def infer_config(target: Params, **overrides: Any) -> T5Config:
    """A T5Config from the parameter shapes (max relative distance is assumed 128)."""
    flat = traverse_util.flatten_dict(target, sep="/")
    try:
        vocab, emb = _shape(flat["token_embedder/embedding"])
        heads, buckets = _shape(flat["encoder/relpos_bias/rel_embedding"])
        joined = _shape(flat["encoder/layers_0/attention/query/kernel"])[1]
        mlp_names = sorted({k.split("/")[3] for k in flat if k.startswith("encoder/layers_0/mlp/")
                            and k.split("/")[3].startswith("wi")})
        mlp_dim = _shape(flat[f"encoder/layers_0/mlp/{mlp_names[0]}/kernel"])[1]
    except (KeyError, IndexError, ValueError) as e:
        raise CheckpointError(f"cannot infer a T5 config from these parameters (missing {e}); "
                              "pass the model config explicitly") from e

    def count(stack: str) -> int:
        return len({k.split("/")[1] for k in flat if k.startswith(f"{stack}/layers_")})

    fields = dict(vocab_size=vocab, emb_dim=emb, num_heads=heads,
                  num_encoder_layers=count("encoder"), num_decoder_layers=count("decoder"),
                  head_dim=joined // heads, mlp_dim=mlp_dim,
                  mlp_activations=("gelu", "linear") if len(mlp_names) == 2 else ("relu",),
                  logits_via_embedding="decoder/logits_dense/kernel" not in flat,
                  relative_attention_num_buckets=buckets)
    fields.update(overrides)
    return T5Config(**fields)


def load_t5x(path: str | os.PathLike, config: T5Config | None = None, *,
             optimizer_state: bool = False):
    """T5X checkpoint -> float32 params (and, if asked, T5X's Adafactor state).

    Returns `params`, or `(params, {'step': int, 'param_states': tree})` with
    `optimizer_state=True`. Without a config, shapes decide it (`infer_config`).
    """
    tree = read_t5x_tree(path)
    optimizer = tree["optimizer"]
    target = optimizer.get("target") if isinstance(optimizer, dict) else None
    if not isinstance(target, dict) or not target:
        raise CheckpointError(f"{path}: the checkpoint holds no parameters "
                              "(optimizer/target is empty)")
    if config is None:
        config = infer_config(target)
    flat = traverse_util.flatten_dict(target, sep="/")
    check_names_and_shapes({k: _shape(v) for k, v in flat.items()},
                           flat_shapes(config.replace(scan_layers=False)), f"T5X checkpoint {path}")
    params = {tuple(k.split("/")): np.asarray(
        v.read() if isinstance(v, StoredArray) else v, dtype=np.float32) for k, v in flat.items()}
    params = traverse_util.unflatten_dict(params)
    if config.scan_layers:
        params = scan_params(params, config.replace(scan_layers=False))
    if not optimizer_state:
        return params
    state = optimizer.get("state", {})
    return params, {"step": int(np.asarray(materialize(state.get("step", 0)))),
                    "param_states": materialize(state.get("param_states", {}))}
