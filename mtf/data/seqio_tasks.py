"""seqio glue: tasks over Python record streams, with splits and per-example metadata.

Records come from generators (files read through `mtf.storage`, so local and gs:// paths
work) rather than seqio's file sources so that every bad line is reported with its file
and line number, which tf.data's readers cannot do.
"""

from __future__ import annotations

import copy
import functools
import inspect
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import seqio
import tensorflow as tf

from mtf.data import languages, mixing, templates
from mtf.data import records as records_lib
from mtf.errors import SettingError

METADATA_FEATURES = ("targets_language", "targets_task")
SPLITS = ("train", "validation")



def task_id(name: str) -> int:
    """A stable positive int32 for a task name (CRC-32); `task_names` maps it back."""
    return (zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF) or 1


def tasks_of(provider: seqio.Task | seqio.Mixture) -> list[seqio.Task]:
    """A mixture's tasks, or the task itself."""
    return list(provider.tasks) if isinstance(provider, seqio.Mixture) else [provider]


def handle_bad_records(provider: seqio.Task | seqio.Mixture, skip: bool,
                       report: records_lib.SkipReport) -> None:
    """Hands a run's bad-record policy to every task it reads: skip (and count in the run's
    `report`) when the run asks (gin SKIP_BAD_RECORDS) or the task was registered so."""
    for task in tasks_of(provider):
        source = task.source
        if isinstance(source, RecordSource):
            source.bad_records = records_lib.BadRecords(skip or source.skips_bad_records,
                                                        report)


def task_names(provider: seqio.Task | seqio.Mixture) -> dict[int, str]:
    """id -> name of every task id the examples of `provider` carry (declared when each
    task was registered), for per-task metrics; two names with one id are an error."""
    out: dict[int, str] = {}
    for task in tasks_of(provider):
        names = getattr(task.source, "task_names", (task.name,))
        for name in names:
            value = task_id(name)
            if out.setdefault(value, name) != name:
                raise SettingError(f"task names {name!r} and {out[value]!r} share the id "
                                   f"{value}; rename one")
    return out


def carved_split(key: str, validation_fraction: float) -> str:
    """Deterministic train/validation assignment by content hash (same text, same split)."""
    bucket = zlib.crc32(key.encode("utf-8")) % 10_000
    return "validation" if bucket < validation_fraction * 10_000 else "train"


def split_of(example: Mapping[str, Any], validation_fraction: float) -> str:
    """The example's own `split` (dev/val count as validation), else carved by content."""
    own = example.get("split") or ""
    if own:
        return "validation" if own in ("dev", "val") else own
    return carved_split(example["inputs"] + "\x00" + example["targets"], validation_fraction)


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    ids = seqio.PassThroughVocabulary(size=0)
    return {
        "inputs": seqio.Feature(vocabulary, add_eos=True, required=True),
        "targets": seqio.Feature(vocabulary, add_eos=True, required=True),
        "targets_language": seqio.Feature(ids, add_eos=False, required=False, dtype=tf.int32),
        "targets_task": seqio.Feature(ids, add_eos=False, required=False, dtype=tf.int32),
    }


def prompted_examples(records: Iterable[Mapping[str, Any]], name: str,
                      prompts: Sequence[templates.Template] | None, language: str | None,
                      bad_records: records_lib.BadRecords | None = None
                      ) -> Iterable[dict[str, Any]]:
    """(inputs, targets, language, template) examples: records through every template.

    With `prompts=None` the records are already prompted (`inputs`/`targets`, xP3).
    A record's own `language` field wins over the task's language (xP3x). A record with an
    unknown language or that a template cannot render stops the run, or is skipped and
    counted when the `bad_records` policy says so.
    """
    policy = bad_records or records_lib.STOP
    tid = task_id(name)
    for record in records:
        where = record.get("_where", f"a record of task {name}")
        try:
            lang = languages.normalize(record.get("language") or language or "")
            pairs = ([(record.get("template", ""), record["inputs"], record["targets"])]
                     if prompts is None else
                     [(t.id + ("" if t.language == "en" else f"@{t.language}"),
                       *t.apply(record)) for t in prompts])
        except (languages.LanguageError, templates.TemplateError) as e:
            if not policy.skip:
                raise records_lib.RecordError(f"{where}: {e}") from None
            policy.report.skip(name, f"{where}: {e}")
            continue
        for template_id, inputs, targets in pairs:
            yield {"inputs": inputs, "targets": targets, "language": lang,
                   "template": template_id, "language_id": languages.language_id(lang),
                   "task_id": tid, "split": record.get("split", "")}


