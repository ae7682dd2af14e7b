"""Autoregressive decoding on the model's key/value cache: greedy, sampling, beam search.

Written here because the maintained decoders are tied to their own models (HF `generate`
to torch modules; T5X's `decoding.py` is not on PyPI and pins git heads); the beam search
follows T5X's (alive/finished beams, brevity penalty ((5 + length) / 6) ** alpha, early
stop when no alive beam can beat the worst finished one).

Conventions: the model family starts decoding (T5: token 0; decoder-only: after the
prompt) and names its EOS (T5: 1; LLaMA: its config's); the pad token 0 is never emitted.
A hypothesis that reaches `max_decode_length` without EOS ends there.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mtf import partitioning
from mtf.errors import SettingError
from mtf.model.family import DecodeStep, ModelConfig, ModelFamily, family_of

PAD_ID = 0
NEG_INF = -1.0e7  # finite, so sums of impossible scores stay ordered


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How to generate. temperature 0 is greedy; beam_size > 1 is beam search."""

    max_decode_length: int = 64
    beam_size: int = 1
    alpha: float = 0.6  # T5X's brevity penalty exponent (beam search only)
    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1: no nucleus filter
    num_samples: int = 1
    seed: int = 0
    min_decode_length: int = 0  # EOS is not allowed before this many tokens (HF's
    # min_new_tokens; benchmarks use it to generate a fixed number of tokens)

    def __post_init__(self) -> None:
        if self.max_decode_length < 1:
            raise SettingError(f"max_decode_length={self.max_decode_length} must be >= 1")
        if self.beam_size < 1:
            raise SettingError(f"beam_size={self.beam_size} must be >= 1")
        if self.temperature < 0:
            raise SettingError(f"temperature={self.temperature} must be >= 0 (0: greedy)")
        if self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
            raise SettingError(f"top_k={self.top_k} must be >= 0 and top_p={self.top_p} in "
                               "(0, 1]")
        if self.num_samples < 1:
            raise SettingError(f"num_samples={self.num_samples} must be >= 1")
        if self.beam_size > 1 and self.temperature > 0:
            raise SettingError("choose beam search (beam_size > 1) or sampling "
                               "(temperature > 0), not both")

    @property
    def outputs_per_input(self) -> int:
        return self.beam_size if self.beam_size > 1 else self.num_samples


@dataclasses.dataclass
class Decoded:
    """tokens [batch, n, max_decode_length] (EOS kept, then 0s); n = beams (best first) or
    samples. scores: the beam score (log-likelihood / brevity penalty), or for greedy and
    sampling the log-likelihood; log_likelihoods: the model's summed log-probabilities."""

    tokens: np.ndarray
    scores: np.ndarray
    log_likelihoods: np.ndarray


def until_eos(tokens: np.ndarray, eos_id: int) -> list[int]:
    """The generated ids before the first EOS (what the vocabulary decodes)."""
    out = []
    for t in np.asarray(tokens).tolist():
        if t == eos_id:
            break
        out.append(t)
    return out


def brevity_penalty(alpha: float, length: jax.Array | int) -> jax.Array:
    """T5X's length penalty: ((5 + length) / 6) ** alpha."""
    return jnp.power((5.0 + jnp.asarray(length, jnp.float32)) / 6.0, alpha)


