"""seqio task/mixture -> feature converter -> per-process numpy batches at a position.

The stream is a pure function of (mixture, lengths, seed, process index/count), and its
position is the number of batches consumed, saved with every checkpoint: a resumed run
sees exactly the examples the uninterrupted run would have. With DATA_CACHE_DIR (a token
cache, `python -m mtf.tasks cache`) the training stream is read through Grain from the
cache: any position in O(1), packed runs too, with their packer state saved beside the
batch count (cached_stream.py). Without one, records are read and tokenised as the run
goes: unpacked runs of one-to-one tasks (mT0's recipe) skip records before tokenising
them (seekable.py); packed runs skip batches of the seqio stream, replaying it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from typing import Any

import gin
import numpy as np
import seqio
import tensorflow as tf

from mtf.data import cached_stream, records, seekable, seqio_tasks, token_cache
from mtf.data.decoder_only import DecoderOnlyFeatureConverter
from mtf.errors import SettingError
from mtf.model import DECODER_ONLY
from mtf.model import ENCODER_DECODER as SPEC
from mtf.model.features import SequenceIds

_IDS = seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
# task feature -> batch feature: the per-token ids, packed beside the targets they describe
METADATA_MODEL_FEATURES = dict(zip(seqio_tasks.METADATA_FEATURES, SPEC.ids, strict=True))
DECODER_ONLY_METADATA = dict(zip(seqio_tasks.METADATA_FEATURES, DECODER_ONLY.ids, strict=True))


class MetadataFeatureConverter(seqio.EncDecFeatureConverter):
    """T5X's encoder-decoder features plus per-token language and task ids.

    seqio's pass-through features refuse packing, so the ids are task features here and
    are packed and padded like the targets (0 in padding).
    """

    TASK_FEATURES = {**seqio.EncDecFeatureConverter.TASK_FEATURES,
                     **{k: _IDS for k in METADATA_MODEL_FEATURES}}
    MODEL_FEATURES = {**seqio.EncDecFeatureConverter.MODEL_FEATURES,
                      **{v: _IDS for v in METADATA_MODEL_FEATURES.values()}}

    def _convert_example(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = dict(super()._convert_example(features))
        out.update({v: features[k] for k, v in METADATA_MODEL_FEATURES.items()})
        return out

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                  ) -> dict[str, int]:
        out = dict(super().get_model_feature_lengths(task_feature_lengths))
        out.update({v: task_feature_lengths["targets"] for v in METADATA_MODEL_FEATURES.values()})
        return out


def feature_converter(pack: bool, decoder_only: SequenceIds | None = None,
                      loss_on_prompt: bool = False, metadata: bool = True
                      ) -> seqio.FeatureConverter:
    """The converter to the model family's batch: encoder-decoder (T5X's features), or one
    sequence per example for a decoder-only model (`decoder_only`: its BOS and EOS);
    `metadata`: the tasks carry per-token language and task ids."""
    if decoder_only is not None:
        return DecoderOnlyFeatureConverter(
            pack, decoder_only.bos_id, decoder_only.eos_id, loss_on_prompt,
            DECODER_ONLY_METADATA if metadata else None)
    if loss_on_prompt:
        raise SettingError("LOSS_ON_PROMPT is for decoder-only models (an encoder-decoder "
                           "reads the prompt in its encoder and predicts the targets only)")
    return MetadataFeatureConverter(pack=pack) if metadata else seqio.EncDecFeatureConverter(
        pack=pack)


def task_feature_lengths(lengths: Mapping[str, int]) -> dict[str, int]:
    for key in ("inputs", "targets"):
        if key not in lengths:
            raise SettingError(f"TASK_FEATURE_LENGTHS needs {key!r}; got {dict(lengths)}")
    out = {"inputs": int(lengths["inputs"]), "targets": int(lengths["targets"])}
    out.update({name: out["targets"] for name in seqio_tasks.METADATA_FEATURES})
    return out


def has_metadata(provider: seqio.Task | seqio.Mixture) -> bool:
    return all(set(seqio_tasks.METADATA_FEATURES) <= set(t.output_features)
               for t in seqio_tasks.tasks_of(provider))


@gin.configurable(module="mtf.data")
@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What the train loop reads: a seqio task or mixture at fixed lengths."""

    mixture_or_task_name: str = "mini_xp3"
    task_feature_lengths: Mapping[str, int] = dataclasses.field(
        default_factory=lambda: {"inputs": 128, "targets": 32})
    split: str = "train"
    pack: bool = True
    shuffle: bool = True
    seed: int = 0
    shuffle_buffer_size: int = 10_000
    use_cached: bool = False
    seekable: bool = True  # unpacked runs resume without replaying (see seekable.py)
    skip_bad_records: bool = False  # count and skip malformed records instead of stopping
    cache_dir: str | None = None  # DATA_CACHE_DIR: the token cache the train stream reads
    loss_on_prompt: bool = False  # LOSS_ON_PROMPT: decoder-only runs train on the prompt too
    # set by the run from its model (RunConfig): a decoder-only model's BOS and EOS, and
    # the batches are then one sequence per example (data/decoder_only.py)
    decoder_only: SequenceIds | None = None


