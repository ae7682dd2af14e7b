"""Batches from a token cache through Grain: what the trainer reads when DATA_CACHE_DIR is set.

Each task's share of the cache (this process's contiguous slice, see
`token_cache.share`) is shuffled per epoch by Grain's index shuffle, and the mixture draws
its tasks with the seeded blocks the uncached stream uses (`seekable.block_choices`), so
the k-th example of a process's stream is found without reading any example before it.
Unpacked batches resume at batch N by starting at example N x batch. Packed batches go
through Grain's first-fit packer, whose state (where its packing window began in the
example stream, how many of the window's rows were used) is saved with each checkpoint;
resuming re-packs that one window.

The task features -> model features step is seqio's EncDecFeatureConverter (plus mtf's
per-token ids), or for a decoder-only model `decoder_only.DecoderOnlyFeatureConverter`,
written in numpy, since those run on tf.data only; tests hold each pair equal.
"""

from __future__ import annotations

import collections
import functools
import logging
import sys
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np
import seqio

from mtf.data import seekable, seqio_tasks, token_cache
from mtf.model import DECODER_ONLY
from mtf.model import ENCODER_DECODER as SPEC
from mtf.model.features import SequenceIds

_IDS = seqio_tasks.METADATA_FEATURES  # (language, task): the task features of the ids
# Threads that read and decode batches ahead of the trainer (reads release the GIL).
READ_THREADS = 4
PREFETCH_BATCHES = 8


class MixtureSelection(grain.transforms.DatasetSelectionMap):
    """Example index -> (task, index in that task's stream), from the seeded blocks of
    `seekable`: the same task sequence the uncached stream draws, at any index in O(1)
    reads (block counts are sums of random draws, computed once and kept)."""

    def __init__(self, rates: Sequence[float], seed: int, process_index: int) -> None:
        self._cdf = seekable.cdf_of(rates)
        self._seed, self._process = seed, process_index
        self._starts = {0: np.zeros(len(self._cdf), np.int64)}  # block -> examples before it
        self._blocks: collections.OrderedDict[int, tuple[np.ndarray, np.ndarray]] = (
            collections.OrderedDict())
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sys.maxsize

    def _choices(self, block: int) -> np.ndarray:
        return seekable.block_choices(self._cdf, self._seed, self._process, block)

    def _start(self, block: int) -> np.ndarray:
        known = max(b for b in self._starts if b <= block)
        counts = self._starts[known]
        for b in range(known, block):
            counts = counts + np.bincount(self._choices(b), minlength=len(self._cdf))
            self._starts[b + 1] = counts
        return counts

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """The block's task choices and each example's index in its task's stream."""
        if block in self._blocks:
            self._blocks.move_to_end(block)
            return self._blocks[block]
        picks = self._choices(block)
        order = np.argsort(picks, kind="stable")
        first = np.searchsorted(picks[order], np.arange(len(self._cdf)))
        ranks = np.empty_like(order)
        ranks[order] = np.arange(len(picks)) - first[picks[order]]
        found = (picks, self._start(block)[picks] + ranks)
        self._blocks[block] = found
        if len(self._blocks) > 4:
            self._blocks.popitem(last=False)
        return found

    def __getitem__(self, index: int) -> tuple[int, int]:
        block, offset = divmod(index, seekable.BLOCK)
        with self._lock:
            picks, positions = self._block(block)
        return int(picks[offset]), int(positions[offset])


def _example(lengths: Mapping[str, int], eos: Mapping[str, int], cached: dict[str, Any]
             ) -> dict[str, np.ndarray]:
    """A cached example as seqio's task features: cut to the run's length less one, EOS
    appended (`append_eos_after_trim`), per-token language and task ids beside the targets."""
    out = {k: np.append(cached[k][:lengths[k] - 1], np.int32(eos[k])).astype(np.int32)
           for k in token_cache.FEATURES}
    size = len(out["targets"])
    out["targets_language"] = np.full(size, cached["language_id"], np.int32)
    out["targets_task"] = np.full(size, cached["task_id"], np.int32)
    return out


