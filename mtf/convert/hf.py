"""Hugging Face (MT5/T5ForConditionalGeneration) <-> mtf parameters, one tensor at a time.

mT5-XXL is 13B parameters, so nothing here holds two copies of the model: tensors are
read lazily (safetensors, or PyTorch's mmap'd `weights_only` load), converted and dropped,
and written back in bounded shards.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util

from mtf import storage
from mtf.convert.errors import CheckpointError, check_names_and_shapes
from mtf.model import T5Config, flat_shapes, unscan_params
from mtf.vocabulary import pieces

Params = dict[str, Any]

# HF's feed_forward_proj <-> T5X's mlp_activations. HF's plain 'gelu' is the exact (erf)
# GeLU, which T5 never used; its 'gelu_new' is the tanh approximation T5X calls 'gelu'.
_FF_TO_ACTIVATIONS = {
    "gated-gelu": ("gelu", "linear"),
    "gated-gelu_new": ("gelu", "linear"),
    "gated-relu": ("relu", "linear"),
    "gelu_new": ("gelu",),
    "relu": ("relu",),
}
_ACTIVATIONS_TO_FF = {
    ("gelu", "linear"): "gated-gelu",
    ("relu", "linear"): "gated-relu",
    ("gelu",): "gelu_new",
    ("relu",): "relu",
}
# Keys HF may store that alias `shared.weight` or that it ignores itself.
_IGNORED_HF_KEYS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight",
                    "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")


def name_map(config: T5Config) -> list[tuple[str, str, bool]]:
    """(mtf path, HF name, transposed?) for every parameter of an unscanned tree."""
    names = [("token_embedder/embedding", "shared.weight", False)]
    for stack, num_layers in (("encoder", config.num_encoder_layers),
                              ("decoder", config.num_decoder_layers)):
        names.append((f"{stack}/relpos_bias/rel_embedding",
                      f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                      True))
        for i in range(num_layers):
            ours, theirs = f"{stack}/layers_{i}", f"{stack}.block.{i}.layer"
            if stack == "encoder":
                blocks = [("attention", "pre_attention_layer_norm", f"{theirs}.0",
                           "SelfAttention")]
            else:
                blocks = [("self_attention", "pre_self_attention_layer_norm", f"{theirs}.0",
                           "SelfAttention"),
                          ("encoder_decoder_attention", "pre_cross_attention_layer_norm",
                           f"{theirs}.1", "EncDecAttention")]
            for attention, norm, hf_block, hf_attention in blocks:
                for proj, hf_proj in zip(("query", "key", "value", "out"), "qkvo", strict=True):
                    names.append((f"{ours}/{attention}/{proj}/kernel",
                                  f"{hf_block}.{hf_attention}.{hf_proj}.weight", True))
                names.append((f"{ours}/{norm}/scale", f"{hf_block}.layer_norm.weight", False))
            mlp_block = f"{theirs}.{len(blocks)}"
            wis = ["wi"] if len(config.mlp_activations) == 1 else [
                f"wi_{j}" for j in range(len(config.mlp_activations))]
            for wi in wis + ["wo"]:
                names.append((f"{ours}/mlp/{wi}/kernel",
                              f"{mlp_block}.DenseReluDense.{wi}.weight", True))
            names.append((f"{ours}/pre_mlp_layer_norm/scale", f"{mlp_block}.layer_norm.weight",
                          False))
        final = "encoder_norm" if stack == "encoder" else "decoder_norm"
        names.append((f"{stack}/{final}/scale", f"{stack}.final_layer_norm.weight", False))
    if not config.logits_via_embedding:
        names.append(("decoder/logits_dense/kernel", "lm_head.weight", True))
    return names


def config_from_hf(hf_config: dict[str, Any]) -> T5Config:
    """T5Config from a Hugging Face MT5/T5 `config.json` dict."""
    model_type = hf_config.get("model_type")
    if model_type not in ("mt5", "t5"):
        raise CheckpointError(f"config.json has model_type={model_type!r}; load_hf reads "
                              "'mt5' or 't5' (MT5/T5ForConditionalGeneration) models")
    ff = hf_config.get("feed_forward_proj", "relu")
    if ff not in _FF_TO_ACTIVATIONS:
        raise CheckpointError(f"config.json has feed_forward_proj={ff!r}; supported: "
                              f"{sorted(_FF_TO_ACTIVATIONS)}")
    # HF ties lm_head to the embedding unless both are stored; T5 (not mT5) then also
    # rescales by d_model**-0.5, which is T5X's logits_via_embedding.
    tied_and_scaled = model_type == "t5" and hf_config.get("tie_word_embeddings") is not False
    num_layers = hf_config["num_layers"]
    return T5Config(
        vocab_size=hf_config["vocab_size"], emb_dim=hf_config["d_model"],
        num_heads=hf_config["num_heads"], num_encoder_layers=num_layers,
        num_decoder_layers=hf_config.get("num_decoder_layers") or num_layers,
        head_dim=hf_config["d_kv"], mlp_dim=hf_config["d_ff"],
        mlp_activations=_FF_TO_ACTIVATIONS[ff],
        dropout_rate=hf_config.get("dropout_rate", 0.1),
        logits_via_embedding=tied_and_scaled,
        relative_attention_num_buckets=hf_config.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf_config.get("relative_attention_max_distance", 128),
        layer_norm_epsilon=hf_config.get("layer_norm_epsilon", 1e-6),
    )


def config_to_hf(config: T5Config) -> dict[str, Any]:
    """A `config.json` that `transformers` loads as MT5 (or T5 v1.0 when logits are tied)."""
    if config.mlp_activations not in _ACTIVATIONS_TO_FF:
        raise CheckpointError(f"mlp_activations={config.mlp_activations} has no Hugging Face "
                              f"equivalent; supported: {sorted(_ACTIVATIONS_TO_FF)}")
    tied = config.logits_via_embedding
    return {
        "architectures": ["T5ForConditionalGeneration" if tied else
                          "MT5ForConditionalGeneration"],
        "model_type": "t5" if tied else "mt5",
        "vocab_size": config.vocab_size, "d_model": config.emb_dim, "d_kv": config.head_dim,
        "d_ff": config.mlp_dim, "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers, "num_heads": config.num_heads,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout_rate, "layer_norm_epsilon": config.layer_norm_epsilon,
        "feed_forward_proj": _ACTIVATIONS_TO_FF[config.mlp_activations],
        "tie_word_embeddings": tied, "is_encoder_decoder": True, "pad_token_id": 0,
        "eos_token_id": 1, "decoder_start_token_id": 0, "dtype": "float32",
    }


# ---------------------------------------------------------------------------- reading


class TensorSource:
    """Names and shapes of every tensor in a HF directory, each read only when asked."""

    def __init__(self, path: Path):
        self.path = path
        self.files = _weight_files(path)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._readers: dict[str, Callable[[], np.ndarray]] = {}
        self._torch_dicts: list[dict] = []
        for file in self.files:
            if file.suffix == ".safetensors":
                self._index_safetensors(file)
            else:
                self._index_torch(file)

    def _index_safetensors(self, file: Path) -> None:
        from safetensors import safe_open

        try:
            handle = safe_open(str(file), framework="numpy")
            for name in handle.keys():
                self.shapes[name] = tuple(handle.get_slice(name).get_shape())
                self._readers[name] = lambda h=handle, n=name, f=file: _read_safetensor(h, n, f)
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise CheckpointError(f"{file}: not a readable safetensors file ({e}); it may be "
                                  "truncated or corrupt - download it again") from e

    def _index_torch(self, file: Path) -> None:
        try:
            import torch
        except ImportError as e:
            raise CheckpointError(f"{file} is a PyTorch checkpoint and reading it needs torch; "
                                  "pip install torch, or convert it to safetensors") from e
        try:  # weights_only: never run code from a pickle; mmap: no copy in memory
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:
            raise CheckpointError(
                f"{file}: cannot be loaded as a PyTorch state dict with weights_only=True "
                f"({type(e).__name__}: {e}); it may be truncated, corrupt or not a state dict"
            ) from e
        if not isinstance(state, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
            raise CheckpointError(f"{file}: holds a {type(state).__name__}, not a state dict "
                                  "(a mapping of parameter names to tensors)")
        self._torch_dicts.append(state)
        for name, tensor in state.items():
            self.shapes[name] = tuple(tensor.shape)
            self._readers[name] = lambda t=tensor: t.detach().float().numpy()

    def read(self, name: str) -> np.ndarray:
        return self._readers[name]()


class LazyTensors(Mapping):
    """A HF folder's tensors by name, each read when asked (one at a time); `prefix` is
    put before the stored names (hub BLOOM checkpoints saved from the base model lack
    `transformer.`)."""

    def __init__(self, source: TensorSource, prefix: str = "") -> None:
        self.source, self.prefix = source, prefix
        self.shapes = {prefix + k: v for k, v in source.shapes.items()}

    def __getitem__(self, name: str) -> np.ndarray:
        return self.source.read(name[len(self.prefix):])

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def _read_safetensor(handle, name: str, file: Path) -> np.ndarray:
    try:
        return handle.get_tensor(name)
    except Exception as e:
        raise CheckpointError(f"{file}: cannot read tensor {name} ({e}); the file may be "
                              "truncated or corrupt") from e


def _weight_files(path: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = path / index_name
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = [path / f for f in sorted(set(weight_map.values()))]
            absent = [str(f) for f in files if not f.exists()]
            if absent:
                raise CheckpointError(f"{index} names shard files that are missing: {absent}")
            return files
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (path / single).exists():
            return [path / single]
    raise CheckpointError(f"no weights in {path}: expected model.safetensors, "
                          "model.safetensors.index.json, pytorch_model.bin or its index")


def _substitute(table: list[tuple[str, str, bool]], old: str, new: str
                ) -> list[tuple[str, str, bool]]:
    return [(p, new if hf == old else hf, t) for p, hf, t in table]


def read_config(path: Path) -> dict[str, Any]:
    """A HF model directory's config.json, or an error saying what the directory needs."""
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{config_file} not found: a Hugging Face model directory "
                              "(config.json + weights, e.g. from save_pretrained) is needed")
    return json.loads(config_file.read_text())


