"""The LLaMA architecture (Llama 2 and 3 shapes) as a decoder-only Flax network.

RMSNorm before attention and MLP, rotary position embeddings on queries and keys (HF's
half-split layout, with Llama 3's frequency scaling as an option), grouped-query attention
(any number of key/value heads dividing the query heads), a SwiGLU MLP, and a tied or
separate output embedding. Parameters carry T5X-style logical axis names, so the mesh rule
table shards them as it shards mT5; packing is by segment ids with positions reset per
example. Written here because no maintained Flax LLaMA takes mtf's logical axes, scan and
LoRA layers (Levanter's is Equinox/Haliax, MaxText's is not a library).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtf.errors import SettingError
from mtf.model.config import REMAT_POLICIES, LoraConfig
from mtf.model.decoder import DecoderParts, DecoderStack, cached, positions_and_bias
from mtf.model.decoder_config import DecoderConfigMethods
from mtf.model.layers import Dense, Embed, RMSNorm, constrain, logical_param

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3's rotary frequency scaling (HF's rope_type 'llama3')."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class LlamaConfig(DecoderConfigMethods):
    """Shapes and switches of a LLaMA decoder, named after HF's `LlamaConfig` where it has
    the field (emb_dim = hidden_size, mlp_dim = intermediate_size)."""

    vocab_size: int
    emb_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    num_layers: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    tie_word_embeddings: bool = False
    # HF's config.json ids: the sequence starts with BOS (None: the vocabulary has none and
    # the first prompt token starts it) and the response ends with EOS
    bos_token_id: int | None = 1
    eos_token_id: int = 2
    dtype: str = "float32"  # activation dtype; parameters are always float32
    remat_policy: str = "none"
    scan_layers: bool = False
    attention_kernel: str = "xla"  # the only one here (the flash kernel is mT5's so far)
    lora: LoraConfig | None = None

    FAMILY = "llama"  # the "family" key of the saved JSON (a class constant, not a field)
    mlp_matrices = 3  # gate, up, down (FLOPs)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "emb_dim", "num_heads", "num_kv_heads", "head_dim",
                     "mlp_dim", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise SettingError(f"LlamaConfig.{name} must be a positive integer, got "
                                   f"{value!r}")
        if self.num_heads % self.num_kv_heads:
            raise SettingError(f"LlamaConfig.num_kv_heads={self.num_kv_heads} must divide "
                               f"num_heads={self.num_heads} (grouped-query attention)")
        if self.head_dim % 2:
            raise SettingError(f"LlamaConfig.head_dim={self.head_dim} must be even (rotary "
                               "embeddings rotate pairs)")
        if self.remat_policy not in REMAT_POLICIES:
            raise SettingError(f"LlamaConfig.remat_policy={self.remat_policy!r}: use one of "
                               f"{REMAT_POLICIES}")
        if self.attention_kernel != "xla":
            raise SettingError(f"LlamaConfig.attention_kernel={self.attention_kernel!r}: the "
                               "LLaMA network has the XLA attention only; bind 'xla'")
        if self.eos_token_id <= 0 or (self.bos_token_id is not None and self.bos_token_id <= 0):
            raise SettingError(f"LlamaConfig bos_token_id={self.bos_token_id}, eos_token_id="
                               f"{self.eos_token_id}: 0 is padding in mtf's batches; use the "
                               "tokenizer's ids (None for a vocabulary without BOS)")
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
        if isinstance(self.lora, dict):  # from JSON
            object.__setattr__(self, "lora", LoraConfig(**self.lora))

    @property
    def norm_epsilon(self) -> float:
        return self.rms_norm_eps


def rope_frequencies(config: LlamaConfig) -> Array:
    """The inverse frequencies [head_dim / 2] of the rotary embedding (Llama 3 scaled)."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    s = config.rope_scaling
    if s is None:
        return inv_freq
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = ((s.original_max_position_embeddings / wavelen - s.low_freq_factor)
              / (s.high_freq_factor - s.low_freq_factor))
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, smoothed, scaled)


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
    """Rotates x [batch, length, heads, head_dim] by its positions [batch, length], the two
    halves of head_dim paired (HF's rotate_half), in float32."""
    angles = positions.astype(jnp.float32)[:, :, None] * inv_freq[None, None, :]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


