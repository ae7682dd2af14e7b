"""What the decoder-only model configs (`LlamaConfig`, `BloomConfig`) share: the calls the
rest of mtf makes on any model config, and their JSON with a "family" key."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax.numpy as jnp

from mtf.errors import SettingError
from mtf.model.features import DECODER_ONLY, BatchSpec


class DecoderConfigMethods:
    """Mixed into a frozen dataclass with `dtype`, `lora`, `remat_policy` fields and a
    FAMILY class constant. Neither network has dropout of its own; LoRA's acts only when
    the train step draws masks."""

    FAMILY = ""

    @property
    def activation_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def base(self) -> Any:
        """The network without adapters (the frozen base of a LoRA model)."""
        return self.replace(lora=None)

    @property
    def uses_dropout(self) -> bool:
        """Whether training draws dropout masks (the adapters' only)."""
        return self.lora is not None and self.lora.dropout > 0

    @property
    def without_dropout(self) -> Any:
        return self

    @property
    def for_inference(self) -> Any:
        """The network scoring and decoding run: no remat."""
        return self.replace(remat_policy="none")

    @property
    def batch_spec(self) -> BatchSpec:
        return DECODER_ONLY

    def replace(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps({"family": self.FAMILY, **dataclasses.asdict(self)}, indent=2,
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Any:
        fields = {k: v for k, v in json.loads(text).items() if k != "family"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise SettingError(f"unknown {cls.__name__} fields {unknown}; known: "
                               f"{sorted(known)}")
        return cls(**fields)
