"""The network's hyper-parameters, named as in T5X's `network.T5Config`."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import jax.numpy as jnp

from mtf.errors import SettingError
from mtf.model.features import ENCODER_DECODER, BatchSpec

ACTIVATIONS = ("gelu", "relu", "linear")
# What each layer keeps for the backward pass (the rest is recomputed): 'none' keeps all,
# 'full' nothing but its input, 'dots' every matmul output, 'dots_with_no_batch_dims'
# (alias 'minimal') the matmuls whose operands have no batch dimension, 'offload_dots' the
# same matmul outputs moved to host memory (TPU/GPU; jax.checkpoint_policies).
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims", "minimal", "offload_dots")
# How attention is computed in training and scoring: XLA ops (any platform), or the TPU
# flash kernel (mtf.model.flash: no [batch, heads, q, k] scores in HBM; TPU only).
ATTENTION_KERNELS = ("xla", "flash")
# Searched in each attention/MLP kernel's T5X name: query/key/value/out of every attention
# and wi_0/wi_1/wo of every MLP, in both stacks (PEFT's q,k,v,o,wi_0,wi_1,wo for mT5).
LORA_DEFAULT_TARGETS = r"(attention|mlp)/[^/]+/kernel$"
BASE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters beside chosen kernels: W x + (alpha / rank) B A dropout(x).

    targets: a regular expression searched in each attention/MLP kernel's T5X name
    ('encoder/layers_0/attention/query/kernel'); base_dtype: the frozen base is held (and
    kept) in this dtype during training.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = LORA_DEFAULT_TARGETS
    base_dtype: str = "float32"
    # ids [first, end) whose rows of every vocabulary matrix train in full beside the
    # adapters (PEFT's trainable_token_indices): the pieces `mtf.vocab extend` added
    trainable_tokens: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank <= 0:
            raise SettingError(f"LORA_RANK={self.rank!r} must be a positive integer (8 or 16 "
                               "are usual)")
        if not isinstance(self.alpha, int | float) or self.alpha <= 0:
            raise SettingError(f"LORA_ALPHA={self.alpha!r} must be a positive number (the "
                               "adapters are scaled by LORA_ALPHA / LORA_RANK)")
        if not 0.0 <= self.dropout < 1.0:
            raise SettingError(f"LORA_DROPOUT={self.dropout} must be in [0, 1)")
        try:
            re.compile(self.targets)
        except (re.error, TypeError) as e:
            raise SettingError(f"LORA_TARGETS={self.targets!r} is not a regular expression: "
                               f"{e}") from e
        if self.base_dtype not in BASE_DTYPES:
            raise SettingError(f"LORA_BASE_DTYPE={self.base_dtype!r}: use one of {BASE_DTYPES}")
        if self.trainable_tokens is not None:
            tokens = tuple(self.trainable_tokens)
            if (len(tokens) != 2 or not all(isinstance(t, int) for t in tokens)
                    or not 0 <= tokens[0] < tokens[1]):
                raise SettingError(f"LORA_TRAINABLE_TOKENS={self.trainable_tokens!r} must be "
                                   "(first, end): the ids first..end-1, e.g. the range "
                                   "`mtf.vocab extend` printed")
            object.__setattr__(self, "trainable_tokens", tokens)

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    def applies_to(self, name: str) -> bool:
        """Whether the kernel named `name` (T5X's name) gets an adapter."""
        return re.search(self.targets, name) is not None


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Shapes and switches of a T5.1.1 / mT5 encoder-decoder.

    Field names follow T5X so gin files and habits carry over; the extra fields
    (relative attention buckets, remat, scan) are the ones T5X hard-codes.
    """

    vocab_size: int
    emb_dim: int
    num_heads: int
    num_encoder_layers: int
    num_decoder_layers: int
    head_dim: int
    mlp_dim: int
    mlp_activations: tuple[str, ...] = ("gelu", "linear")
    dtype: str = "float32"  # activation dtype; parameters are always float32
    dropout_rate: float = 0.1
    logits_via_embedding: bool = False
    float32_attention_logits: bool = False
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    remat_policy: str = "none"  # one of REMAT_POLICIES
    scan_layers: bool = False
    attention_kernel: str = "xla"  # one of ATTENTION_KERNELS
    lora: LoraConfig | None = None  # low-rank adapters (frozen base); None: plain model

    def __post_init__(self) -> None:
        object.__setattr__(self, "mlp_activations", tuple(self.mlp_activations))
        if isinstance(self.lora, dict):  # from JSON
            object.__setattr__(self, "lora", LoraConfig(**self.lora))
        for name in ("vocab_size", "emb_dim", "num_heads", "num_encoder_layers",
                     "num_decoder_layers", "head_dim", "mlp_dim",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise SettingError(f"T5Config.{name} must be a positive integer, got {value!r}")
        bad = [a for a in self.mlp_activations if a not in ACTIVATIONS]
        if bad or not self.mlp_activations:
            raise SettingError(
                f"T5Config.mlp_activations={self.mlp_activations!r}: each must be one of "
                f"{ACTIVATIONS} (mT5 uses ('gelu', 'linear'))")
        if self.remat_policy not in REMAT_POLICIES:
            raise SettingError(
                f"T5Config.remat_policy={self.remat_policy!r}: use one of {REMAT_POLICIES}")
        if self.attention_kernel not in ATTENTION_KERNELS:
            raise SettingError(f"T5Config.attention_kernel={self.attention_kernel!r}: use one "
                               f"of {ATTENTION_KERNELS} ('flash' runs on TPU only)")
        try:
            jnp.dtype(self.dtype)
        except TypeError as e:
            raise SettingError(
                f"T5Config.dtype={self.dtype!r} is not a dtype; use 'float32' or 'bfloat16'"
            ) from e
        if not 0.0 <= self.dropout_rate < 1.0:
            raise SettingError(f"T5Config.dropout_rate={self.dropout_rate} must be in [0, 1)")

    @property
    def activation_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def uses_dropout(self) -> bool:
        """Whether training draws dropout masks (the model's or the adapters')."""
        return self.dropout_rate > 0 or (self.lora is not None and self.lora.dropout > 0)

    @property
    def without_dropout(self) -> T5Config:
        """The network evaluation runs (the validation loss, scoring)."""
        return self.replace(dropout_rate=0.0)

    @property
    def for_inference(self) -> T5Config:
        """The network scoring and decoding run: no dropout, no remat, and the XLA
        attention (the TPU flash kernel is a training-step choice; inference takes any
        length on any platform)."""
        return self.replace(dropout_rate=0.0, remat_policy="none", attention_kernel="xla")

    @property
    def batch_spec(self) -> BatchSpec:
        """The batch this family (encoder-decoder) trains on: its feature names."""
        return ENCODER_DECODER

    @property
    def base(self) -> T5Config:
        """The network without adapters (the frozen base of a LoRA model)."""
        return self.replace(lora=None)

    def replace(self, **changes: Any) -> T5Config:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> T5Config:
        fields = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise SettingError(f"unknown T5Config fields {unknown}; known: {sorted(known)}")
        return cls(**fields)
