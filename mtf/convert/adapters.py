"""LoRA adapters on disk: which base they belong to, and reading them back.

A LoRA run saves only the adapters and their optimizer state; every step records the base
it was trained on (`base_record`: path, a hash of the network's shape, a fingerprint of
its normalisation and position weights), and restoring or applying adapters checks it
(`check_base`), so adapters never silently land on another model.

Adapters are read from a LoRA run (its MODEL_DIR, newest step, or a step folder), from an
adapter directory (`save`: config.json + adapters/ + base.json), or from a Hugging Face PEFT
directory (`mtf.convert.peft`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from mtf.checkpoint import resolved_path, restore_float32, training_step
from mtf.convert import peft
from mtf.convert.errors import CheckpointError
from mtf.model import ModelConfig, T5Config, abstract_params, config_from_json, lora

Params = dict[str, Any]
# the fields that decide the network's parameter shapes and function (not dtype, dropout,
# remat or scanning, which a user may change between training and evaluation)
_SHAPE_FIELDS = ("vocab_size", "emb_dim", "num_heads", "num_encoder_layers",
                 "num_decoder_layers", "head_dim", "mlp_dim", "mlp_activations",
                 "logits_via_embedding", "relative_attention_num_buckets",
                 "relative_attention_max_distance", "layer_norm_epsilon")


# what a user may change between training and evaluation (dtype, dropout, remat, scanning,
# kernels) and the adapters themselves: left out of a decoder-only base's hash
_FREE_FIELDS = ("dtype", "dropout_rate", "remat_policy", "scan_layers", "attention_kernel",
                "lora")


def config_hash(config: ModelConfig) -> str:
    """A short hash of the base network's shapes and function (mT5: _SHAPE_FIELDS, as
    saved adapters have always recorded it; other families: every field not free)."""
    if isinstance(config, T5Config):
        fields = {k: getattr(config, k) for k in _SHAPE_FIELDS}
    else:
        fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in _FREE_FIELDS}
        fields["family"] = type(config).__name__
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=list).encode()
                          ).hexdigest()[:16]


def fingerprint(base: Params) -> str:
    """Sums of the layer-norm scales and relative-position tables (small, on every host,
    the same scanned or not): tells two checkpoints of one architecture apart."""
    total = squares = 0.0
    for path, leaf in traverse_util.flatten_dict(base).items():
        if path[-1] in ("scale", "rel_embedding"):
            x = np.asarray(leaf, np.float64)
            total += float(x.sum())
            squares += float((x * x).sum())
    return f"{total:.9e}/{squares:.9e}"


def base_record(path: str, config: ModelConfig, base: Params) -> dict[str, str]:
    return {"path": str(path), "config_hash": config_hash(config),
            "fingerprint": fingerprint(base)}


def check_base(recorded: dict[str, str] | None, actual: dict[str, str], adapters: str) -> None:
    """Adapters trained on one base must not be applied to another."""
    if not recorded:
        return
    if (recorded.get("config_hash") != actual["config_hash"]
            or recorded.get("fingerprint") != actual["fingerprint"]):
        what = ("a model of another shape" if recorded.get("config_hash")
                != actual["config_hash"] else "other weights")
        raise CheckpointError(
            f"the adapters in {adapters} were trained on the base {recorded.get('path')}, but "
            f"the base given is {actual['path']} ({what}: config hash "
            f"{actual['config_hash']} vs {recorded.get('config_hash')}, fingerprint "
            f"{actual['fingerprint']} vs {recorded.get('fingerprint')}). Use the base they "
            "were trained on (INITIAL_CHECKPOINT_PATH / the base checkpoint argument), or a "
            "fresh MODEL_DIR to train new adapters on this base")
    if recorded.get("path") != actual["path"]:
        logging.info("adapters trained on %s applied to the same weights at %s",
                     recorded.get("path"), actual["path"])


def abstract_adapters(config: ModelConfig) -> Params:
    _, adapters = lora.split(abstract_params(config))
    return adapters


def save(path: str | os.PathLike, config: ModelConfig, adapters: Params,
         record: dict[str, str] | None) -> None:
    """An adapter directory: config.json (the adapted model's config), adapters/ (Orbax,
    float32), base.json (the base they belong to)."""
    path = resolved_path(path)
    path.mkdir(parents=True, exist_ok=True)
    adapters = jax.tree.map(lambda x: np.asarray(x, np.float32), adapters)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path / "adapters", adapters, force=True)
        checkpointer.wait_until_finished()
    (path / "config.json").write_text(config.to_json())
    (path / "base.json").write_text(json.dumps(record or {}, indent=2))


def is_adapter_dir(path: str | os.PathLike) -> bool:
    p = resolved_path(path)
    return (p / "adapters").exists() and (p / "config.json").exists()


def load(path: str | os.PathLike, step: int | None = None
         ) -> tuple[ModelConfig, Params, dict[str, str] | None]:
    """(adapted model's config, float32 adapters, base record) from a LoRA run, a step
    folder of one, an adapter directory, or a PEFT directory (then with no base record:
    PEFT records only a hub name)."""
    p = resolved_path(path)
    if peft.is_peft_dir(p):
        raise CheckpointError(f"{path} is a Hugging Face PEFT adapter; it needs the base "
                              "model's config to be read: use peft.load(path, base_config)")
    if is_adapter_dir(p):
        config = config_from_json((p / "config.json").read_text())
        record = json.loads((p / "base.json").read_text()) if (p / "base.json").exists() else {}
        return config, restore_float32(p / "adapters", abstract_adapters(config), None,
                                       "the adapters"), record
    step_dir = training_step(path, step)
    if step_dir is None:
        raise CheckpointError(f"{path} holds no adapters: expected a LoRA run's MODEL_DIR (or "
                              "one of its checkpoints/<step> folders), an adapter directory "
                              "(config.json + adapters/) or a PEFT directory "
                              "(adapter_config.json + adapter_model.safetensors)")
    step_path = resolved_path(step_dir)
    config = config_from_json((step_path / "config" / "metadata").read_text())
    if config.lora is None:
        raise CheckpointError(f"{step_dir} is a full finetuning checkpoint, not a LoRA run: use "
                              "it as the model itself (no --adapter)")
    data = json.loads((step_path / "data" / "metadata").read_text())
    adapters = restore_float32(step_path / "state", abstract_adapters(config), "params",
                               "the adapters")
    return config, adapters, data.get("lora_base")


def apply(base_path: str, base_config: ModelConfig, base: Params, adapter_path: str,
          step: int | None = None) -> tuple[ModelConfig, Params]:
    """(plain config, merged float32 params): the base with the adapters of `adapter_path`
    folded into its kernels, after checking they were trained on this base."""
    if peft.is_peft_dir(resolved_path(adapter_path)):
        config, adapters = peft.load(adapter_path, base_config)
        record = None
    else:
        config, adapters, record = load(adapter_path, step)
    return base_config, merged(base_path, base_config, base, config, adapters, record,
                               adapter_path)


def merged(base_path: str, base_config: ModelConfig, base: Params, config: ModelConfig,
           adapters: Params, record: dict[str, str] | None, adapter_path: str) -> Params:
    """The base's params (float32) with `adapters` (of the adapted `config`, read from
    `adapter_path`, trained on the base `record` names) folded into its kernels, after
    checking they belong to this base; scanned or not as the base is."""
    if config_hash(config) != config_hash(base_config):
        raise CheckpointError(
            f"the adapters in {adapter_path} belong to a model of another shape than the base "
            f"{base_path}; use the base they were trained on")
    check_base(record, base_record(base_path, base_config, base), adapter_path)
    if base_config.scan_layers != config.scan_layers:
        adapters = (lora.scan_adapters(adapters, config) if base_config.scan_layers
                    else lora.unscan_adapters(adapters))
    return lora.merge(lora.join(base, adapters),
                      config.replace(scan_layers=base_config.scan_layers))
