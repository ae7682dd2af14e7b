"""The BLOOM architecture (BLOOMZ's base) as a decoder-only Flax network.

A LayerNorm (with bias) on the token embeddings, then pre-norm layers of multi-head
attention with ALiBi (a per-head linear bias on each key's position instead of position
embeddings) and a GeLU (tanh) MLP, all with biases; a final LayerNorm; the output
projection tied to the token embedding. Parameters carry T5X-style logical axis names
(query, key and value kept apart, so LoRA and the rule table treat them as LLaMA's);
`mtf.convert.hf_bloom` splits and joins HF's fused query_key_value. Written here for the
same reason as `llama.py`: no maintained Flax BLOOM takes mtf's axes, scan and LoRA.
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
from mtf.model.layers import Dense, Embed, LayerNorm, constrain

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class BloomConfig(DecoderConfigMethods):
    """Shapes and switches of a BLOOM decoder, named after HF's `BloomConfig` where it has
    the field (emb_dim = hidden_size, num_heads = n_head, num_layers = n_layer); the head
    size is emb_dim / num_heads and the MLP is 4 x emb_dim, as in every BLOOM."""

    vocab_size: int
    emb_dim: int
    num_heads: int
    num_layers: int
    layer_norm_epsilon: float = 1e-5
    bos_token_id: int | None = 1
    eos_token_id: int = 2
    dtype: str = "float32"  # activation dtype; parameters are always float32
    remat_policy: str = "none"
    scan_layers: bool = False
    attention_kernel: str = "xla"
    lora: LoraConfig | None = None

    FAMILY = "bloom"  # the "family" key of the saved JSON
    tie_word_embeddings = True  # BLOOM's logits always read the token embedding
    mlp_matrices = 2  # dense_h_to_4h, dense_4h_to_h (FLOPs)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "emb_dim", "num_heads", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise SettingError(f"BloomConfig.{name} must be a positive integer, got "
                                   f"{value!r}")
        if self.emb_dim % self.num_heads:
            raise SettingError(f"BloomConfig.num_heads={self.num_heads} must divide "
                               f"emb_dim={self.emb_dim} (head size = emb_dim / num_heads)")
        if self.remat_policy not in REMAT_POLICIES:
            raise SettingError(f"BloomConfig.remat_policy={self.remat_policy!r}: use one of "
                               f"{REMAT_POLICIES}")
        if self.attention_kernel != "xla":
            raise SettingError(f"BloomConfig.attention_kernel={self.attention_kernel!r}: the "
                               "BLOOM network has the XLA attention only; bind 'xla'")
        if self.eos_token_id <= 0 or (self.bos_token_id is not None and self.bos_token_id <= 0):
            raise SettingError(f"BloomConfig bos_token_id={self.bos_token_id}, eos_token_id="
                               f"{self.eos_token_id}: 0 is padding in mtf's batches")
        if isinstance(self.lora, dict):  # from JSON
            object.__setattr__(self, "lora", LoraConfig(**self.lora))

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.num_heads

    @property
    def num_kv_heads(self) -> int:
        return self.num_heads

    @property
    def norm_epsilon(self) -> float:
        return self.layer_norm_epsilon

    @property
    def mlp_dim(self) -> int:
        return 4 * self.emb_dim


def alibi_slopes(num_heads: int) -> Array:
    """ALiBi's per-head slopes (Press et al.; HF's `build_alibi_tensor`): a geometric
    sequence for the largest power of two <= heads, interleaved extras beyond it."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = [base ** p for p in range(1, closest + 1)]
    if closest != num_heads:
        extra = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra ** p for p in range(1, 1 + 2 * min(closest, num_heads - closest), 2)]
    return jnp.asarray(slopes, jnp.float32)


class Attention(nn.Module):
    """Multi-head attention with ALiBi: each score gets slope[head] x the key's position
    (positions restart per packed example; a cache keeps the positions of its keys)."""

    config: BloomConfig
    cache_length: int | None = None

    @nn.compact
    def __call__(self, x: Array, positions: Array, bias: Array,
                 cache_start: Array | None = None) -> Array:
        cfg, dtype = self.config, self.config.activation_dtype

        def project(name: str) -> Array:
            return Dense((cfg.num_heads, cfg.head_dim), ("embed", "joined_kv"), dtype=dtype,
                         lora=cfg.lora, use_bias=True, name=name)(x)

        query, key, value = project("query"), project("key"), project("value")
        key_positions = positions.astype(jnp.float32)[:, :, None, None]
        if self.cache_length is not None:
            key = cached(self, "cached_key", key, self.cache_length, cache_start)
            value = cached(self, "cached_value", value, self.cache_length, cache_start)
            # kept 4-D like the keys, so that one rule reorders every cache entry
            key_positions = cached(self, "cached_positions", key_positions,
                                   self.cache_length, cache_start)
        # [batch, heads, 1, keys]
        alibi = (alibi_slopes(cfg.num_heads)[None, :, None, None]
                 * key_positions[:, :, 0, 0][:, None, None, :])
        scores = jnp.einsum("bqhd,bkhd->bhqk", query.astype(jnp.float32),
                            key.astype(jnp.float32)) / math.sqrt(cfg.head_dim)
        scores = scores + alibi + bias.astype(jnp.float32)
        weights = jax.nn.softmax(scores, axis=-1).astype(dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, value.astype(dtype))
        return Dense(cfg.emb_dim, ("joined_kv", "embed"), axis=(-2, -1), dtype=dtype,
                     lora=cfg.lora, use_bias=True, name="out")(out)


class Mlp(nn.Module):
    """wo(gelu_tanh(wi(x))), with biases (HF's dense_h_to_4h, dense_4h_to_h)."""

    config: BloomConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg, dtype = self.config, self.config.activation_dtype
        hidden = Dense(cfg.mlp_dim, ("embed", "mlp"), dtype=dtype, lora=cfg.lora,
                       use_bias=True, name="wi")(x)
        hidden = constrain(jax.nn.gelu(hidden, approximate=True), ("batch", "length", "mlp"))
        return Dense(cfg.emb_dim, ("mlp", "embed"), dtype=dtype, lora=cfg.lora, use_bias=True,
                     name="wo")(hidden)


PARTS = DecoderParts(norm=LayerNorm, attention=Attention, mlp=Mlp)


class Bloom(nn.Module):
    """The same calls as `llama.Llama`: logits [batch, length, vocab] (or the final normed
    states with `return_hidden`); segment ids (0: padding) and positions for packing; a
    key/value cache of `cache_length` for decoding."""

    config: BloomConfig
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
        x = LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=dtype, name="embedding_norm")(
            embedder(tokens))
        x = DecoderStack(cfg, PARTS, self.cache_length, name="decoder")(x, positions, bias,
                                                                       cache_start)
        return x if return_hidden else embedder.attend(x)