_SIGNATURE = {
    "inputs": tf.TensorSpec((), tf.string), "targets": tf.TensorSpec((), tf.string),
    "language": tf.TensorSpec((), tf.string), "template": tf.TensorSpec((), tf.string),
    "language_id": tf.TensorSpec((), tf.int32), "task_id": tf.TensorSpec((), tf.int32),
}


_CHOICE_SIGNATURE = {
    **_SIGNATURE, "answer_choices": tf.TensorSpec((None,), tf.string),
    "label": tf.TensorSpec((), tf.int32),
}


def choice_examples(examples: Iterable[Mapping[str, Any]], name: str) -> Iterable[dict]:
    """Rank-classification examples as task examples: targets = the right choice."""
    tid = task_id(name)
    for e in examples:
        yield {**e, "targets": e["answer_choices"][e["label"]], "task_id": tid,
               "language_id": languages.language_id(e["language"]), "split": "validation"}


Shard = tuple[int, int]  # (index, count): this process's share of a task's records


class RecordSource(seqio.DataSource):
    """A seqio source over `examples_fn(bad_records)`; a record's `split` field wins, else
    carved. `bad_records` is the policy of the run reading the task (`handle_bad_records`;
    until one does, the task's registered one).

    sharded_reader: `examples_fn(shard, bad_records)` reads and parses only its share of the records
    (xP3's jsonl files: see `records.jsonl_records`); otherwise every record is generated
    and the split's examples are dealt out by position (small and in-memory tasks).
    in_memory: build the split's examples once into tensors (fast, for small tasks such as
    the mini-xP3); otherwise stream them through a Python generator (any size).
    files: the record files the task reads (named in a token cache's manifest, so a cache
    built from other contents is refused).
    """

    def __init__(self, examples_fn: Callable[..., Iterable[Mapping[str, Any]]],
                 validation_fraction: float = 0.05, splits: Sequence[str] = SPLITS,
                 in_memory: bool = False, choices: bool = False, sharded_reader: bool = False,
                 files: Callable[[], Sequence[str]] | Sequence[str] = (),
                 task_names: Sequence[str] = (), size: Callable[[], int] | None = None,
                 skip_bad_records: bool = False) -> None:
        if in_memory and choices:
            raise SettingError("rank-classification tasks stream (their answer lists are "
                               "ragged); register them with in_memory=False")
        super().__init__(splits=list(splits))
        self._examples_fn = examples_fn
        self._validation_fraction = validation_fraction
        self._in_memory = in_memory
        self._sharded_reader = sharded_reader
        self._files = files
        self.task_names = tuple(task_names)
        self.skips_bad_records = skip_bad_records  # as registered; a run may add skipping
        self.bad_records = records_lib.BadRecords(skip=skip_bad_records)
        self._size = functools.cache(size) if size else None
        self.signature = _CHOICE_SIGNATURE if choices else _SIGNATURE
        self.limit: int | None = None  # the first so many training examples only (`first`)

    def first(self, limit: int) -> RecordSource:
        """The same source over its first `limit` training examples (validation unchanged)."""
        if self._sharded_reader:
            raise SettingError("a task read in shards (xP3's files) has no one order of its "
                               "examples to take the first of; limit a task read whole")
        limited = copy.copy(self)
        limited.limit = limit
        limited._size = None if self._size is None else functools.cache(
            lambda: min(limit, self._size()))
        return limited

    def train_size(self) -> int:
        """The number of training examples (for mixing rates), counted once."""
        if self._size is None:
            raise SettingError("this task registered no example count (register_task's "
                               "`size`): mix it with explicit rates")
        return self._size()

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return True

    def list_shards(self, split: str) -> Sequence[str]:
        return [split]

    def files(self) -> list[str]:
        return list(self._files() if callable(self._files) else self._files)

    def examples(self, split: str, shard: Shard = (0, 1)) -> Iterator[dict[str, Any]]:
        """This shard's examples of `split`, as Python values (the signature's fields)."""
        index, count = shard
        if self._sharded_reader:
            stream = self._examples_fn(shard, self.bad_records)
        else:
            stream = self._examples_fn(self.bad_records)
        position = 0
        limit = self.limit if split == "train" else None
        for example in stream:
            if split_of(example, self._validation_fraction) != split:
                continue
            if limit is not None and position >= limit:
                return
            if self._sharded_reader or position % count == index:
                yield {k: example[k] for k in self.signature}
            position += 1

    def get_dataset(self, split: str = "train", shuffle: bool = True,
                    seed: int | None = None, shard_info: seqio.ShardInfo | None = None,
                    *, sequence_length: Mapping[str, int] | None = None,
                    use_cached: bool = False, num_epochs: int | None = 1) -> tf.data.Dataset:
        del shuffle, seed, sequence_length, use_cached, num_epochs  # shuffled downstream
        shard = (shard_info.index, shard_info.num_shards) if shard_info else (0, 1)
        if self._in_memory:
            rows = list(self.examples(split, shard))
            return tf.data.Dataset.from_tensor_slices(
                {k: tf.constant([r[k] for r in rows], dtype=spec.dtype, shape=(len(rows),))
                 for k, spec in self.signature.items()})
        return tf.data.Dataset.from_generator(
            functools.partial(self.examples, split, shard), output_signature=self.signature)