def load_hf(path: str | os.PathLike) -> tuple[T5Config, Params]:
    """Reads a local HF MT5/T5 (gated-GeLU) directory into (T5Config, float32 params)."""
    path = Path(path)
    config = config_from_hf(read_config(path))
    source = TensorSource(path)
    table = name_map(config)
    if (not config.logits_via_embedding and "lm_head.weight" not in source.shapes
            and "shared.weight" in source.shapes):
        table = _substitute(table, "lm_head.weight", "shared.weight")  # HF v5 tied save
    if "shared.weight" not in source.shapes and "encoder.embed_tokens.weight" in source.shapes:
        table = _substitute(table, "shared.weight", "encoder.embed_tokens.weight")
    names = {hf for _, hf, _ in table}
    expected = {}
    shapes = flat_shapes(config.replace(scan_layers=False))
    for mtf_path, hf_name, transposed in table:
        shape = shapes[mtf_path]
        expected[hf_name] = shape[::-1] if transposed else shape
    check_names_and_shapes(source.shapes, expected, str(path),
                           ignored=[k for k in _IGNORED_HF_KEYS if k not in names])
    flat = {}
    for mtf_path, hf_name, transposed in table:
        array = np.asarray(source.read(hf_name), dtype=np.float32)
        flat[tuple(mtf_path.split("/"))] = array.T if transposed else array
    return config, traverse_util.unflatten_dict(flat)


