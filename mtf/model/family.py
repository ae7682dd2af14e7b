"""What is particular to a model family, behind one object the rest of mtf calls.

The train step (`step`), rank classification (`eval.scoring`) and decoding
(`eval.decoding`) ask `family_of(config)` for hidden states, the output projection, the
decoding cache and how beams reorder it, and never call the network themselves. A second
family (decoder-only) is its config class, its network and a class here with the same
methods, added to `family_of`: new files, not branches in the step, the scorer or the
search. T5X's model classes (EncoderDecoderModel, DecoderOnlyModel) draw the same line.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from mtf.errors import SettingError
from mtf.model.bloom import Bloom, BloomConfig
from mtf.model.config import T5Config
from mtf.model.features import DECODER_ONLY, BatchSpec, SequenceIds
from mtf.model.layers import NEG_INF
from mtf.model.llama import Llama, LlamaConfig
from mtf.model.network import Transformer, output_projection

# (cache, tokens [rows, 1]) -> (float32 logits of the next token [rows, vocab], cache)
DecodeStep = Callable[[Any, jax.Array], tuple[jax.Array, Any]]


class ModelFamily(Protocol):
    """The calls the train step, the scorer, the decoder and the parameter helpers
    (`params`) make on a model."""

    @property
    def batch_spec(self) -> BatchSpec: ...

    @property
    def layer_stacks(self) -> dict[str, int]: ...

    def with_layers(self, depths: dict[str, int]) -> Any:
        """The config with these stacks at these depths (the planner's depth probes)."""

    def boxed_params(self, rng: jax.Array) -> Any: ...

    def hidden_states(self, params: Any, batch: dict[str, jax.Array],
                      dropout_rng: jax.Array | None) -> jax.Array: ...

    def output_projection(self, params: Any) -> tuple[jax.Array, str, float]: ...

    def choice_hidden_states(self, params: Any, prompts: jax.Array, row_prompt: jax.Array,
                             row_targets: jax.Array) -> jax.Array: ...

    def start_decoding(self, params: Any, prompts: jax.Array, rows_per_prompt: int,
                       length: int) -> tuple[jax.Array, Any, DecodeStep]: ...

    def reorder_cache(self, cache: Any, rows: jax.Array) -> Any: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def sequence_ids(self) -> SequenceIds | None:
        """A decoder-only model's BOS and EOS, which its training sequences are built with
        (None: the encoder-decoder batch)."""

    def model_flops_per_step(self, batch: int, inputs: int, targets: int) -> float: ...


def _train_flops(weight_macs: float, attention_macs: float, lora: bool) -> float:
    """Training FLOPs from the forward pass's multiply-adds (PaLM's MFU count): 6 per
    weight multiply-add (2 forward, 4 backward), 4 with LoRA's frozen base (its weight
    gradients are not computed; the adapters' rank-r matmuls, under 1% at rank 8, are left
    out); attention's activation-by-activation products always 6."""
    return (4.0 if lora else 6.0) * weight_macs + 6.0 * attention_macs


@dataclasses.dataclass(frozen=True)
class EncoderDecoder:
    """mT5 (T5.1.1): the prompt is encoded once; the decoder reads it through cross
    attention and starts generating from token 0 (T5's convention)."""

    config: T5Config

    @property
    def batch_spec(self) -> BatchSpec:
        return self.config.batch_spec

    @property
    def layer_stacks(self) -> dict[str, int]:
        """Each stack of identical layers (scanned as one) and its depth."""
        return {"encoder": self.config.num_encoder_layers,
                "decoder": self.config.num_decoder_layers}

    def with_layers(self, depths: dict[str, int]) -> T5Config:
        names = {"encoder": "num_encoder_layers", "decoder": "num_decoder_layers"}
        return self.config.replace(**{names[k]: v for k, v in depths.items()})

    def boxed_params(self, rng: jax.Array) -> Any:
        """Initialised parameters, still boxed with their logical axes (flax)."""
        tokens = jnp.ones((1, 1), jnp.int32)
        return Transformer(self.config).init(
            rng, encoder_input_tokens=tokens, decoder_input_tokens=tokens,
            decoder_target_tokens=tokens, enable_dropout=False)["params"]

    def hidden_states(self, params: Any, batch: dict[str, jax.Array],
                      dropout_rng: jax.Array | None) -> jax.Array:
        """The decoder's last states [batch, targets, emb] for a train batch (the loss
        projects them to the vocabulary in chunks); dropout when `dropout_rng` is given."""
        inputs = {k: batch[k] for k in self.batch_spec.model_inputs if k in batch}
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
        return Transformer(self.config).apply(
            {"params": params}, **inputs, enable_dropout=dropout_rng is not None, rngs=rngs,
            return_hidden=True)

    def output_projection(self, params: Any) -> tuple[jax.Array, str, float]:
        """(kernel [emb, vocab], compute dtype, scale) the hidden states project through."""
        return output_projection(params, self.config)

    def choice_hidden_states(self, params: Any, prompts: jax.Array, row_prompt: jax.Array,
                             row_targets: jax.Array) -> jax.Array:
        """States [rows, length, emb] predicting each row's targets given prompt
        `row_prompt[r]`: each prompt encoded once, its encoding shared by its rows."""
        model = Transformer(self.config.for_inference)
        encoded = model.apply({"params": params}, prompts, enable_dropout=False,
                              method=Transformer.encode)
        decoder_inputs = jnp.pad(row_targets[:, :-1], ((0, 0), (1, 0)))
        return model.apply({"params": params}, encoded[row_prompt], prompts[row_prompt],
                           decoder_inputs, row_targets, enable_dropout=False,
                           return_hidden=True, method=Transformer.decode)

    def start_decoding(self, params: Any, prompts: jax.Array, rows_per_prompt: int,
                       length: int) -> tuple[jax.Array, Any, DecodeStep]:
        """(logits of the first token [prompts x rows, vocab], the cache, the step): the
        prompts encoded once, each repeated for its rows (beams or samples), the cross
        attention's keys and values computed by the first step and read after it."""
        model = Transformer(self.config.for_inference)
        encoded = model.apply({"params": params}, prompts, enable_dropout=False,
                              method=Transformer.encode)
        if rows_per_prompt > 1:
            encoded = jnp.repeat(encoded, rows_per_prompt, axis=0)
            prompts = jnp.repeat(prompts, rows_per_prompt, axis=0)

        def step(cache: Any, tokens: jax.Array, cross_cache: str = "read"):
            logits, variables = model.apply(
                {"params": params, "cache": cache}, encoded, prompts, tokens, tokens,
                enable_dropout=False, decode=True, max_decode_length=length,
                cross_cache=cross_cache, mutable=["cache"], method=Transformer.decode)
            return logits[:, -1, :].astype(jnp.float32), variables["cache"]

        rows = prompts.shape[0]
        tokens = jnp.ones((rows, length), jnp.int32)
        shapes = jax.eval_shape(lambda: model.init(
            jax.random.key(0), jnp.ones(prompts.shape, jnp.int32), tokens, tokens,
            enable_dropout=False, decode=True,
            max_decode_length=length, cross_cache="fill"))
        empty = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])
        logits, cache = step(empty, jnp.zeros((rows, 1), jnp.int32), "fill")
        return logits, cache, step

    def reorder_cache(self, cache: Any, rows: jax.Array) -> Any:
        """The self-attention cache with row i taken from row `rows[i]` (beam search keeps
        the beams it extends); the cross-attention cache is the same for a prompt's rows."""

        def take(path, x):
            if x.ndim < 4 or "cross" in jax.tree_util.keystr(path):  # indices; the prompt's
                return x
            return jnp.take(x, rows, axis=x.ndim - 4)  # [layers,] batch, length, heads, kv

        return jax.tree_util.tree_map_with_path(take, cache)

    @property
    def eos_id(self) -> int:
        return 1  # T5's vocabularies: 0 pad (and the decoder's start), 1 EOS

    @property
    def sequence_ids(self) -> SequenceIds | None:
        return None

    def model_flops_per_step(self, batch: int, inputs: int, targets: int) -> float:
        """Training FLOPs of one step: the matmuls of encoder (per input token), decoder
        and cross attention (per target token) and the output projection."""
        c = self.config
        emb, heads, hd, mlp = c.emb_dim, c.num_heads, c.head_dim, c.mlp_dim
        proj = 4 * emb * heads * hd                    # q, k, v, o
        ffn = (len(c.mlp_activations) + 1) * emb * mlp  # wi_* and wo
        cross = 2 * emb * heads * hd                   # cross-attention q, o (per target)
        cross_kv = 2 * emb * heads * hd                # its k, v (per input token)
        weights = batch * (inputs * (c.num_encoder_layers * (proj + ffn)
                                     + c.num_decoder_layers * cross_kv)
                           + targets * (c.num_decoder_layers * (proj + ffn + cross)
                                        + emb * c.vocab_size))
        attention = batch * (inputs * c.num_encoder_layers * 2 * inputs * heads * hd
                             + targets * c.num_decoder_layers * 2 * (targets + inputs)
                             * heads * hd)
        return _train_flops(weights, attention, c.lora is not None)


