"""Rank classification: the log-likelihood of every answer choice given the prompt.

The mT0 paper's rule (T5X's `score_batch`, t-zero's evaluator): sum the log-probabilities
of the choice's tokens followed by EOS; the prediction is the best-scoring choice. Each
prompt is encoded once and its encoding shared by its choices (rows), so an example with
four choices costs one encoder pass and four decoder passes; choice counts and lengths
may differ within a batch.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mtf import losses, partitioning
from mtf.errors import SettingError
from mtf.model import ModelConfig
from mtf.model.family import family_of


def score_rows(params: Any, encoder_tokens: jax.Array, row_example: jax.Array,
               row_targets: jax.Array, *, config: ModelConfig, chunks: int = 1
               ) -> tuple[jax.Array, jax.Array]:
    """(summed log-likelihood, token count) of each row's targets [rows, length] given the
    prompt of example `row_example[r]`; rows of all-0 targets score 0."""
    family = family_of(config)
    hidden = family.choice_hidden_states(params, encoder_tokens, row_example, row_targets)
    kernel, dtype, scale = family.output_projection(params)
    weights = (row_targets > 0).astype(jnp.float32)
    _, per_token, _ = losses.fused_cross_entropy(
        hidden, kernel, row_targets, weights,
        losses.ChunkedLoss(chunks=chunks, compute_dtype=dtype, scale=scale))
    return -jnp.sum(per_token * weights, axis=-1), jnp.sum(weights, axis=-1)


@dataclasses.dataclass
class Scored:
    """Per example: the score of each choice (summed, or per token when normalised) and the
    prediction (argmax)."""

    scores: list[list[float]]
    predictions: list[int]


class Scorer:
    """`score_rows` jitted on a mesh with the training rules; examples are packed into
    fixed-size batches (`batch_size` prompts, `rows` choices) so it compiles once."""

    def __init__(self, config: ModelConfig, mesh: Mesh, batch_size: int, input_length: int,
                 target_length: int, rows: int, chunks: int = 1) -> None:
        self.batch_size, self.input_length, self.target_length = (batch_size, input_length,
                                                                  target_length)
        self.rows, self.mesh = rows, mesh
        data = partitioning.batch_sharding(mesh)
        self._shardings = (data, NamedSharding(mesh, PartitionSpec(data.spec[0])), data)
        self._jitted = jax.jit(functools.partial(score_rows, config=config, chunks=chunks),
                               in_shardings=(partitioning.params_shardings(config, mesh),
                                             *self._shardings),
                               out_shardings=NamedSharding(mesh, PartitionSpec()))

    def score(self, params: Any, prompts: Sequence[Sequence[int]],
              choices: Sequence[Sequence[Sequence[int]]], length_normalized: bool = False
              ) -> Scored:
        """prompts: token ids (EOS included); choices: per prompt, each choice's token ids
        (EOS included). Longer sequences than the scorer's lengths are an error here: the
        caller truncates and counts (see `evaluation`)."""
        if len(prompts) != len(choices):
            raise SettingError(f"{len(prompts)} prompts but {len(choices)} choice lists")
        scores: list[list[float]] = []
        start = 0
        while start < len(prompts):
            end, used = start, 0
            while (end < len(prompts) and end - start < self.batch_size
                   and used + len(choices[end]) <= self.rows):
                used += len(choices[end])
                end += 1
            if end == start:
                raise SettingError(f"an example has {len(choices[start])} answer choices; "
                                   f"the scorer holds {self.rows} per batch")
            scores += self._score_batch(params, prompts[start:end], choices[start:end],
                                        length_normalized)
            start = end
        return Scored(scores, [int(np.argmax(s)) for s in scores])

    def _score_batch(self, params, prompts, choices, length_normalized) -> list[list[float]]:
        enc = np.zeros((self.batch_size, self.input_length), np.int32)
        row_example = np.zeros((self.rows,), np.int32)
        targets = np.zeros((self.rows, self.target_length), np.int32)
        row = 0
        for i, (prompt, options) in enumerate(zip(prompts, choices, strict=True)):
            _put(enc, i, prompt, "prompt")
            for option in options:
                row_example[row] = i
                _put(targets, row, option, "answer choice")
                row += 1
        with partitioning.mesh_context(self.mesh):
            sums, counts = self._jitted(params, *(
                partitioning.global_array(x, s) for x, s in zip(
                    (enc, row_example, targets), self._shardings, strict=True)))
        sums, counts = np.asarray(sums), np.asarray(counts)
        if length_normalized:
            sums = sums / np.maximum(counts, 1)
        out, row = [], 0
        for options in choices:
            out.append([float(v) for v in sums[row:row + len(options)]])
            row += len(options)
        return out


def _put(array: np.ndarray, row: int, tokens: Sequence[int], what: str) -> None:
    if len(tokens) > array.shape[1]:
        raise SettingError(f"a {what} of {len(tokens)} tokens does not fit the length "
                           f"{array.shape[1]}")
    array[row, :len(tokens)] = tokens
