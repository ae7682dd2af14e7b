"""Any checkpoint a user points evaluation or inference at: mtf, T5X or Hugging Face.

A training MODEL_DIR stands for its newest step. Without a model config the checkpoint's
own is used (mtf and HF store one; T5X's is read off the parameter shapes); with one (a
gin run) the checkpoint must fit it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mtf import storage
from mtf.convert import native
from mtf.convert.errors import CheckpointError
from mtf.model import T5Config


@dataclasses.dataclass
class LoadedCheckpoint:
    config: T5Config
    params: Any  # float32 numpy, the config's layout
    vocabulary: str | None  # the SentencePiece model stored with it, if any
    source: str  # the folder actually read (a MODEL_DIR's newest step)
    adapter_source: str | None = None  # the adapters merged into it (their step folder)


def load_checkpoint(path: str, config: T5Config | None = None,
                    setting: str = "CHECKPOINT_PATH", adapter: str | None = None
                    ) -> LoadedCheckpoint:
    """(config, params, vocabulary) of an mtf MODEL_DIR / step / parameter folder, a T5X
    checkpoint or an HF folder; `config` given: checked against it (a clear error names
    both shapes). `adapter`: LoRA adapters (a LoRA run, an adapter directory or a PEFT
    folder) trained on this checkpoint, merged into its kernels."""
    loaded = _load_model(path, config, setting)
    if not adapter:
        return loaded
    from mtf import adapters

    if not storage.exists(adapter):
        raise CheckpointError(f"adapter {adapter} does not exist")
    loaded.config, loaded.params = adapters.apply(loaded.source, loaded.config, loaded.params,
                                                  adapter)
    adapter_step = native.training_step(adapter)
    loaded.adapter_source = adapter_step or adapter
    if loaded.vocabulary is None and adapter_step:
        loaded.vocabulary = native.step_vocabulary(adapter_step)
    return loaded


def _load_model(path: str, config: T5Config | None, setting: str) -> LoadedCheckpoint:
    from mtf import checkpoint
    from mtf.convert import load_hf, load_t5x

    if not storage.exists(path):
        raise CheckpointError(f"{setting}={path} does not exist")
    step_dir = native.training_step(path)
    source = step_dir or path
    vocabulary = native.step_vocabulary(step_dir) if step_dir else None
    if config is not None:
        params = checkpoint.load_initial_params(source, config, setting)
        if vocabulary is None:
            vocabulary = _stored_vocabulary(source)
        return LoadedCheckpoint(config, params, vocabulary, source)
    fmt = checkpoint.detect_format(source, setting)
    if fmt == "mtf":
        loaded, params = native.load_params(source)
    elif fmt == "hf":
        loaded, params = load_hf(source)
    else:
        from mtf.convert.t5x import infer_config, read_t5x_tree

        loaded = infer_config(read_t5x_tree(source)["optimizer"]["target"])
        params = load_t5x(source, loaded)
    return LoadedCheckpoint(loaded, params, vocabulary or _stored_vocabulary(source), source)


def _stored_vocabulary(path: str) -> str | None:
    """spiece.model beside HF weights (written by `mtf.convert --to hf`)."""
    candidate = storage.join(path, "spiece.model")
    return candidate if storage.isdir(path) and storage.exists(candidate) else None