def _real_positions(real: jax.Array) -> jax.Array:
    """Each token's position counting only the real (non-pad) tokens before it, so pads
    inside a row (a right-padded prompt before its continuation) take no position."""
    return jnp.maximum(jnp.cumsum(real, axis=1) - 1, 0)


@dataclasses.dataclass(frozen=True)
class DecoderOnly:
    """LLaMA (`mtf.model.llama`) and BLOOM (`mtf.model.bloom`), which take the same calls:
    BOS (where the vocabulary has one), prompt and response in one causal sequence, packed
    examples kept apart by segment ids (0: padding) with positions reset per example.
    Scoring and decoding see the prompt as training does (`model_prompts`); generation
    stops at the config's EOS."""

    config: LlamaConfig | BloomConfig

    @property
    def batch_spec(self) -> BatchSpec:
        return DECODER_ONLY

    @property
    def network(self) -> type[Llama] | type[Bloom]:
        return Bloom if isinstance(self.config, BloomConfig) else Llama

    @property
    def layer_stacks(self) -> dict[str, int]:
        return {"decoder": self.config.num_layers}

    def with_layers(self, depths: dict[str, int]) -> LlamaConfig | BloomConfig:
        return self.config.replace(num_layers=depths["decoder"])

    def boxed_params(self, rng: jax.Array) -> Any:
        return self.network(self.config).init(rng, jnp.ones((1, 1), jnp.int32))["params"]

    def hidden_states(self, params: Any, batch: dict[str, jax.Array],
                      dropout_rng: jax.Array | None) -> jax.Array:
        """The final normed states [batch, length, emb] predicting each target token; an
        unpacked batch's padding (target 0) is its own segment 0."""
        spec = self.batch_spec
        inputs, targets = (batch[name] for name in spec.tokens)
        segments_name, positions_name = spec.packing
        segments = batch.get(segments_name, (targets > 0).astype(jnp.int32))
        return self.network(self.config).apply(
            {"params": params}, inputs, segments, batch.get(positions_name),
            return_hidden=True)

    @property
    def eos_id(self) -> int:
        return self.config.eos_token_id

    @property
    def sequence_ids(self) -> SequenceIds | None:
        return SequenceIds(self.config.bos_token_id, self.config.eos_token_id)

    def model_prompts(self, prompts: jax.Array) -> jax.Array:
        """Right-padded prompt ids as the training sequence begins them: a trailing EOS
        (seqio's `inputs` feature ends with one, for an encoder) dropped and BOS put first
        where the config has one (the decoder-only feature converter does the same)."""
        width = prompts.shape[1]
        length = jnp.sum(prompts > 0, axis=1)
        last = jnp.take_along_axis(prompts, jnp.maximum(length - 1, 0)[:, None], axis=1)[:, 0]
        drop = (last == self.config.eos_token_id) & (length > 0)
        at_last = jnp.arange(width)[None, :] == (length - 1)[:, None]
        prompts = jnp.where(drop[:, None] & at_last, 0, prompts)
        if self.config.bos_token_id is not None:
            bos = jnp.full((prompts.shape[0], 1), self.config.bos_token_id, prompts.dtype)
            prompts = jnp.concatenate([bos, prompts], axis=1)
        return prompts

    def model_flops_per_step(self, batch: int, inputs: int, targets: int) -> float:
        """Training FLOPs of one step over sequences of inputs + targets tokens."""
        c = self.config
        length = inputs + targets
        proj = 2 * c.emb_dim * (c.num_heads + c.num_kv_heads) * c.head_dim  # q, o; k, v
        weights = batch * length * (c.num_layers * (proj + c.mlp_matrices * c.emb_dim * c.mlp_dim)
                                    + c.emb_dim * c.vocab_size)
        attention = batch * length * c.num_layers * 2 * length * c.num_heads * c.head_dim
        return _train_flops(weights, attention, c.lora is not None)

    def choice_hidden_states(self, params: Any, prompts: jax.Array, row_prompt: jax.Array,
                             row_targets: jax.Array) -> jax.Array:
        """States [rows, length, emb] predicting each row's targets after its prompt: the
        right-padded prompt and the targets side by side, the pads between them left out by
        segment 0 and the positions counting real tokens only, so every row is exactly
        prompt + targets; the first target is predicted from the prompt's last token."""
        rows_prompt = self.model_prompts(prompts)[row_prompt]
        prompt_width = rows_prompt.shape[1]
        tokens = jnp.concatenate([rows_prompt, row_targets], axis=1)
        real = tokens > 0
        positions = _real_positions(real)
        hidden = self.network(self.config.for_inference).apply(
            {"params": params}, tokens, real.astype(jnp.int32), positions, return_hidden=True)
        prompt_length = jnp.sum(rows_prompt > 0, axis=1)
        step = jnp.arange(row_targets.shape[1])
        source = jnp.where(step[None] == 0, prompt_length[:, None] - 1,
                           prompt_width + step[None] - 1)
        return jnp.take_along_axis(hidden, jnp.maximum(source, 0)[:, :, None], axis=1)

    def start_decoding(self, params: Any, prompts: jax.Array, rows_per_prompt: int,
                       length: int) -> tuple[jax.Array, Any, DecodeStep]:
        """(logits of the first new token, the cache, the step). The right-padded prompts
        fill the first slots of a key/value cache (their pads never attended to); new
        tokens go to the slots after them, at positions counting on from each prompt's
        length. The cache carries which slots are filled and how many tokens were added."""
        prompts = self.model_prompts(prompts)
        if rows_per_prompt > 1:
            prompts = jnp.repeat(prompts, rows_per_prompt, axis=0)
        rows, width = prompts.shape
        total = width + length
        model = self.network(self.config.for_inference, cache_length=total)
        real = prompts > 0
        prompt_length = jnp.sum(real, axis=1)
        filled = jnp.zeros((rows, total), bool).at[:, :width].set(real)
        causal = jnp.arange(total)[None, :] <= jnp.arange(width)[:, None]
        bias = jnp.where(causal[None] & filled[:, None, :], 0.0, NEG_INF)[:, None]
        positions = _real_positions(real)
        shapes = jax.eval_shape(lambda: model.init(
            jax.random.key(0), jnp.ones(prompts.shape, jnp.int32), attention_bias=bias,
            positions=positions, cache_start=0))
        empty = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])
        logits, variables = model.apply(
            {"params": params, "cache": empty}, prompts, positions=positions,
            cache_start=0, attention_bias=bias.astype(self.config.activation_dtype),
            mutable=["cache"])
        first = jnp.take_along_axis(logits, jnp.maximum(prompt_length - 1, 0)[:, None, None],
                                    axis=1)[:, 0]
        cache = {"kv": variables["cache"], "filled": filled, "added": jnp.int32(0),
                 "prompt_length": prompt_length}

        def step(cache: Any, tokens: jax.Array) -> tuple[jax.Array, Any]:
            slot = width + cache["added"]
            filled = cache["filled"].at[:, slot].set(True)
            bias = jnp.where(filled, 0.0, NEG_INF)[:, None, None, :]
            logits, variables = model.apply(
                {"params": params, "cache": cache["kv"]}, tokens,
                positions=(cache["prompt_length"] + cache["added"])[:, None],
                cache_start=slot, attention_bias=bias.astype(self.config.activation_dtype),
                mutable=["cache"])
            return logits[:, -1, :].astype(jnp.float32), dict(
                cache, kv=variables["cache"], filled=filled, added=cache["added"] + 1)

        return first.astype(jnp.float32), cache, step

    def reorder_cache(self, cache: Any, rows: jax.Array) -> Any:
        """Row i of the cache taken from row `rows[i]` (keys and values, filled slots, the
        prompt's length); the count of added tokens is the same for every row."""

        def take(x):  # [layers,] batch, slots, kv heads, head_dim
            return jnp.take(x, rows, axis=x.ndim - 4)

        return dict(cache, kv=jax.tree.map(take, cache["kv"]),
                    filled=jnp.take(cache["filled"], rows, axis=0),
                    prompt_length=jnp.take(cache["prompt_length"], rows, axis=0))

    def output_projection(self, params: Any) -> tuple[jax.Array, str, float]:
        """The output embedding (or the token embedding, tied), unscaled, in the activation
        dtype (as HF's lm_head)."""
        if self.config.tie_word_embeddings:
            return params["token_embedder"]["embedding"].T, self.config.dtype, 1.0
        return params["logits_kernel"], self.config.dtype, 1.0


