"""The mT5 encoder-decoder with T5X's parameter tree, called the way T5X calls it."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtf.model import masks
from mtf.model.config import T5Config
from mtf.model.layers import (
    Dense,
    Embed,
    MlpBlock,
    MultiHeadAttention,
    RelativePositionBiases,
    RMSNorm,
    constrain,
)

Array = jax.Array
EMBED_AXES = ("batch", "length", "embed")


def _dropout(cfg: T5Config, x: Array, deterministic: bool) -> Array:
    return nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(x, deterministic=deterministic)


def _attention(cfg: T5Config, name: str) -> MultiHeadAttention:
    return MultiHeadAttention(num_heads=cfg.num_heads, head_dim=cfg.head_dim,
                              dtype=cfg.activation_dtype, dropout_rate=cfg.dropout_rate,
                              float32_logits=cfg.float32_attention_logits, lora=cfg.lora,
                              name=name)


def _mlp(cfg: T5Config) -> MlpBlock:
    return MlpBlock(intermediate_dim=cfg.mlp_dim, activations=cfg.mlp_activations,
                    dropout_rate=cfg.dropout_rate, dtype=cfg.activation_dtype, lora=cfg.lora,
                    name="mlp")


def _norm(cfg: T5Config, name: str) -> RMSNorm:
    return RMSNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.activation_dtype, name=name)


class EncoderLayer(nn.Module):
    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, inputs: Array, mask: Array, bias: Array):
        cfg, det = self.config, self.deterministic
        x = _norm(cfg, "pre_attention_layer_norm")(inputs)
        x = _attention(cfg, "attention")(x, x, mask, bias, deterministic=det)
        x = constrain(_dropout(cfg, x, det) + inputs, EMBED_AXES)
        y = _norm(cfg, "pre_mlp_layer_norm")(x)
        y = _mlp(cfg)(y, deterministic=det)
        y = constrain(_dropout(cfg, y, det) + x, EMBED_AXES)
        return (y, None) if cfg.scan_layers else y


class DecoderLayer(nn.Module):
    config: T5Config
    deterministic: bool = True
    decode: bool = False
    cross_cache: str | None = None  # see MultiHeadAttention

    @nn.compact
    def __call__(self, inputs: Array, encoded: Array, self_mask: Array | None,
                 cross_mask: Array | None, bias: Array):
        cfg, det = self.config, self.deterministic
        x = _norm(cfg, "pre_self_attention_layer_norm")(inputs)
        x = _attention(cfg, "self_attention")(x, x, self_mask, bias, decode=self.decode,
                                              deterministic=det)
        x = constrain(_dropout(cfg, x, det) + inputs, EMBED_AXES)
        y = _norm(cfg, "pre_cross_attention_layer_norm")(x)
        y = _attention(cfg, "encoder_decoder_attention")(y, encoded, cross_mask,
                                                         deterministic=det,
                                                         cross_cache=self.cross_cache)
        y = constrain(_dropout(cfg, y, det) + x, EMBED_AXES)
        z = _norm(cfg, "pre_mlp_layer_norm")(y)
        z = _mlp(cfg)(z, deterministic=det)
        z = constrain(_dropout(cfg, z, det) + y, EMBED_AXES)
        return (z, None) if cfg.scan_layers else z


def _remat_policy(name: str):
    policies = jax.checkpoint_policies
    return {"full": None,
            "dots": policies.dots_saveable,
            "dots_with_no_batch_dims": policies.dots_with_no_batch_dims_saveable,
            "minimal": policies.dots_with_no_batch_dims_saveable,
            "offload_dots": policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
            }[name]


def run_layers(cfg: Any, layer_cls, num_layers: int, x: Array, layer_kwargs: dict,
                broadcast_args: tuple) -> Array:
    """Applies `num_layers` layers as `layers_N` modules, or as one scanned `layers`."""
    if cfg.remat_policy != "none":
        layer_cls = nn.remat(layer_cls, prevent_cse=not cfg.scan_layers,
                             policy=_remat_policy(cfg.remat_policy))
    if cfg.scan_layers:
        scanned = nn.scan(layer_cls, variable_axes={"params": 0, "cache": 0},
                          split_rngs={"params": True, "dropout": True},
                          in_axes=(nn.broadcast,) * len(broadcast_args), length=num_layers,
                          metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = scanned(config=cfg, name="layers", **layer_kwargs)(x, *broadcast_args)
        return x
    for i in range(num_layers):
        x = layer_cls(config=cfg, name=f"layers_{i}", **layer_kwargs)(x, *broadcast_args)
    return x


class Encoder(nn.Module):
    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, tokens: Array, segment_ids: Array | None = None,
                 deterministic: bool = True) -> Array:
        cfg = self.config
        length = tokens.shape[-1]
        bias = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                      cfg.relative_attention_max_distance, cfg.num_heads,
                                      dtype=cfg.activation_dtype, name="relpos_bias")(
                                          length, length, True)
        if cfg.attention_kernel == "flash":
            mask = masks.encoder_segments(tokens, segment_ids)
        else:
            mask = masks.encoder_mask(tokens, segment_ids)
        x = self.shared_embedding(tokens)
        x = _dropout(cfg, x, deterministic).astype(cfg.activation_dtype)
        x = run_layers(cfg, EncoderLayer, cfg.num_encoder_layers, x,
                        {"deterministic": deterministic}, (mask, bias))
        x = _norm(cfg, "encoder_norm")(x)
        return _dropout(cfg, x, deterministic)


class Decoder(nn.Module):
    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, encoded: Array, tokens: Array, self_mask: Array | None,
                 cross_mask: Array | None, deterministic: bool = True, decode: bool = False,
                 max_decode_length: int | None = None, return_hidden: bool = False,
                 cross_cache: str | None = None) -> Array:
        cfg = self.config
        length = max_decode_length if decode and max_decode_length else tokens.shape[-1]
        bias = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                      cfg.relative_attention_max_distance, cfg.num_heads,
                                      dtype=cfg.activation_dtype, name="relpos_bias")(
                                          length, length, False)
        y = self.shared_embedding(tokens)
        y = _dropout(cfg, y, deterministic).astype(cfg.activation_dtype)
        y = run_layers(cfg, DecoderLayer, cfg.num_decoder_layers, y,
                        {"deterministic": deterministic, "decode": decode,
                         "cross_cache": cross_cache},
                        (encoded, self_mask, cross_mask, bias))
        y = _norm(cfg, "decoder_norm")(y)
        y = _dropout(cfg, y, deterministic)
        if return_hidden:  # the fused loss applies the output projection itself
            return y
        if cfg.logits_via_embedding:
            logits = self.shared_embedding.attend(y) / np.sqrt(y.shape[-1]).astype(np.float32)
        else:
            logits = Dense(cfg.vocab_size, kernel_axes=("embed", "vocab"), dtype=jnp.float32,
                           name="logits_dense")(y)
        return constrain(logits, ("batch", "length", "vocab"))


def output_projection(params: dict, config: T5Config) -> tuple[Array, str, float]:
    """(kernel [emb, vocab], compute dtype, scale) of the logits layer, for the fused loss
    (`losses.fused_cross_entropy`) to apply to the `return_hidden` states."""
    if config.logits_via_embedding:
        return (params["token_embedder"]["embedding"].T, config.dtype,
                float(1.0 / np.sqrt(config.emb_dim)))
    return params["decoder"]["logits_dense"]["kernel"], "float32", 1.0


class Transformer(nn.Module):
    """mT5: `apply({'params': p}, encoder_input_tokens=..., decoder_input_tokens=...,
    decoder_target_tokens=..., enable_dropout=False)` -> logits [batch, length, vocab]."""

    config: T5Config

    def setup(self) -> None:
        cfg = self.config
        self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, dtype=cfg.activation_dtype)
        self.encoder = Encoder(cfg, self.token_embedder)
        self.decoder = Decoder(cfg, self.token_embedder)

    def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Array | None = None,
               enable_dropout: bool = True) -> Array:
        return self.encoder(encoder_input_tokens, encoder_segment_ids,
                            deterministic=not enable_dropout)

    def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array, encoder_segment_ids: Array | None = None,
               decoder_segment_ids: Array | None = None,
               decoder_positions: Array | None = None, enable_dropout: bool = True,
               decode: bool = False, max_decode_length: int | None = None,
               return_hidden: bool = False, cross_cache: str | None = None) -> Array:
        """Decoder logits (or, with `return_hidden`, the states the logits project from);
        with `decode=True`, one step against the cache (`cross_cache`: 'fill' on the first
        step stores the encoder-decoder keys/values, 'read' reuses them).

        Positions are implied by the sequence index (relative attention within a packed
        segment does not depend on where the segment starts), so `decoder_positions` is
        accepted for T5X compatibility only.
        """
        del decoder_positions
        if decode:
            self_mask = None  # the cache supplies causality
            cross = masks.make_attention_mask(jnp.ones_like(decoder_target_tokens) > 0,
                                              encoder_input_tokens > 0)
        elif self.config.attention_kernel == "flash":
            self_mask = masks.decoder_segments(decoder_target_tokens, decoder_segment_ids)
            cross = masks.cross_segments(decoder_target_tokens, encoder_input_tokens,
                                         decoder_segment_ids, encoder_segment_ids)
        else:
            self_mask = masks.decoder_mask(decoder_target_tokens, decoder_segment_ids)
            cross = masks.cross_mask(decoder_target_tokens, encoder_input_tokens,
                                     decoder_segment_ids, encoder_segment_ids)
        return self.decoder(encoded, decoder_input_tokens, self_mask, cross,
                            deterministic=not enable_dropout, decode=decode,
                            max_decode_length=max_decode_length, return_hidden=return_hidden,
                            cross_cache=cross_cache)

    def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
                 decoder_target_tokens: Array, encoder_segment_ids: Array | None = None,
                 decoder_segment_ids: Array | None = None,
                 encoder_positions: Array | None = None,
                 decoder_positions: Array | None = None, *, enable_dropout: bool = True,
                 decode: bool = False, max_decode_length: int | None = None,
                 return_hidden: bool = False, cross_cache: str | None = None) -> Array:
        del encoder_positions  # see `decode`: relative attention needs no absolute positions
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, enable_dropout)
        return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                           decoder_target_tokens, encoder_segment_ids, decoder_segment_ids,
                           decoder_positions, enable_dropout, decode, max_decode_length,
                           return_hidden, cross_cache)
