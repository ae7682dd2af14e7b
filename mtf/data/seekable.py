"""A mixture stream that seeks to a position without replaying tokenisation (unpacked runs).

seqio samples a mixture with tf.data's sampler, so resuming at batch N means replaying
(reading, tokenising) every earlier example. Here the task choices come from seeded
fixed-size blocks of uniforms, so the number of examples each task gave up to any
position is computed in numpy, and each task skips its raw records before they are
tokenised. Exact only when every preprocessor maps one record to one example (true of
mtf's tasks; others fall back to skipping the seqio stream) and when unpacked (packing
windows would shift).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import seqio
import tensorflow as tf

from mtf.data import seqio_tasks
from mtf.errors import SettingError

BLOCK = 1 << 16
ONE_TO_ONE = (seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim,
              seqio_tasks.add_metadata)


def supported(provider: seqio.Task | seqio.Mixture) -> bool:
    """Whether every task of `provider` maps records to examples one to one."""
    return all(all(p in ONE_TO_ONE for p in task.preprocessors)
               for task in seqio_tasks.tasks_of(provider))


def mixture_rates(provider: seqio.Task | seqio.Mixture) -> list[float]:
    """The sampling rate of each of `tasks_of(provider)` (a task alone: 1)."""
    if isinstance(provider, seqio.Mixture):
        return [provider.get_rate(t) for t in seqio_tasks.tasks_of(provider)]
    return [1.0]


def cdf_of(rates: Sequence[float]) -> np.ndarray:
    rates = np.asarray(rates, np.float64)
    if (rates < 0).any() or rates.sum() <= 0:
        raise SettingError(f"mixture rates must be non-negative with a positive sum: {rates}")
    return np.cumsum(rates / rates.sum())


def block_choices(cdf: np.ndarray, seed: int, process_index: int, index: int) -> np.ndarray:
    """Task indices of block `index` (BLOCK examples) of this process's stream."""
    uniforms = np.random.default_rng([seed, process_index, index]).random(BLOCK)
    return np.minimum(np.searchsorted(cdf, uniforms, side="right"), len(cdf) - 1)


def consumed(rates: Sequence[float], seed: int, process_index: int, count: int) -> np.ndarray:
    """How many of the first `count` examples of this process's stream each task gave."""
    cdf = cdf_of(rates)
    out = np.zeros(len(cdf), np.int64)
    full, rest = divmod(count, BLOCK)
    for index in range(full):
        out += np.bincount(block_choices(cdf, seed, process_index, index), minlength=len(cdf))
    if rest:
        out += np.bincount(block_choices(cdf, seed, process_index, full)[:rest],
                           minlength=len(cdf))
    return out


def choices(rates: Sequence[float], seed: int, process_index: int, start: int) -> Iterator[int]:
    """Task indices of this process's stream from example `start` on."""
    cdf = cdf_of(rates)
    index, offset = divmod(start, BLOCK)
    while True:
        yield from block_choices(cdf, seed, process_index, index)[offset:].tolist()
        index, offset = index + 1, 0


def _task_stream(task: seqio.Task, split: str, lengths: Mapping[str, int], seed: int,
                 shuffle_buffer_size: int, skip: int, shard: seqio.ShardInfo
                 ) -> tf.data.Dataset:
    if task.source.supports_arbitrary_sharding:  # mtf's sources parse only their share
        ds = task.source.get_dataset(split=split, shuffle=False, shard_info=shard)
    else:
        ds = task.source.get_dataset(split=split, shuffle=False)
        if shard.num_shards > 1:
            ds = ds.shard(shard.num_shards, shard.index)
    ds = ds.repeat().shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    ds = ds.skip(skip)
    ds = task.preprocess_precache(ds, seed=seed)
    ds = task.preprocess_postcache(ds, sequence_length=lengths, seed=seed)
    # seqio's own checks and trimming, as Task.get_dataset applies them
    ds = task._validate_preprocessing(ds)  # noqa: SLF001
    return task._trim_output_features(ds, sequence_length=lengths)  # noqa: SLF001


def examples(provider: seqio.Task | seqio.Mixture, split: str, lengths: Mapping[str, int],
             seed: int, shuffle_buffer_size: int, start: int, shard: seqio.ShardInfo
             ) -> tf.data.Dataset:
    """This process's mixture stream of task examples, from its example `start` on."""
    tasks = seqio_tasks.tasks_of(provider)
    rates = mixture_rates(provider)
    skips = consumed(rates, seed, shard.index, start)
    streams = [_task_stream(t, split, lengths,
                            zlib.crc32(f"{seed}:{t.name}:{shard.index}".encode()) & 0x7FFFFFFF,
                            shuffle_buffer_size, int(n), shard)
               for t, n in zip(tasks, skips, strict=True)]
    if len(streams) == 1:
        return streams[0]
    picks = tf.data.Dataset.from_generator(
        lambda: choices(rates, seed, shard.index, start),
        output_signature=tf.TensorSpec((), tf.int64))
    return tf.data.Dataset.choose_from_datasets(streams, picks)