def filter_logits(logits: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Logits outside the top-k, or outside the smallest set whose probability reaches
    top_p (the most likely token always stays), set to NEG_INF."""
    if top_k:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of the tokens ranked above
        keep_sorted = before < top_p
        keep = jnp.zeros_like(keep_sorted).at[
            jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep, logits, NEG_INF)
    return logits


def _no_early_eos(log_probs: jax.Array, i: jax.Array, min_length: int, eos: int
                  ) -> jax.Array:
    if not min_length:
        return log_probs
    return log_probs.at[:, eos].set(jnp.where(i < min_length, NEG_INF, log_probs[:, eos]))


def _log_probs(logits: jax.Array) -> jax.Array:
    """Log-probabilities with pad never chosen (the model's distribution, not renormalised)."""
    return jax.nn.log_softmax(logits).at[:, PAD_ID].set(NEG_INF)


def _sample(step: DecodeStep, logits: jax.Array, cache: Any, batch: int, cfg: DecodeConfig,
            rng: jax.Array, eos: int):
    """Greedy (temperature 0) or sampling: one token per row per step until all hit EOS
    (`logits`: the first token's, from the family's `start_decoding`)."""
    length = cfg.max_decode_length

    def choose(logits, key):
        if cfg.temperature == 0.0:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logits = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p)
        return jax.random.categorical(key, logits).astype(jnp.int32)

    def emit(i, logits, out, total, done, key):
        """Chooses and writes position i's token (pad for finished rows). Works on logits
        (choices are shift-invariant) and subtracts the log-normaliser only for the
        chosen token, so no [batch, vocab] log-probabilities are formed."""
        normaliser = jax.nn.logsumexp(logits, axis=-1)
        allowed = _no_early_eos(logits.at[:, PAD_ID].set(NEG_INF), i, cfg.min_decode_length,
                                eos)
        key, sub = jax.random.split(key)
        token = jnp.where(done, PAD_ID, choose(allowed, sub))
        total = total + jnp.where(done, 0.0, jnp.take_along_axis(
            allowed, token[:, None], axis=-1)[:, 0] - normaliser)
        out = jax.lax.dynamic_update_slice(out, token[:, None], (0, i))
        return token, out, total, done | (token == eos), key

    # Each step's distribution is used inside the iteration that computes it, so only the
    # chosen tokens cross iterations (not [batch, vocab] log-probabilities), and the loop
    # stops as soon as every row has ended.
    out = jnp.zeros((batch, length), jnp.int32)
    token, out, total, done, key = emit(jnp.int32(0), logits, out,
                                        jnp.zeros((batch,), jnp.float32),
                                        jnp.zeros((batch,), bool), rng)

    def body(carry):
        i, token, cache, out, total, done, key = carry
        logits, cache = step(cache, token[:, None])
        token, out, total, done, key = emit(i + 1, logits, out, total, done, key)
        return i + 1, token, cache, out, total, done, key

    def cond(carry):
        return (carry[0] < length - 1) & ~jnp.all(carry[5])

    _, _, _, out, total, _, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(0), token, cache, out, total, done, key))
    return out[:, None], total[:, None], total[:, None]