def provider(config: DataConfig) -> seqio.Task | seqio.Mixture:
    """The configured task or mixture, or an error saying how to register it."""
    try:
        found = seqio.get_mixture_or_task(config.mixture_or_task_name)
    except ValueError as e:
        raise SettingError(f"MIXTURE_OR_TASK_NAME={config.mixture_or_task_name!r} is not "
                           "registered; is `import tasks` in the gin file, and is XP3_DIR set "
                           f"for xP3? ({e})") from None
    # Load the vocabularies here, eagerly: inside tf.data a missing one surfaces as a
    # TensorFlow staging error instead of mtf's message naming MTF_VOCABULARY.
    for feature in found.output_features.values():
        _ = feature.vocabulary.vocab_size
    return found


def vocabulary_file(config: DataConfig) -> str | None:
    """The SentencePiece model of the targets (recorded with checkpoints for export)."""
    vocabulary = provider(config).output_features["targets"].vocabulary
    return getattr(vocabulary, "source", None) or getattr(
        vocabulary, "sentencepiece_model_file", None)


def uses_seekable_stream(config: DataConfig) -> bool:
    return (config.seekable and not config.pack and config.shuffle and not config.use_cached
            and seekable.supported(provider(config)))


def uses_token_cache(config: DataConfig) -> bool:
    """The training stream (shuffled) reads the cache; evaluation streams read records."""
    return bool(config.cache_dir) and config.shuffle


def token_cache_of(config: DataConfig) -> token_cache.TokenCache | None:
    """The configured cache, checked against the run (None without one): a stale or
    damaged cache is refused here, before anything is compiled."""
    if not uses_token_cache(config):
        return None
    return token_cache.open_cache(config.cache_dir, provider(config), config.split,
                                  task_feature_lengths(config.task_feature_lengths))


def dataset(config: DataConfig, batch_size: int, process_index: int = 0,
            process_count: int = 1, position: int = 0) -> tf.data.Dataset:
    """This process's share of the global batches (batch_size is the global size), from
    batch `position` on."""
    if batch_size % process_count:
        raise SettingError(f"BATCH_SIZE {batch_size} is not divisible by the {process_count} "
                           "processes; choose a multiple")
    provider_ = provider(config)
    lengths = task_feature_lengths(config.task_feature_lengths)
    metadata = has_metadata(provider_)
    converter = feature_converter(config.pack, config.decoder_only, config.loss_on_prompt,
                                  metadata)
    if not metadata:
        lengths = {k: lengths[k] for k in ("inputs", "targets")}
    local_batch = batch_size // process_count
    if uses_seekable_stream(config):
        ds = seekable.examples(provider_, config.split, lengths, config.seed,
                               config.shuffle_buffer_size, position * local_batch,
                               seqio.ShardInfo(process_index, process_count))
        return converter(ds, lengths).batch(local_batch, drop_remainder=True)
    ds = seqio.get_dataset(
        provider_.name, task_feature_lengths=lengths, dataset_split=config.split,
        shuffle=config.shuffle, num_epochs=None, seed=config.seed,
        shard_info=seqio.ShardInfo(process_index, process_count),
        use_cached=config.use_cached, feature_converter=converter)
    ds = ds.batch(local_batch, drop_remainder=True)
    return ds.skip(position) if position else ds


class Batches(Iterator[dict[str, np.ndarray]]):
    """This process's numpy batches; `state()`: what a checkpoint must keep, beyond the batch
    count, to resume this stream (None: the count is enough)."""

    def __init__(self, iterator: Iterator[dict[str, np.ndarray]]) -> None:
        self._iterator = iterator

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def state(self) -> dict[str, Any] | None:
        state = getattr(self._iterator, "state", None)
        return state() if state else None


def batches(config: DataConfig, batch_size: int, position: int = 0, process_index: int = 0,
            process_count: int = 1, state: dict[str, Any] | None = None) -> Batches:
    """Numpy batches starting after `position` batches (the resume point); `state` is what
    `Batches.state()` gave at that point (packed cached streams)."""
    cache = token_cache_of(config)
    if cache is None:
        ds = dataset(config, batch_size, process_index, process_count, position)
        return Batches(record_errors_unwrapped(ds.prefetch(2).as_numpy_iterator()))
    if batch_size % process_count:
        raise SettingError(f"BATCH_SIZE {batch_size} is not divisible by the {process_count} "
                           "processes; choose a multiple")
    return Batches(cached_stream.CachedBatches(
        cache, provider(config), task_feature_lengths(config.task_feature_lengths),
        config.pack, config.seed, batch_size // process_count, position, process_index,
        process_count, state, config.decoder_only, config.loss_on_prompt))


def record_errors_unwrapped(iterator: Iterator[dict[str, np.ndarray]]
                             ) -> Iterator[dict[str, np.ndarray]]:
    """tf.data reports a reader's RecordError as a TensorFlow error with a traceback inside
    its message; raise the RecordError itself (file, line, fix) instead."""
    while True:
        message = None
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as e:
            found = re.search(r"(?:RecordError|LanguageError|TemplateError): (.+)", e.message)
            if found is None:
                raise
            message = found[1].strip()
        if message is not None:
            # Raised outside the `except`: the TensorFlow error (and the frames it holds)
            # must not stay attached, or tf.data's threads block the interpreter's exit.
            del iterator
            raise records.RecordError(message)
        yield batch