@seqio.map_over_dataset
def add_metadata(example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Per-token language and task ids beside `targets`, so they survive packing."""
    out = dict(example)
    length = tf.shape(example["targets"])
    out["targets_language"] = tf.fill(length, tf.cast(example["language_id"], tf.int32))
    out["targets_task"] = tf.fill(length, tf.cast(example["task_id"], tf.int32))
    return out


def _check_takes_bad_records(name: str, examples_fn: Callable, sharded_reader: bool) -> None:
    """A user's examples function must take the run's bad-record policy: say so when it is
    registered, not with a TypeError from inside tf.data's reader thread."""
    wanted = "(shard, bad_records)" if sharded_reader else "(bad_records)"
    try:
        inspect.signature(examples_fn).bind(*([(0, 1)] if sharded_reader else []), None)
    except TypeError:
        raise SettingError(f"task {name!r}: its examples function must take {wanted}: the "
                           "run's policy for malformed records, to pass on to the record "
                           "readers (records.jsonl_records(..., bad_records=bad_records))"
                           ) from None
    except ValueError:  # a builtin without a readable signature: trust it
        pass


def register_task(name: str, examples_fn: Callable[..., Iterable[Mapping[str, Any]]],
                  vocabulary: seqio.Vocabulary, validation_fraction: float = 0.05,
                  metric_fns: Sequence[Callable] = (), replace: bool = True,
                  in_memory: bool = False, choices: bool = False,
                  sharded_reader: bool = False,
                  files: Callable[[], Sequence[str]] | Sequence[str] = (),
                  task_names: Sequence[str] = (), size: Callable[[], int] | None = None,
                  skip_bad_records: bool = False) -> seqio.Task:
    """Registers a seqio Task over prompted examples (tokenised, EOS, per-token metadata).

    choices: the examples are rank-classification ones (`answer_choices`, `label`, see
    `choice_examples`), kept as features for scoring every choice. sharded_reader, files:
    see `RecordSource`. task_names: the names the examples' task ids stand for, when not
    the task's own (the mini-xP3's task types), for per-task metrics. size: counts the
    training examples (mixing rates by size call it once). skip_bad_records: this task
    skips (and counts) bad records even when the run does not ask it to.
    """
    _check_takes_bad_records(name, examples_fn, sharded_reader)
    if replace and name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    splits = ("validation",) if validation_fraction >= 1.0 else SPLITS
    return seqio.TaskRegistry.add(
        name,
        source=RecordSource(examples_fn, validation_fraction, splits, in_memory, choices,
                            sharded_reader, files, tuple(task_names) or (name,), size,
                            skip_bad_records),
        preprocessors=[
            seqio.preprocessors.tokenize,
            seqio.preprocessors.append_eos_after_trim,
            add_metadata,
        ],
        output_features=output_features(vocabulary),
        metric_fns=list(metric_fns),
    )


_PENDING_MIXTURES: dict[str, list[tuple[str, float | Callable]]] = {}


def register_mixture(name: str, tasks_and_rates: Sequence[tuple[str, float | Callable]],
                     replace: bool = True) -> seqio.Mixture | None:
    """Registers a mixture; one that names tasks not registered yet (a module imported
    before the one defining them) waits until `register_pending_mixtures()`, which
    `import tasks` calls last, so the order of imports in tasks/__init__.py never matters."""
    entries = list(tasks_and_rates)
    known = seqio.TaskRegistry.names() | seqio.MixtureRegistry.names()
    if any(task not in known for task, _ in entries):
        _PENDING_MIXTURES[name] = entries
        return None
    if replace and name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    _PENDING_MIXTURES.pop(name, None)
    return seqio.MixtureRegistry.add(name, entries)


def first_examples(task_name: str, examples: int) -> str:
    """Registers `<task>_first<examples>`: the task over its first training examples (its
    validation split whole), for pilot runs at a chosen data size; returns the name."""
    task = seqio.get_mixture_or_task(task_name)
    if not isinstance(task, seqio.Task) or not isinstance(task.source, RecordSource):
        raise SettingError(f"{task_name!r} is not a task registered by mtf (a mixture, or "
                           "a seqio task of another kind): name one task")
    name = f"{task_name}_first{examples}"
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(name, source=task.source.first(examples),
                           preprocessors=list(task.preprocessors),
                           output_features=task.output_features,
                           metric_fns=list(task.metric_fns))
    return name


def cut_mixture(examples: Mapping[str, int], mixture: str | None = None) -> str:
    """Registers a mixture in which each task of `examples` keeps its first so many training
    examples, and returns its name, for gin: `MIXTURE_OR_TASK_NAME =
    @seqio_tasks.cut_mixture()` (`mtf.allocate` writes it; runs/finetune.gin has imported
    the registry by then). Alone, the cut tasks are mixed at rates equal to their examples
    (as concatenating them would); within `mixture`, a cut task's rate shrinks with its
    data and the other tasks' rates stay."""
    known = seqio.TaskRegistry.names()
    missing = sorted(set(examples) - known)
    if missing:
        raise SettingError(f"cut_mixture names tasks that are not registered: {missing} "
                           "(python -m mtf.tasks list shows the names)")
    cut = {task: first_examples(task, int(n)) for task, n in examples.items()}
    sizes = {task: mixing.size(seqio.get_mixture_or_task(task)) for task in examples}
    if mixture is None:
        rates = {cut[t]: float(min(int(n), sizes[t])) for t, n in examples.items()}
    else:
        whole = seqio.get_mixture_or_task(mixture)
        rates = ({t.name: float(whole.get_rate(t)) for t in whole.tasks}
                 if isinstance(whole, seqio.Mixture) else {mixture: 1.0})
        outside = sorted(set(examples) - set(rates))
        if outside:
            raise SettingError(f"MIXTURE_OR_TASK_NAME={mixture!r} does not contain "
                               f"{outside}: name tasks of the recipe's mixture (python -m "
                               f"mtf.tasks list --filter {mixture})")
        for task, n in examples.items():
            rates[cut[task]] = rates.pop(task) * min(int(n), sizes[task]) / sizes[task]
    name = f"{mixture or 'cut'}_{zlib.crc32(repr(sorted(examples.items())).encode()):08x}"
    register_mixture(name, list(rates.items()))
    return name


def register_pending_mixtures() -> None:
    """Registers the waiting mixtures; one whose tasks never came is an error naming them."""
    for _ in range(len(_PENDING_MIXTURES) + 1):  # mixtures of mixtures resolve in turns
        for name, entries in list(_PENDING_MIXTURES.items()):
            register_mixture(name, entries)
    if _PENDING_MIXTURES:
        known = seqio.TaskRegistry.names() | seqio.MixtureRegistry.names()
        missing = {name: sorted(t for t, _ in entries if t not in known)
                   for name, entries in _PENDING_MIXTURES.items()}
        _PENDING_MIXTURES.clear()
        raise SettingError(f"mixtures name tasks that no module registers: {missing}; check "
                           "the names, and that the defining module is imported in "
                           "tasks/__init__.py")
