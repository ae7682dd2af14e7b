"""Any checkpoint a user points evaluation or inference at: mtf, T5X or Hugging Face.

A training MODEL_DIR stands for its newest step. Without a model config the checkpoint's
own is used (mtf and HF store one; T5X's is read off the parameter shapes); with one (a
gin run) the checkpoint must fit it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
from flax import traverse_util

from mtf import checkpoint, storage
from mtf.convert import adapters, native
from mtf.convert.errors import CheckpointError, check_names_and_shapes
from mtf.convert.hf_models import load_hf_model as load_hf
from mtf.convert.t5x import infer_config, load_t5x, read_t5x_tree
from mtf.model import BloomConfig, LlamaConfig, ModelConfig, flat_shapes, scan_params


@dataclasses.dataclass
class LoadedCheckpoint:
    config: ModelConfig
    params: Any  # float32 numpy, the config's layout
    vocabulary: str | None  # the SentencePiece model stored with it, if any
    source: str  # the folder actually read (a MODEL_DIR's newest step)
    adapter_source: str | None = None  # the adapters merged into it (their step folder)


def load_checkpoint(path: str, config: ModelConfig | None = None,
                    setting: str = "CHECKPOINT_PATH", adapter: str | None = None
                    ) -> LoadedCheckpoint:
    """(config, params, vocabulary) of an mtf MODEL_DIR / step / parameter folder, a T5X
    checkpoint or an HF folder; `config` given: checked against it (a clear error names
    both shapes). `adapter`: LoRA adapters (a LoRA run, an adapter directory or a PEFT
    folder) trained on this checkpoint, merged into its kernels."""
    loaded = _load_model(path, config, setting)
    if not adapter:
        return loaded
    if not storage.exists(adapter):
        raise CheckpointError(f"adapter {adapter} does not exist")
    loaded.config, loaded.params = adapters.apply(loaded.source, loaded.config, loaded.params,
                                                  adapter)
    adapter_step = checkpoint.training_step(adapter)
    loaded.adapter_source = adapter_step or adapter
    if loaded.vocabulary is None and adapter_step:
        loaded.vocabulary = checkpoint.step_vocabulary(adapter_step)
    return loaded


def _load_model(path: str, config: ModelConfig | None, setting: str) -> LoadedCheckpoint:
    if not storage.exists(path):
        raise CheckpointError(f"{setting}={path} does not exist")
    step_dir = checkpoint.training_step(path)
    source = step_dir or path
    vocabulary = checkpoint.step_vocabulary(step_dir) if step_dir else None
    if config is not None:
        params = load_initial_params(source, config, setting)
        if vocabulary is None:
            vocabulary = stored_vocabulary(source)
        return LoadedCheckpoint(config, params, vocabulary, source)
    fmt = detect_format(source, setting)
    if fmt == "mtf":
        loaded, params = native.load_params(source)
    elif fmt == "hf":
        loaded, params = load_hf(source)
    else:
        loaded = infer_config(read_t5x_tree(source)["optimizer"]["target"])
        params = load_t5x(source, loaded)
    return LoadedCheckpoint(loaded, params, vocabulary or stored_vocabulary(source), source)


def stored_vocabulary(path: str) -> str | None:
    """The tokenizer beside the weights: spiece.model (mT5), tokenizer.model (LLaMA) or
    tokenizer.json (BLOOM, Llama 3) in an HF folder; vocabulary.model / .json in an mtf
    parameter folder."""
    if not storage.isdir(path):
        return None
    for name in ("spiece.model", "tokenizer.model", *native.VOCABULARY_FILES,
                 "tokenizer.json"):
        candidate = storage.join(path, name)
        if storage.exists(candidate):
            return candidate
    return None


def detect_format(path: str, setting: str = "INITIAL_CHECKPOINT_PATH") -> str:
    """'mtf' (config.json + params/, or a run's checkpoints/<step>), 't5x' (a `checkpoint`
    msgpack file or folder), 'hf' (config.json + *.safetensors / pytorch_model.bin), or an
    error naming what is there."""
    p = storage.path(path)
    if not p.exists():
        raise CheckpointError(f"{setting}={path} does not exist")
    if p.is_file() or (p / "checkpoint").exists():  # T5X: a msgpack file, or a dir holding one
        return "t5x"
    if (((p / "config.json").exists() and (p / "params").exists())
            or checkpoint.is_train_step(path)):
        return "mtf"
    names = [q.name for q in p.iterdir()] if p.is_dir() else []
    if (p / "config.json").exists() and any(n.endswith((".safetensors", ".bin")) or
                                            n.endswith(".index.json") for n in names):
        return "hf"
    raise CheckpointError(f"{setting}={path} is not an mtf, T5X or Hugging Face "
                          f"checkpoint (found {sorted(names)[:10]})")


def _shape_summary(c: ModelConfig) -> str:
    if isinstance(c, BloomConfig):
        return (f"BLOOM: vocab {c.vocab_size}, emb {c.emb_dim}, heads {c.num_heads}, "
                f"layers {c.num_layers}")
    if isinstance(c, LlamaConfig):
        return (f"LLaMA: vocab {c.vocab_size}, emb {c.emb_dim}, heads {c.num_heads} over "
                f"{c.num_kv_heads} kv x {c.head_dim}, mlp {c.mlp_dim}, layers {c.num_layers}")
    return (f"mT5: vocab {c.vocab_size}, emb {c.emb_dim}, heads {c.num_heads}x{c.head_dim}, "
            f"mlp {c.mlp_dim}, layers {c.num_encoder_layers}/{c.num_decoder_layers}")


def load_initial_params(path: str, config: ModelConfig,
                        setting: str = "INITIAL_CHECKPOINT_PATH") -> Any:
    """Params only (float32 numpy) from an mtf, T5X or HF checkpoint, checked against config."""
    if storage.exists(path):
        path = checkpoint.training_step(path) or path  # a run's MODEL_DIR: its newest step
    fmt = detect_format(path, setting)
    logging.info("initial checkpoint %s (%s format)", path, fmt)
    if fmt == "t5x":
        return load_t5x(path, config)
    loaded_config, params = native.load_params(path) if fmt == "mtf" else load_hf(path)
    if type(loaded_config) is not type(config):
        raise CheckpointError(
            f"{setting}={path} is a {_shape_summary(loaded_config)} model, but the gin "
            f"config asks for {_shape_summary(config)}: include the gin/models/ file of the "
            "checkpoint's family")
    if loaded_config.vocab_size != config.vocab_size:  # e.g. a vocabulary `mtf.vocab` extended
        raise CheckpointError(
            f"{setting}={path} has {loaded_config.vocab_size} vocabulary rows but the gin "
            f"config's model has {config.vocab_size}: bind NUM_EMBEDDINGS="
            f"{loaded_config.vocab_size}, and read the tasks with the checkpoint's own "
            "vocabulary (MTF_VOCABULARY=<its vocabulary.model>)")
    check_names_and_shapes(
        {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(params, sep="/").items()},
        flat_shapes(config.replace(scan_layers=loaded_config.scan_layers)),
        f"{setting}={path} (a model of {_shape_summary(loaded_config)}; the gin "
        f"config asks for {_shape_summary(config)}: include the matching gin/models/ file)")
    if config.scan_layers and not loaded_config.scan_layers:
        params = scan_params(params, config.replace(scan_layers=False))
    return params