ModelConfig = T5Config | LlamaConfig | BloomConfig
_CONFIGS = {LlamaConfig.FAMILY: LlamaConfig, BloomConfig.FAMILY: BloomConfig}


def config_from_json(text: str) -> ModelConfig:
    """A model config saved by its `to_json` (checkpoints' config/metadata, adapter
    directories): the "family" key names its class; without one it is mT5's."""
    family = json.loads(text).get("family")
    if family is None:
        return T5Config.from_json(text)
    if family not in _CONFIGS:
        raise SettingError(f"unknown model family {family!r} in a saved config; known: "
                           f"{sorted(_CONFIGS)} and mT5 (no family key)")
    return _CONFIGS[family].from_json(text)


def text_ids(vocabulary: Any) -> int:
    """How many ids a seqio vocabulary encodes text to: its size less the T5 sentinel
    (extra) ids, which span corruption uses and prompted tasks never produce."""
    return int(getattr(vocabulary, "_base_vocab_size", vocabulary.vocab_size))


def check_vocabulary(config: ModelConfig, vocab_size: int, eos_id: int, vocabulary: str
                     ) -> None:
    """Refuses, naming both sides, a vocabulary the model cannot read: more ids than its
    embedding has rows (`vocab_size`: the ids text encodes to; seqio's T5 sentinels, which
    these tasks never produce, not counted), or an EOS other than the model's."""
    if vocab_size > config.vocab_size:
        raise SettingError(f"the vocabulary {vocabulary} has {vocab_size} ids but the model's "
                           f"embedding has {config.vocab_size} rows: use the model's own "
                           "tokenizer (or a model config with a larger vocab_size)")
    if eos_id != family_of(config).eos_id:
        raise SettingError(f"the vocabulary {vocabulary} ends sequences with id {eos_id} but "
                           f"the model's EOS is {family_of(config).eos_id}: use the model's "
                           "own tokenizer (or set eos_token_id in its config)")


def family_of(config: ModelConfig) -> ModelFamily:
    """The family whose network `config` describes."""
    if isinstance(config, T5Config):
        return EncoderDecoder(config)
    if isinstance(config, LlamaConfig | BloomConfig):
        return DecoderOnly(config)
    raise TypeError(f"no model family for {type(config).__name__}")