def _shifted(targets: np.ndarray, segments: np.ndarray | None = None) -> np.ndarray:
    """seqio's autoregressive inputs: targets shifted right, 0 where a segment starts."""
    out = np.zeros_like(targets)
    out[:, 1:] = targets[:, :-1]
    if segments is not None:
        previous = np.zeros_like(segments)
        previous[:, 1:] = segments[:, :-1]
        out *= segments == previous
    return out


def _padded(examples: Sequence[dict[str, np.ndarray]], lengths: Mapping[str, int]
            ) -> dict[str, np.ndarray]:
    """[rows, length] int32 arrays of the named features, each example's values first,
    zeros after."""
    out = {k: np.zeros((len(examples), length), np.int32) for k, length in lengths.items()}
    for row, example in enumerate(examples):
        for key, array in out.items():
            array[row, :len(example[key])] = example[key]
    return out


def _stacked(rows: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Grain's packed rows (equal lengths) as [rows, length] int32 arrays."""
    return {k: np.stack([r[k] for r in rows]).astype(np.int32) for k in rows[0]}


def unpacked_features(lengths: Mapping[str, int], examples: Sequence[dict[str, np.ndarray]]
                      ) -> dict[str, np.ndarray]:
    """seqio's EncDecFeatureConverter(pack=False) with mtf's per-token ids, for a batch."""
    padded = _padded(examples, {k: lengths["targets" if k in _IDS else k]
                                for k in (*token_cache.FEATURES, *_IDS)})
    targets = padded["targets"]
    encoder_inputs, decoder_inputs, _ = SPEC.tokens
    return {encoder_inputs: padded["inputs"], SPEC.targets: targets,
            decoder_inputs: _shifted(targets),
            SPEC.loss_weights: (targets > 0).astype(np.int32),
            SPEC.language: padded[_IDS[0]], SPEC.task: padded[_IDS[1]]}


def packed_features(rows: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Grain's packed rows as seqio's EncDecFeatureConverter(pack=True) gives them."""
    stacked = _stacked(rows)
    targets, segments = stacked["targets"], stacked["targets_segment_ids"]
    encoder_inputs, decoder_inputs, _ = SPEC.tokens
    encoder_segments, decoder_segments, encoder_positions, decoder_positions = SPEC.packing
    return {encoder_inputs: stacked["inputs"],
            encoder_segments: stacked["inputs_segment_ids"],
            encoder_positions: stacked["inputs_positions"],
            SPEC.targets: targets,
            decoder_inputs: _shifted(targets, segments),
            SPEC.loss_weights: (targets > 0).astype(np.int32),
            decoder_segments: segments,
            decoder_positions: stacked["targets_positions"],
            SPEC.language: stacked[_IDS[0]], SPEC.task: stacked[_IDS[1]]}


def decoder_only_sequence(sequence_ids: SequenceIds, loss_on_prompt: bool,
                          example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """An example's task features as one decoder-only sequence, shifted, with its loss
    weights and per-token ids: `DecoderOnlyFeatureConverter._sequence` in numpy."""
    prompt, response = example["inputs"], example["targets"]
    if len(prompt) and prompt[-1] == sequence_ids.eos_id:
        prompt = prompt[:-1]
    if sequence_ids.bos_id is not None:
        prompt = np.concatenate([[sequence_ids.bos_id], prompt])
    sequence = np.concatenate([prompt, response]).astype(np.int32)
    on_response = np.concatenate([np.zeros(len(prompt)), np.ones(len(response))])
    weights = np.ones(len(sequence)) if loss_on_prompt else on_response
    input_tokens, target_tokens = DECODER_ONLY.tokens
    out = {input_tokens: sequence[:-1], target_tokens: sequence[1:],
           DECODER_ONLY.loss_weights: weights[1:].astype(np.int32)}
    for task_feature, name in zip(_IDS, DECODER_ONLY.ids, strict=True):
        ids = example[task_feature]
        fill = np.full(len(prompt), ids[0]) if loss_on_prompt else np.zeros(len(prompt))
        out[name] = np.concatenate([fill, ids])[1:].astype(np.int32)
    return out


def unpacked_sequences(length: int, sequences: Sequence[dict[str, np.ndarray]]
                       ) -> dict[str, np.ndarray]:
    """A batch of decoder-only sequences padded to `length`."""
    return _padded(sequences, dict.fromkeys(sequences[0], length))


def packed_sequences(rows: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Grain's packed rows of decoder-only sequences as the converter packs them: one
    segment id and position per token (those of the targets)."""
    stacked = _stacked(rows)
    names = (*DECODER_ONLY.tokens, DECODER_ONLY.loss_weights, *DECODER_ONLY.ids)
    segments, positions = DECODER_ONLY.packing
    return {**{k: stacked[k] for k in names},
            segments: stacked[f"{DECODER_ONLY.targets}_segment_ids"],
            positions: stacked[f"{DECODER_ONLY.targets}_positions"]}


def task_seed(seed: int, task_name: str, process_index: int) -> int:
    return zlib.crc32(f"{seed}:{task_name}:{process_index}".encode()) & 0x7FFFFFFF


def examples(cache: token_cache.TokenCache, provider: seqio.Task | seqio.Mixture,
             lengths: Mapping[str, int], seed: int, process_index: int, process_count: int
             ) -> grain.MapDataset:
    """This process's endless, randomly accessible stream of task examples."""
    tasks = seqio_tasks.tasks_of(provider)
    parents = [grain.MapDataset.source(cache.source(t.name, process_index, process_count))
               .shuffle(seed=task_seed(seed, t.name, process_index)) for t in tasks]
    eos = {k: tasks[0].output_features[k].vocabulary.eos_id for k in token_cache.FEATURES}
    selection = MixtureSelection(seekable.mixture_rates(provider), seed, process_index)
    return grain.MapDataset.select_from_datasets(parents, selection).map(
        functools.partial(_example, lengths, eos))


class CachedBatches(Iterator[dict[str, np.ndarray]]):
    """This process's batches; `state()` is what a checkpoint keeps to resume it exactly."""

    def __init__(self, cache: token_cache.TokenCache, provider: seqio.Task | seqio.Mixture,
                 lengths: Mapping[str, int], pack: bool, seed: int, local_batch: int,
                 position: int, process_index: int, process_count: int,
                 state: dict[str, Any] | None = None,
                 decoder_only: SequenceIds | None = None, loss_on_prompt: bool = False
                 ) -> None:
        stream = examples(cache, provider, lengths, seed, process_index, process_count)
        options = grain.ReadOptions(num_threads=READ_THREADS,
                                    prefetch_buffer_size=PREFETCH_BATCHES)
        self.pack = pack
        if decoder_only is None:
            unpacked = functools.partial(unpacked_features, lengths)
            length_struct = {"inputs": lengths["inputs"], "targets": lengths["targets"],
                             **{k: lengths["targets"] for k in _IDS}}
            packed_batch = packed_features
        else:  # one sequence per example, as long as inputs + targets
            stream = stream.map(functools.partial(decoder_only_sequence, decoder_only,
                                                  loss_on_prompt))
            length = DECODER_ONLY.length(DECODER_ONLY.targets, lengths)
            unpacked = functools.partial(unpacked_sequences, length)
            length_struct = {k: length for k in (*DECODER_ONLY.tokens,
                                                 DECODER_ONLY.loss_weights,
                                                 *DECODER_ONLY.ids)}
            packed_batch = packed_sequences
        if not pack:
            batched = stream.batch(local_batch, drop_remainder=True, batch_fn=unpacked)
            self._iterator = iter(batched.slice(slice(position, None)).to_iter_dataset(options))
            return
        # Examples are read in order here (a read is ~0.1 ms; Grain's per-element thread
        # prefetch would cost more in bookkeeping), packed, then whole batches are made
        # ahead in a thread; the state is that of the last batch handed out.
        packed = grain.experimental.FirstFitPackIterDataset(
            stream.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)),
            length_struct=length_struct, num_packing_bins=local_batch, shuffle_bins=False)
        self._iterator = iter(grain.experimental.ThreadPrefetchIterDataset(
            packed.batch(local_batch, drop_remainder=True, batch_fn=packed_batch),
            prefetch_buffer_size=PREFETCH_BATCHES))
        if state is not None:
            self._iterator.set_state(state)
        elif position:
            logging.warning("no packing state saved for this process's cached stream: "
                            "replaying %d batches to reach the position", position)
            for _ in range(position):
                next(self._iterator)

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def state(self) -> dict[str, Any] | None:
        """Packed: the packer's state (unpacked streams resume from the batch count)."""
        return self._iterator.get_state() if self.pack else None
