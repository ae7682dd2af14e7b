"""T5.1.1 building blocks, each parameter and large activation named by logical axes.

Logical names (`embed`, `mlp`, `heads`, `kv`, `joined_kv`, `vocab`, `batch`, `length`,
`relpos_buckets`) are T5X's; the mesh mapping lives in a rule table elsewhere, so the
model never knows how it is sharded.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mtf.model import flash, masks
from mtf.model.config import LoraConfig

Array = jax.Array
Initializer = Callable[..., Array]

NEG_INF = -1e10  # T5X's additive mask value: large but finite, safe in bf16


def logical_param(module: nn.Module, name: str, init: Initializer, shape: Sequence[int],
                  axes: tuple[str, ...]) -> Array:
    """A float32 parameter annotated with its logical axis names."""
    return module.param(name, nn.with_logical_partitioning(init, axes), tuple(shape),
                        jnp.float32)


def constrain(x: Array, axes: tuple[str, ...]) -> Array:
    """Logical sharding constraint; a no-op outside a mesh with rules."""
    return nn.with_logical_constraint(x, axes)


# PEFT's LoRA initialisation: A as torch's default Linear init (kaiming_uniform, a=sqrt(5),
# i.e. uniform within 1/sqrt(fan_in)), B zero so the adapted model starts as the base.
LORA_A_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=-1,
                                               out_axis=-2)
LORA_RANK_AXIS = "lora_rank"


class Dense(nn.Module):
    """Linear map over `axis` (bias-free unless `use_bias`: BLOOM's); the kernel is stored
    2-D as in T5X checkpoints.

    With `lora` whose targets match this kernel's name, low-rank adapters `lora_a` [r, in]
    and `lora_b` [r, out] sit beside the kernel (named by the kernel's logical axes, so they
    shard like it) and add (alpha / r) (dropout(x) A) B.
    """

    features: int | tuple[int, ...]
    kernel_axes: tuple[str, str]
    axis: int | tuple[int, ...] = -1
    dtype: jnp.dtype = jnp.float32
    kernel_init: Initializer = nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal")
    lora: LoraConfig | None = None
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        y = self._linear(x, deterministic)
        if not self.use_bias:
            return y
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        bias = logical_param(self, "bias", nn.initializers.zeros, (int(np.prod(features)),),
                             (self.kernel_axes[1],))
        return y + jnp.reshape(bias.astype(self.dtype), features)

    def _linear(self, x: Array, deterministic: bool) -> Array:
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        axis = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
        axis = tuple(a % x.ndim for a in axis)
        in_shape = tuple(x.shape[a] for a in axis)
        flat_in, flat_out = int(np.prod(in_shape)), int(np.prod(features))
        kernel = logical_param(self, "kernel", self.kernel_init, (flat_in, flat_out),
                               self.kernel_axes)
        kernel = jnp.reshape(kernel.astype(self.dtype), in_shape + features)
        x = x.astype(self.dtype)
        contract = (axis, tuple(range(len(axis))))
        y = lax.dot_general(x, kernel, (contract, ((), ())))
        if self.lora is None or not self.lora.applies_to("/".join(self.path) + "/kernel"):
            return y
        rank = self.lora.rank
        # A is stored [r, in] (PEFT's lora_A layout): its gradient then comes out rank-major,
        # which XLA:CPU computes 3.5x faster than [in, r] (measured, bench/hf_compare --lora)
        a = logical_param(self, "lora_a", LORA_A_INIT, (rank, flat_in),
                          (LORA_RANK_AXIS, self.kernel_axes[0]))
        b = logical_param(self, "lora_b", nn.initializers.zeros, (rank, flat_out),
                          (LORA_RANK_AXIS, self.kernel_axes[1]))
        if not deterministic and self.lora.dropout > 0:
            x = nn.Dropout(self.lora.dropout, name="lora_dropout")(x, deterministic=False)
        if axis != tuple(range(x.ndim - len(axis), x.ndim)):
            raise ValueError(f"LoRA on {'/'.join(self.path)}: contracted axes {axis} are not "
                             "the trailing axes of its input")
        # as 2-D matmuls over the flattened tokens: XLA:CPU runs the rank-r products of
        # multi-dimensional dot_generals several times slower (bench/hf_compare --lora)
        batch_shape = x.shape[:x.ndim - len(axis)]
        low = jnp.dot(x.reshape(-1, flat_in), a.astype(self.dtype).T)
        update = jnp.dot(low, b.astype(self.dtype)).reshape(batch_shape + features)
        return y + update * jnp.asarray(self.lora.scale, self.dtype)


class Embed(nn.Module):
    """Token embedding shared by encoder and decoder (and the logits if tied)."""

    num_embeddings: int
    features: int
    dtype: jnp.dtype = jnp.float32
    embedding_init: Initializer = nn.initializers.normal(stddev=1.0)

    def setup(self) -> None:
        self.embedding = logical_param(self, "embedding", self.embedding_init,
                                       (self.num_embeddings, self.features), ("vocab", "embed"))

    def __call__(self, tokens: Array) -> Array:
        out = jnp.take(self.embedding.astype(self.dtype), tokens.astype(jnp.int32), axis=0)
        return constrain(out, ("batch", "length", "embed"))

    def attend(self, x: Array) -> Array:
        """Logits by dot product with the embedding table (T5 v1.0 tied logits)."""
        return jnp.dot(x.astype(self.dtype), self.embedding.astype(self.dtype).T)


class LayerNorm(nn.Module):
    """Layer norm with mean subtraction, scale and bias (BLOOM's), computed in float32."""

    epsilon: float = 1e-5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * lax.rsqrt(var + self.epsilon)
        scale = logical_param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",))
        bias = logical_param(self, "bias", nn.initializers.zeros, (x.shape[-1],), ("embed",))
        return (y * scale + bias).astype(self.dtype)


class RMSNorm(nn.Module):
    """T5's layer norm: scale only, no mean subtraction, computed in float32."""

    epsilon: float = 1e-6
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * lax.rsqrt(var + self.epsilon)
        scale = logical_param(self, "scale", nn.initializers.ones, (x.shape[-1],), ("embed",))
        return (y * scale).astype(self.dtype)


def relative_position_bucket(relative_position: Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Array:
    """Mesh-TF's bucketing: exact for small distances, logarithmic up to max_distance."""
    n = -relative_position
    bucket = jnp.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (n < 0).astype(jnp.int32) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # Clamp before the log so that distance 0 gives no -inf (it is masked by is_small anyway).
    log_ratio = jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact) / np.log(
        max_distance / max_exact)
    large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return bucket + jnp.where(is_small, n, large)


class RelativePositionBiases(nn.Module):
    """One bias table per stack, shared by all its layers: [heads, buckets]."""

    num_buckets: int
    max_distance: int
    num_heads: int
    dtype: jnp.dtype = jnp.float32
    embedding_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")

    @nn.compact
    def __call__(self, qlen: int, klen: int, bidirectional: bool) -> Array:
        """Returns the bias [1, heads, qlen, klen]."""
        context = np.arange(qlen, dtype=np.int32)[:, None]
        memory = np.arange(klen, dtype=np.int32)[None, :]
        buckets = relative_position_bucket(jnp.asarray(memory - context), bidirectional,
                                           self.num_buckets, self.max_distance)
        table = logical_param(self, "rel_embedding", self.embedding_init,
                              (self.num_heads, self.num_buckets), ("heads", "relpos_buckets"))
        # A one-hot contraction rather than a gather: cheap (buckets are few) and TPU friendly.
        one_hot = jax.nn.one_hot(buckets, self.num_buckets, dtype=self.dtype)
        values = jnp.einsum("hb,qkb->hqk", table.astype(self.dtype), one_hot)
        return values[None]


def dot_product_attention(query: Array, key: Array, value: Array, bias: Array | None,
                          dropout_rng: Array | None, dropout_rate: float, dtype: jnp.dtype,
                          float32_logits: bool) -> Array:
    """Unscaled attention (T5 folds 1/sqrt(d) into the query initialiser)."""
    if float32_logits:
        query, key = query.astype(jnp.float32), key.astype(jnp.float32)
    weights = jnp.einsum("bqhd,bkhd->bhqk", query, key)
    if bias is not None:
        weights = weights + bias.astype(weights.dtype)
    weights = jax.nn.softmax(weights.astype(jnp.float32)).astype(dtype)
    if dropout_rng is not None:
        keep_prob = 1.0 - dropout_rate
        shape = list(weights.shape)
        shape[-2] = 1  # T5 broadcasts attention dropout along the query length
        keep = jax.random.bernoulli(dropout_rng, keep_prob, shape)
        weights = weights * (keep.astype(dtype) / jnp.asarray(keep_prob, dtype))
    return jnp.einsum("bhqk,bkhd->bqhd", weights, value.astype(dtype))


class MultiHeadAttention(nn.Module):
    """Multi-head attention with an optional autoregressive key/value cache."""

    num_heads: int
    head_dim: int
    dtype: jnp.dtype = jnp.float32
    dropout_rate: float = 0.0
    float32_logits: bool = False
    kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
    lora: LoraConfig | None = None

    @nn.compact
    def __call__(self, inputs_q: Array, inputs_kv: Array,
                 mask: Array | masks.SegmentMask | None = None,
                 bias: Array | None = None, *, decode: bool = False,
                 deterministic: bool = True, cross_cache: str | None = None) -> Array:
        """cross_cache (decoding, encoder-decoder attention): 'fill' projects the encoded
        keys/values once and stores them, 'read' uses the stored ones instead of projecting
        the whole input again at every generated token."""
        depth_scaling = np.sqrt(self.head_dim).astype(np.float32)

        def query_init(*args):
            return self.kernel_init(*args) / depth_scaling

        project = functools.partial(Dense, features=(self.num_heads, self.head_dim),
                                    kernel_axes=("embed", "joined_kv"), dtype=self.dtype,
                                    lora=self.lora)
        query = project(kernel_init=query_init, name="query")(inputs_q, deterministic)
        qkv_axes = ("batch", "length", "heads", "kv")
        if cross_cache == "read":
            key = self.get_variable("cache", "cached_cross_key")
            value = self.get_variable("cache", "cached_cross_value")
        else:
            key = project(kernel_init=self.kernel_init, name="key")(inputs_kv, deterministic)
            value = project(kernel_init=self.kernel_init, name="value")(inputs_kv,
                                                                        deterministic)
        query, key, value = (constrain(t, qkv_axes) for t in (query, key, value))
        if cross_cache == "fill":
            self.put_variable("cache", "cached_cross_key", key)
            self.put_variable("cache", "cached_cross_value", value)

        dropout_rng = None
        if not deterministic and self.dropout_rate > 0.0:
            dropout_rng = self.make_rng("dropout")
        if isinstance(mask, masks.SegmentMask):  # what the network builds for the flash kernel
            if not decode and not self.is_initializing():
                x = flash.attention(query, key, value, bias, mask, dropout_rng,
                                    self.dropout_rate, self.dtype)
                return self._project_out(constrain(x, qkv_axes), inputs_q, deterministic)
            mask = mask.dense()

        if decode:
            key, value, mask, bias = self._use_cache(query, key, value, mask, bias)

        attention_bias = None
        if mask is not None:
            attention_bias = jnp.where(mask > 0, 0.0, NEG_INF).astype(self.dtype)
        if bias is not None:
            attention_bias = bias if attention_bias is None else attention_bias + bias

        x = dot_product_attention(query, key, value, attention_bias, dropout_rng,
                                  self.dropout_rate, self.dtype, self.float32_logits)
        return self._project_out(constrain(x, qkv_axes), inputs_q, deterministic)

    def _project_out(self, x: Array, inputs_q: Array, deterministic: bool) -> Array:
        return Dense(features=inputs_q.shape[-1], axis=(-2, -1),
                     kernel_axes=("joined_kv", "embed"), kernel_init=self.kernel_init,
                     dtype=self.dtype, lora=self.lora, name="out")(x, deterministic)

    def _use_cache(self, query, key, value, mask, bias):
        """Writes this step's key/value into the cache and attends over the filled prefix.

        The first call (at init, with the full decode length) only creates the cache.
        """
        initialized = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape,
                                     value.dtype)
        cache_index = self.variable("cache", "cache_index",
                                    lambda: jnp.array(0, dtype=jnp.int32))
        if not initialized:
            return key, value, mask, bias
        batch, length, heads, depth = cached_key.value.shape
        if query.shape != (batch, 1, heads, depth):
            raise ValueError(f"decoding feeds one position at a time: expected query shape "
                             f"{(batch, 1, heads, depth)}, got {query.shape}")
        index = cache_index.value
        key = lax.dynamic_update_slice(cached_key.value, key.astype(cached_key.value.dtype),
                                       (0, index, 0, 0))
        value = lax.dynamic_update_slice(cached_value.value,
                                         value.astype(cached_value.value.dtype),
                                         (0, index, 0, 0))
        cached_key.value, cached_value.value = key, value
        cache_index.value = index + 1
        filled = jnp.broadcast_to(jnp.arange(length) <= index, (batch, 1, 1, length))
        mask = filled if mask is None else jnp.logical_and(mask, filled)
        if bias is not None:  # the full [1, h, L, L] table: keep the current query's row
            bias = lax.dynamic_slice_in_dim(bias, index, 1, axis=-2)
        return key, value, mask, bias


ACTIVATION_FNS = {
    "gelu": functools.partial(jax.nn.gelu, approximate=True),  # T5X and HF's gelu_new
    "relu": jax.nn.relu,
    "linear": lambda x: x,
}


class MlpBlock(nn.Module):
    """Feed-forward block; several activations multiply (gated-GeLU for mT5)."""

    intermediate_dim: int
    activations: tuple[str, ...]
    dropout_rate: float = 0.0
    dtype: jnp.dtype = jnp.float32
    kernel_init: Initializer = nn.initializers.variance_scaling(
        1.0, "fan_in", "truncated_normal")
    lora: LoraConfig | None = None

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        hidden = None
        for i, act in enumerate(self.activations):
            name = "wi" if len(self.activations) == 1 else f"wi_{i}"
            h = Dense(self.intermediate_dim, kernel_axes=("embed", "mlp"), dtype=self.dtype,
                      kernel_init=self.kernel_init, lora=self.lora, name=name)(x, deterministic)
            h = ACTIVATION_FNS[act](h)
            hidden = h if hidden is None else hidden * h
        hidden = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(
            hidden, deterministic=deterministic)
        hidden = constrain(hidden, ("batch", "length", "mlp"))
        return Dense(x.shape[-1], kernel_axes=("mlp", "embed"), dtype=self.dtype,
                     kernel_init=self.kernel_init, lora=self.lora, name="wo")(hidden,
                                                                             deterministic)