# ---------------------------------------------------------------------------- writing


def _hf_tensors(config: T5Config, params: Params) -> Iterator[tuple[str, np.ndarray]]:
    if config.scan_layers:
        params = unscan_params(params, config.replace(scan_layers=False))
    flat = traverse_util.flatten_dict(params, sep="/")
    shapes = flat_shapes(config.replace(scan_layers=False))
    check_names_and_shapes({k: tuple(v.shape) for k, v in flat.items()}, shapes,
                           "the parameters given to save_hf")
    for mtf_path, hf_name, transposed in name_map(config):
        array = np.asarray(flat[mtf_path], dtype=np.float32)
        yield hf_name, np.ascontiguousarray(array.T if transposed else array)


def save_hf(config: T5Config, params: Params, path: str | os.PathLike,
            max_shard_bytes: int = 2 << 30, vocabulary: str | None = None) -> None:
    """Writes a directory `transformers` loads with `from_pretrained` (same logits), and
    with `vocabulary` (a SentencePiece model, local or gs://) the tokenizer files that
    `AutoTokenizer.from_pretrained` reads."""
    path = Path(path)
    write_safetensors(path, _hf_tensors(config, params), max_shard_bytes)
    (path / "config.json").write_text(json.dumps(config_to_hf(config), indent=2))
    if vocabulary:
        _save_tokenizer(path, vocabulary)
    usual_modes(path)


def write_safetensors(path: Path, tensors: Iterator[tuple[str, np.ndarray]],
                      max_shard_bytes: int = 2 << 30) -> None:
    """HF's weight files: one model.safetensors, or shards of at most `max_shard_bytes`
    with model.safetensors.index.json (each written under a temporary name first)."""
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    current: dict[str, np.ndarray] = {}
    current_bytes = total = count = 0
    weight_map: dict[str, int] = {}

    def flush() -> None:  # writes the pending tensors as shard number `count`
        nonlocal current, current_bytes, count
        count += 1
        save_file(current, str(path / f".shard-{count}.tmp"), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(current, count))
        current, current_bytes = {}, 0

    for name, array in tensors:
        if current and current_bytes + array.nbytes > max_shard_bytes:
            flush()
        current[name] = array
        current_bytes += array.nbytes
        total += array.nbytes
    flush()

    if count == 1:
        os.replace(path / ".shard-1.tmp", path / "model.safetensors")
    else:
        file_names = {i: f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)}
        for i, name in file_names.items():
            os.replace(path / f".shard-{i}.tmp", path / name)
        index = {"metadata": {"total_size": total},
                 "weight_map": {k: file_names[v] for k, v in sorted(weight_map.items())}}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def usual_modes(path: Path) -> None:
    """safetensors writes 0600; give the folder's files the modes the umask allows."""
    umask = os.umask(0)
    os.umask(umask)
    for file in path.iterdir():
        if file.is_file():
            file.chmod(0o666 & ~umask)


def _save_tokenizer(path: Path, vocabulary: str) -> None:
    """mT5's tokenizer as transformers saves it: spiece.model + T5Tokenizer config (no
    sentinels added by transformers to a model that holds them: `mtf.vocab extend`'s)."""
    model = storage.read_bytes(vocabulary)
    (path / "spiece.model").write_bytes(model)
    special = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer",
         "extra_ids": 0 if pieces.holds_sentinels(model) else 100, "legacy": True,
         "model_max_length": 1024, **special}, indent=2))