def _beam_search(family: ModelFamily, step: DecodeStep, logits: jax.Array, cache: Any,
                 batch: int, cfg: DecodeConfig):
    """T5X-style beam search over a cache already holding `beam_size` rows per example."""
    k, length, eos = cfg.beam_size, cfg.max_decode_length, family.eos_id
    log_probs = _log_probs(logits)
    vocab = log_probs.shape[-1]
    if 2 * k > k * vocab:
        raise SettingError(f"beam_size {k} needs a vocabulary of at least 2 tokens")
    max_penalty = brevity_penalty(cfg.alpha, length)

    def body(carry):
        (i, log_probs, cache, alive_seq, alive_lp, fin_seq, fin_score, fin_lp) = carry
        log_probs = _no_early_eos(log_probs, i, cfg.min_decode_length, eos)
        candidates = (alive_lp[:, :, None] + log_probs.reshape(batch, k, vocab))
        top_lp, top_index = jax.lax.top_k(candidates.reshape(batch, k * vocab), 2 * k)
        source, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
        seqs = jnp.take_along_axis(alive_seq, source[:, :, None], axis=1)
        seqs = jax.lax.dynamic_update_slice(seqs, token[:, :, None], (0, 0, i))
        ends = (token == eos) | (i == length - 1)
        new_score = jnp.where(ends, top_lp / brevity_penalty(cfg.alpha, i + 1), NEG_INF)
        new_lp = jnp.where(ends, top_lp, NEG_INF)
        all_score = jnp.concatenate([fin_score, new_score], axis=1)
        fin_score, keep = jax.lax.top_k(all_score, k)
        fin_seq = jnp.take_along_axis(jnp.concatenate([fin_seq, seqs], axis=1),
                                      keep[:, :, None], axis=1)
        fin_lp = jnp.take_along_axis(jnp.concatenate([fin_lp, new_lp], axis=1), keep, axis=1)
        alive_lp, chosen = jax.lax.top_k(jnp.where(token == eos, NEG_INF, top_lp), k)
        alive_seq = jnp.take_along_axis(seqs, chosen[:, :, None], axis=1)
        kept = jnp.take_along_axis(source, chosen, axis=1)  # each new beam's source beam
        cache = family.reorder_cache(cache, (jnp.arange(batch)[:, None] * k + kept).reshape(-1))
        next_token = jnp.take_along_axis(token, chosen, axis=1).reshape(batch * k, 1)
        logits, cache = step(cache, next_token)
        return (i + 1, _log_probs(logits), cache, alive_seq, alive_lp, fin_seq, fin_score, fin_lp)

    def cond(carry):
        i, alive_lp, fin_score = carry[0], carry[4], carry[6]
        best_alive = alive_lp[:, 0] / max_penalty  # no alive beam can score better later
        settled = jnp.all(jnp.min(fin_score, axis=1) > best_alive) if cfg.alpha >= 0 else False
        return (i < length) & ~settled

    alive_lp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))
    zeros = jnp.zeros((batch, k, length), jnp.int32)
    empty = jnp.full((batch, k), NEG_INF, jnp.float32)
    init = (jnp.int32(0), log_probs, cache, zeros, alive_lp, zeros, empty, empty)
    out = jax.lax.while_loop(cond, body, init)
    return out[5], out[6], out[7]


def decode_batch(params: Any, encoder_tokens: jax.Array, rng: jax.Array, *,
                 config: ModelConfig, decode: DecodeConfig) -> tuple[jax.Array, ...]:
    """(tokens [b, n, L], scores [b, n], log-likelihoods [b, n]) for one batch of inputs."""
    family = family_of(config)
    batch = encoder_tokens.shape[0]
    rows = decode.outputs_per_input  # every beam / sample gets its own cache rows
    logits, cache, step = family.start_decoding(params, encoder_tokens, rows,
                                                decode.max_decode_length)
    if decode.beam_size > 1:
        return _beam_search(family, step, logits, cache, batch, decode)
    tokens, scores, lls = _sample(step, logits, cache, batch * rows, decode, rng,
                                  family.eos_id)
    return (tokens.reshape(batch, rows, -1), scores.reshape(batch, rows),
            lls.reshape(batch, rows))


class Decoder:
    """`decode_batch` jitted on a mesh with the training rules (parameters sharded as in
    training, the batch over the data axes), compiled once per input shape."""

    def __init__(self, config: ModelConfig, decode: DecodeConfig, mesh: Mesh) -> None:
        self.config, self.decode, self.mesh = config, decode, mesh
        self.batch_sharding = partitioning.batch_sharding(mesh)
        replicated = NamedSharding(mesh, PartitionSpec())
        self._jitted = jax.jit(
            functools.partial(decode_batch, config=config, decode=decode),
            in_shardings=(partitioning.params_shardings(config, mesh), self.batch_sharding,
                          replicated),
            out_shardings=replicated)
        self._rng = jax.random.key(decode.seed)

    def __call__(self, params: Any, encoder_tokens: np.ndarray) -> Decoded:
        batch = encoder_tokens.shape[0]
        self._rng, key = jax.random.split(self._rng)
        with partitioning.mesh_context(self.mesh):
            tokens, scores, lls = self._jitted(
                params, partitioning.global_array(np.asarray(encoder_tokens, np.int32),
                                                  self.batch_sharding), key)
        tokens, scores, lls = (np.asarray(x)[:batch] for x in (tokens, scores, lls))
        return Decoded(tokens, scores, lls)