class Attention(nn.Module):
    """Grouped-query attention; with `cache_length`, keys and values are also written to
    a cache of that length at `cache_start` and the queries attend to the whole cache."""

    config: LlamaConfig
    cache_length: int | None = None

    @nn.compact
    def __call__(self, x: Array, positions: Array, bias: Array,
                 cache_start: Array | None = None) -> Array:
        cfg, dtype = self.config, self.config.activation_dtype
        groups = cfg.num_heads // cfg.num_kv_heads

        def project(name: str, heads: int) -> Array:
            return Dense((heads, cfg.head_dim), ("embed", "joined_kv"), dtype=dtype,
                         lora=cfg.lora, name=name)(x)

        inv_freq = rope_frequencies(cfg)
        query = apply_rope(project("query", cfg.num_heads), positions, inv_freq)
        key = apply_rope(project("key", cfg.num_kv_heads), positions, inv_freq)
        value = project("value", cfg.num_kv_heads)
        batch, length = x.shape[:2]
        if self.cache_length is not None:
            key = cached(self, "cached_key", key, self.cache_length, cache_start)
            value = cached(self, "cached_value", value, self.cache_length, cache_start)
        query = query.reshape(batch, length, cfg.num_kv_heads, groups, cfg.head_dim)
        scores = jnp.einsum("bqhgd,bkhd->bhgqk", query.astype(jnp.float32),
                            key.astype(jnp.float32)) / math.sqrt(cfg.head_dim)
        scores = scores + bias[:, :, None].astype(jnp.float32)
        weights = jax.nn.softmax(scores, axis=-1).astype(dtype)
        out = jnp.einsum("bhgqk,bkhd->bqhgd", weights, value.astype(dtype))
        out = out.reshape(batch, length, cfg.num_heads, cfg.head_dim)
        return Dense(cfg.emb_dim, ("joined_kv", "embed"), axis=(-2, -1), dtype=dtype,
                     lora=cfg.lora, name="out")(out)


class Mlp(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg, dtype = self.config, self.config.activation_dtype
        gate = Dense(cfg.mlp_dim, ("embed", "mlp"), dtype=dtype, lora=cfg.lora,
                     name="gate")(x)
        up = Dense(cfg.mlp_dim, ("embed", "mlp"), dtype=dtype, lora=cfg.lora, name="up")(x)
        hidden = constrain(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
        return Dense(cfg.emb_dim, ("mlp", "embed"), dtype=dtype, lora=cfg.lora,
                     name="down")(hidden)


PARTS = DecoderParts(norm=RMSNorm, attention=Attention, mlp=Mlp)


class Llama(nn.Module):
    """`apply({'params': p}, tokens, segment_ids=None, positions=None)` -> logits [batch,
    length, vocab] (or, with `return_hidden`, the final normed states the logits project
    from). Without segment ids every position is one sequence; with them, 0 is padding.

    Decoding: with `cache_length`, keys and values go to a 'cache' collection at
    `cache_start`, and `attention_bias` [batch, 1, length, cache_length] says which cache
    slots each query sees (the caller tracks which are filled)."""

    config: LlamaConfig
    cache_length: int | None = None

    @nn.compact
    def __call__(self, tokens: Array, segment_ids: Array | None = None,
                 positions: Array | None = None, return_hidden: bool = False,
                 cache_start: Array | None = None,
                 attention_bias: Array | None = None) -> Array:
        cfg, dtype = self.config, self.config.activation_dtype
        positions, bias = positions_and_bias(tokens, segment_ids, positions, attention_bias,
                                             dtype)
        embedder = Embed(cfg.vocab_size, cfg.emb_dim, dtype=dtype,
                         embedding_init=nn.initializers.normal(stddev=0.02),
                         name="token_embedder")
        x = DecoderStack(cfg, PARTS, self.cache_length, name="decoder")(
            embedder(tokens), positions, bias, cache_start)
        if return_hidden:
            return x
        if cfg.tie_word_embeddings:
            return embedder.attend(x)
        kernel = logical_param(self, "logits_kernel", nn.initializers.normal(stddev=0.02),
                               (cfg.emb_dim, cfg.vocab_size), ("embed", "vocab"))
        return jnp.dot(x, kernel.astype(dtype))
