"""Hugging Face PEFT LoRA adapters of MT5ForConditionalGeneration, LlamaForCausalLM and
BloomForCausalLM <-> mtf adapters.

PEFT's layout: `adapter_config.json` (peft_type LORA, r, lora_alpha, target_modules, ...)
and `adapter_model.safetensors` with `base_model.model.<HF module>.lora_A.weight`
[r, in] and `lora_B.weight` [out, r]; mtf's `lora_a` [r, in] is lora_A as it is and
`lora_b` [r, out] the transpose of lora_B, beside the kernel that `hf.name_map` (mT5) or
`hf_llama.hf_names` (LLaMA) pairs with that module. Both scale by lora_alpha / r, so the
same numbers give the same model.

BLOOM: PEFT adapts the fused query_key_value as one module, mtf its query, key and value
apart. Both ways are exact: PEFT's rank-r adapter (A [r, emb], B [3 emb, r]) is three of
mtf's sharing that A, with B's rows for each slot; mtf's three rank-r adapters are one of
rank 3r (their A's stacked, B block-diagonal per slot) written with PEFT's `rank_pattern` /
`alpha_pattern` (3r, 3 alpha: the same alpha / r). Per-module ranks read back by padding
every adapter with zeros to the largest rank, which changes nothing, when every module has
the same alpha / r (mtf's LoRA has one scale).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util

from mtf.convert import hf_bloom
from mtf.convert.errors import CheckpointError
from mtf.convert.hf import name_map
from mtf.convert.hf_llama import hf_names
from mtf.model import BloomConfig, LlamaConfig, LoraConfig, ModelConfig, family_of, lora

Params = dict[str, Any]
PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_LAYER = re.compile(r"^(encoder|decoder)/layers_(\d+)/(.*)$")
# the PEFT task type of each family's HF class
_TASK_TYPES = {"encoder-decoder": "SEQ_2_SEQ_LM", "decoder-only": "CAUSAL_LM"}


def is_peft_dir(path: str | os.PathLike) -> bool:
    return (Path(os.fspath(path)) / CONFIG_FILE).exists()


def _task_type(config: ModelConfig) -> str:
    concatenated = family_of(config).batch_spec.concatenated
    return _TASK_TYPES["decoder-only" if concatenated else "encoder-decoder"]


def _modules(config: ModelConfig) -> dict[str, tuple[str, int | None]]:
    """mtf kernel path (unscanned) -> (HF module name, slot in a fused module or None), for
    the kernels LoRA can target."""
    base = config.base.replace(scan_layers=False)
    if isinstance(base, BloomConfig):
        return hf_bloom.lora_modules(base)
    candidates = lora.candidates(base)
    names = hf_names(base) if isinstance(base, LlamaConfig) else name_map(config.base)
    return {ours: (theirs[:-len(".weight")], None) for ours, theirs, _ in names
            if ours in candidates}


def _by_module(config: ModelConfig) -> dict[str, dict[int | None, str]]:
    out: dict[str, dict[int | None, str]] = {}
    for kernel, (module, slot) in _modules(config).items():
        out.setdefault(module, {})[slot] = kernel
    return out


def save(path: str | os.PathLike, config: ModelConfig, adapters: Params,
         base_name: str | None = None) -> None:
    """Writes `adapters` (of the adapted `config`) as a PEFT directory that
    `peft.PeftModel.from_pretrained` loads on the HF model (MT5ForConditionalGeneration,
    LlamaForCausalLM, BloomForCausalLM)."""
    from safetensors.numpy import save_file

    if config.lora is None:
        raise CheckpointError("the checkpoint has no LoRA adapters to export (its config has "
                              "no lora): export the model itself with --to hf")
    if config.lora.trainable_tokens is not None:
        raise CheckpointError(
            f"the adapters train token rows (LORA_TRAINABLE_TOKENS="
            f"{config.lora.trainable_tokens}), which mtf does not write in PEFT's format "
            "yet: export the merged model instead (--to hf)")
    if config.scan_layers:
        adapters = lora.unscan_adapters(adapters)
    flat = {k: np.asarray(v, np.float32)
            for k, v in traverse_util.flatten_dict(adapters, sep="/").items()}
    lc = config.lora
    shapes = lora.candidates(config.base.replace(scan_layers=False))
    tensors, targets, ranks, alphas = {}, [], {}, {}

    def pair(kernel: str) -> tuple[np.ndarray, np.ndarray] | None:
        where = kernel[:-len("/kernel")]
        if f"{where}/lora_a" not in flat:
            return None
        return flat[f"{where}/lora_a"], flat[f"{where}/lora_b"]

    for module, slots in _by_module(config).items():
        if None in slots:
            found = pair(slots[None])
            if found is None:
                continue
            a, b = found[0], found[1].T
        else:  # BLOOM's fused query_key_value: one adapter of rank 3r
            parts = [pair(slots[slot]) for slot in sorted(slots)]
            if all(p is None for p in parts):
                continue
            fan_in, fan_out = shapes[slots[0]]
            parts = [p or (np.zeros((lc.rank, fan_in), np.float32),
                           np.zeros((lc.rank, fan_out), np.float32)) for p in parts]
            a = np.concatenate([p[0] for p in parts])
            b = hf_bloom.fuse_lora_b([p[1] for p in parts], config.base)
            short = module.rsplit(".", 1)[-1]
            ranks[short], alphas[short] = len(parts) * lc.rank, len(parts) * lc.alpha
        targets.append(module)
        tensors[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a)
        tensors[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b)
    path = Path(os.fspath(path))
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    peft_config = {
        "peft_type": "LORA", "task_type": _task_type(config), "r": lc.rank,
        "lora_alpha": lc.alpha, "lora_dropout": lc.dropout, "target_modules": sorted(targets),
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
        "rank_pattern": ranks, "alpha_pattern": alphas, "base_model_name_or_path": base_name,
    }
    (path / CONFIG_FILE).write_text(json.dumps(peft_config, indent=2))


def _pattern_value(patterns: dict[str, Any], module: str, default: float) -> float:
    """PEFT's per-module rank / alpha: the pattern key that matches the module's name."""
    for key, value in (patterns or {}).items():
        if re.fullmatch(rf"(.*\.)?(?:{key})", module):
            return float(value)
    return default


def _targets_pattern(kernels: list[str], config: ModelConfig) -> str:
    """A LORA_TARGETS regular expression selecting exactly `kernels` (unscanned names); a
    kernel taken in every layer of its stack is written once for all (so it also selects it
    in a scanned tree)."""
    layers = family_of(config).layer_stacks
    by_rest: dict[tuple[str, str], set[int]] = {}
    for name in kernels:
        stack, index, rest = _LAYER.match(name).groups()
        by_rest.setdefault((stack, rest), set()).add(int(index))
    parts = []
    for (stack, rest), indices in sorted(by_rest.items()):
        if len(indices) == layers[stack]:
            parts.append(f"{stack}/layers(_\\d+)?/{re.escape(rest)}")
        else:
            numbers = "|".join(str(i) for i in sorted(indices))
            parts.append(f"{stack}/layers_({numbers})/{re.escape(rest)}")
    return "^(" + "|".join(parts) + ")$"


def load(path: str | os.PathLike, base_config: ModelConfig
         ) -> tuple[ModelConfig, Params]:
    """(the adapted config: `base_config` with PEFT's rank, alpha, dropout and targets,
    unscanned; float32 adapters) of a PEFT LoRA directory for an mT5/mT0, LLaMA or BLOOM
    model."""
    from safetensors import safe_open

    path = Path(os.fspath(path))
    config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_file.exists() or not weights_file.exists():
        raise CheckpointError(f"{path} is not a PEFT adapter directory: expected {CONFIG_FILE} "
                              f"and {WEIGHTS_FILE} (written by PeftModel.save_pretrained)")
    settings = json.loads(config_file.read_text())
    _check_supported(settings, config_file, _task_type(base_config))
    base_config = base_config.replace(lora=None, scan_layers=False)
    by_module = _by_module(base_config)
    example = next(iter(by_module))
    shapes = lora.candidates(base_config)
    found: dict[str, dict[str, np.ndarray]] = {}
    with safe_open(str(weights_file), framework="numpy") as handle:
        for key in handle.keys():
            match = re.fullmatch(r"(?:base_model\.model\.)?(.+)\.lora_([AB])(?:\.default)?"
                                 r"\.weight", key)
            module = match and match.group(1)
            if module not in by_module:
                raise CheckpointError(
                    f"{weights_file}: tensor {key} is not a LoRA adapter of an attention or "
                    f"MLP layer of this base model (expected names like {PREFIX}{example}"
                    f".lora_A.weight). The adapter was made for "
                    f"{settings.get('base_model_name_or_path') or 'another model'}, not a "
                    "model of this family and shape")
            found.setdefault(module, {})[match.group(2)] = handle.get_tensor(key)
    if not found:
        raise CheckpointError(f"{weights_file} holds no LoRA tensors")
    adapters, scales = {}, {}  # kernel -> (lora_a [r, in], lora_b [r, out]); module -> scale
    for module, pair in found.items():
        if set(pair) != {"A", "B"}:
            raise CheckpointError(f"{weights_file}: {module} has lora_{''.join(pair)} only")
        rank = int(_pattern_value(settings.get("rank_pattern"), module, settings["r"]))
        alpha = _pattern_value(settings.get("alpha_pattern"), module,
                               settings.get("lora_alpha", 8))
        scales[module] = alpha / (math.sqrt(rank) if settings.get("use_rslora") else rank)
        slots = by_module[module]
        fan_in = shapes[next(iter(slots.values()))][0]  # fused slots share their input
        fan_out = sum(shapes[kernel][1] for kernel in slots.values())
        if pair["A"].shape != (rank, fan_in) or pair["B"].shape != (fan_out, rank):
            raise CheckpointError(
                f"{weights_file}: {module} has lora_A {pair['A'].shape} and lora_B "
                f"{pair['B'].shape}; a rank-{rank} adapter of this base's {module} "
                f"({fan_in} in, {fan_out} out) needs {(rank, fan_in)} and "
                f"{(fan_out, rank)}: the adapter is for a model of another size")
        a = np.asarray(pair["A"], np.float32)
        if None in slots:
            adapters[slots[None]] = (a, np.asarray(pair["B"], np.float32).T)
        else:  # BLOOM's fused query_key_value: query, key and value share A
            for slot, b in enumerate(hf_bloom.split_lora_b(np.asarray(pair["B"], np.float32),
                                                           base_config)):
                adapters[slots[slot]] = (a, b)
    scale = next(iter(scales.values()))
    if any(not math.isclose(s, scale, rel_tol=1e-6) for s in scales.values()):
        raise CheckpointError(
            f"{config_file}: modules scale their updates differently (lora_alpha / r: "
            f"{sorted(set(round(s, 6) for s in scales.values()))}); mtf's LoRA has one "
            "scale for every module")
    rank = max(a.shape[0] for a, _ in adapters.values())
    flat = {}
    for kernel, (a, b) in adapters.items():
        where = tuple(kernel.split("/")[:-1])
        pad = ((0, rank - a.shape[0]), (0, 0))  # zero rows: the same update
        flat[where + ("lora_a",)] = np.pad(a, pad)
        flat[where + ("lora_b",)] = np.pad(b, pad)
    lora_config = LoraConfig(rank=rank, alpha=scale * rank,
                             dropout=float(settings.get("lora_dropout") or 0.0),
                             targets=_targets_pattern(list(adapters), base_config))
    return base_config.replace(lora=lora_config), traverse_util.unflatten_dict(flat)


def _check_supported(settings: dict[str, Any], where: Path, task_type: str) -> None:
    kind = settings.get("peft_type")
    if kind != "LORA":
        raise CheckpointError(f"{where}: peft_type {kind!r}; mtf reads LoRA adapters only")
    unsupported = {
        "use_dora": "DoRA's magnitude vectors", "modules_to_save": "fully trained extra modules",
        "fan_in_fan_out": "Conv1D (GPT-2 style) layers",
        "layers_to_transform": "a subset of layers by index",
    }
    for field, what in unsupported.items():
        if settings.get(field):
            raise CheckpointError(f"{where}: {field}={settings[field]!r} "
                                  f"({what}) is not supported; mtf reads "
                                  "plain LoRA adapters of attention and MLP layers")
    if settings.get("bias", "none") != "none":
        raise CheckpointError(f"{where}: bias={settings['bias']!r}: mtf's LoRA trains no "
                              "biases")
    task = settings.get("task_type")
    if task not in (None, task_type):
        raise CheckpointError(f"{where}: task_type {task!r}; an adapter of this base model "
                              f"is {task_type}")

