"""A pre-tokenised, randomly accessible cache of tasks: ArrayRecord files and a manifest.

Reading raw jsonl costs a JSON parse and a SentencePiece encoding per example, in one
Python thread, and seeking means reading everything before the position. The cache pays
that once (`python -m mtf.tasks cache`), in parallel shards, and stores each example's
token ids as one ArrayRecord record (group size 1: any record is read alone), so a run
reads only the examples it uses, from any position. Layout of a cache folder (local or
gs://):

    manifest.json                       what was cached, from what, with what vocabulary
    <task>/<shard>-of-<count>.array_record  one record per example of the split
    <task>/<shard>-of-<count>.json          written last: the shard is complete

A record is int32 [inputs length, targets length, language id, task id, inputs...,
targets...], each sequence cut to its cached length less one (EOS is appended when read,
exactly as seqio's `append_eos_after_trim` does after trimming), so a run may use any
lengths up to the cached ones. A cache is refused, with the command that rebuilds it,
when its vocabulary, record files or lengths do not match the run, or a shard is damaged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import seqio

from mtf import storage
from mtf.data import seqio_tasks
from mtf.errors import UserError

FORMAT = "mtf-token-cache"
VERSION = 1
MANIFEST = "manifest.json"
FEATURES = ("inputs", "targets")
HEADER = 4  # int32s before the tokens: inputs length, targets length, language id, task id
# The preprocessors whose work the cache holds (tokenise, EOS after trimming, metadata).
CACHED_PREPROCESSORS = (seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim,
                        seqio_tasks.add_metadata)
_SAMPLE_BYTES = 1 << 20  # a record file is fingerprinted by its size and first/last MiB


class CacheError(UserError):
    """A token cache that cannot be used for this run; the message says how to rebuild."""


def rebuild_hint(directory: str, mixture: str) -> str:
    return (f"rebuild it: python -m mtf.tasks cache --mixture {mixture} --output {directory} "
            "(or unset DATA_CACHE_DIR to read the record files)")


def encode(inputs: Sequence[int], targets: Sequence[int], language_id: int,
           task_id: int) -> bytes:
    header = np.array([len(inputs), len(targets), language_id, task_id], np.int32)
    return b"".join((header.tobytes(), np.asarray(inputs, np.int32).tobytes(),
                     np.asarray(targets, np.int32).tobytes()))


def decode(raw: bytes) -> dict[str, Any]:
    """One cached example: token arrays without EOS, and its language and task ids."""
    values = np.frombuffer(raw, np.int32)
    n_inputs, n_targets, language_id, task_id = (int(v) for v in values[:HEADER])
    if len(values) != HEADER + n_inputs + n_targets:
        raise CacheError(f"a cached record holds {len(values)} values, its header says "
                         f"{HEADER + n_inputs + n_targets}")
    return {"inputs": values[HEADER:HEADER + n_inputs],
            "targets": values[HEADER + n_inputs:], "language_id": language_id,
            "task_id": task_id}


def uncacheable_reason(task: seqio.Task) -> str | None:
    """Why `task` cannot be cached (None: it can): mtf record sources whose preprocessors
    map one record to one tokenised example are cached; anything else is read as it is."""
    if not isinstance(task.source, seqio_tasks.RecordSource):
        return f"its source is a {type(task.source).__name__}, not an mtf record source"
    if tuple(task.preprocessors) != CACHED_PREPROCESSORS:
        return ("its preprocessors are not mtf's tokenize / append_eos_after_trim / "
                "add_metadata")
    for name in FEATURES:
        if not task.output_features[name].add_eos:
            return f"its {name!r} feature has no EOS"
    return None


def vocabulary_fingerprint(vocabulary: seqio.Vocabulary) -> dict[str, Any]:
    """What identifies the token ids: the SentencePiece model's bytes (wherever it lives)."""
    model = getattr(vocabulary, "sp_model", None)
    if model is None:
        raise CacheError(f"cannot fingerprint a {type(vocabulary).__name__}: the cache holds "
                         "tasks with SentencePiece vocabularies")
    return {"sha256": hashlib.sha256(model).hexdigest(), "size": vocabulary.vocab_size,
            "eos_id": vocabulary.eos_id,
            "source": str(getattr(vocabulary, "source", None)
                          or getattr(vocabulary, "sentencepiece_model_file", ""))}


def file_fingerprint(path: str) -> dict[str, Any]:
    """Size and a hash of the first and last MiB: catches a file replaced, extended or cut,
    without reading hundreds of GB; the name is kept as folder/file, so a tree copied
    elsewhere still matches."""
    digest = hashlib.sha256()
    with storage.open_read(path) as f:
        head = f.read(_SAMPLE_BYTES)
        digest.update(head)
        size = len(head)
        if len(head) == _SAMPLE_BYTES:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(_SAMPLE_BYTES, size - _SAMPLE_BYTES))
            digest.update(f.read())
    return {"name": "/".join(path.rstrip("/").split("/")[-2:]), "size": size,
            "sha256": digest.hexdigest()}


def shard_name(index: int, count: int) -> str:
    return f"{index:05d}-of-{count:05d}"


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    task: str
    index: int
    count: int

    def data(self, directory: str) -> str:
        return storage.join(directory, self.task, shard_name(self.index, self.count)
                            + ".array_record")

    def done(self, directory: str) -> str:
        return storage.join(directory, self.task, shard_name(self.index, self.count) + ".json")


def build_shard(task: seqio.Task, split: str, lengths: Mapping[str, int], spec: ShardSpec,
                directory: str) -> dict[str, Any]:
    """Tokenises this shard's share of the task's records into one ArrayRecord file, then
    writes its done-file (records, bytes). Records are read and validated once, here: a bad
    one stops the build with its file and line (or is skipped and counted)."""
    from array_record.python import array_record_module  # a C++ extension: builder only

    vocabularies = {k: task.output_features[k].vocabulary for k in FEATURES}
    remote = storage.is_remote(directory)
    target = spec.data(directory)
    if remote:
        fd, local = tempfile.mkstemp(suffix=".array_record", prefix="mtf-cache-")
        os.close(fd)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        local = target + ".tmp"
    writer = array_record_module.ArrayRecordWriter(local, "group_size:1")
    records = 0
    try:
        for example in task.source.examples(split, (spec.index, spec.count)):
            tokens = {k: vocabularies[k].encode(example[k])[:lengths[k] - 1] for k in FEATURES}
            writer.write(encode(tokens["inputs"], tokens["targets"], example["language_id"],
                                example["task_id"]))
            records += 1
    finally:
        writer.close()
    size = os.path.getsize(local)
    if remote:
        storage.upload(local, target)
        os.remove(local)
    else:
        os.replace(local, target)
    done = {"records": records, "bytes": size}
    storage.write_text(spec.done(directory), json.dumps(done))
    return done


def read_json(path: str) -> dict[str, Any] | None:
    if not storage.exists(path):
        return None
    try:
        return json.loads(storage.read_bytes(path))
    except (ValueError, UnicodeDecodeError):
        return None


def task_entry(task: seqio.Task, shards: Sequence[dict[str, Any]], count: int
               ) -> dict[str, Any]:
    """A task's manifest entry, from its completed shards."""
    return {
        "task_id": seqio_tasks.task_id(task.name),
        "vocabulary": {k: vocabulary_fingerprint(task.output_features[k].vocabulary)
                       for k in FEATURES},
        "sources": [file_fingerprint(f) for f in task.source.files()],
        "shards": [{"file": f"{task.name}/{shard_name(i, count)}.array_record", **s}
                   for i, s in enumerate(shards)],
        "examples": sum(s["records"] for s in shards),
    }


def write_manifest(directory: str, split: str, lengths: Mapping[str, int],
                   entries: Mapping[str, dict[str, Any]], mixture: str, build_s: float
                   ) -> dict[str, Any]:
    """The manifest: this build's tasks, beside those of earlier builds into the folder
    with the same split and lengths (one folder may serve several mixtures); build_s: the
    wall time of the command that finished the build."""
    manifest = {"format": FORMAT, "version": VERSION, "split": split,
                "lengths": {k: int(lengths[k]) for k in FEATURES}, "mixtures": [mixture],
                "build_s": round(build_s, 1), "tasks": {}}
    old = read_json(storage.join(directory, MANIFEST))
    if old and old.get("version") == VERSION and old.get("split") == split and (
            old.get("lengths") == manifest["lengths"]):
        manifest["tasks"].update(old.get("tasks", {}))
        manifest["mixtures"] = sorted(set(old.get("mixtures", [])) | {mixture})
    manifest["tasks"].update(entries)
    storage.write_text(storage.join(directory, MANIFEST), json.dumps(manifest, indent=1))
    return manifest


@dataclasses.dataclass(frozen=True)
class FileInstruction:
    """One file's slice, in the form ArrayRecordDataSource takes (TFDS's protocol)."""

    filename: str
    skip: int
    take: int
    examples_in_shard: int


def share(total: int, process_index: int, process_count: int) -> range:
    """This process's contiguous share of a task's `total` examples (a task smaller than
    the process count gives each process one example, so every process can draw from it)."""
    start, stop = total * process_index // process_count, total * (process_index + 1) // (
        process_count)
    if start == stop:
        start = process_index % total
        stop = start + 1
    return range(start, stop)


class TokenCache:
    """An opened, checked cache: per task, this process's share as a random-access source."""

    def __init__(self, directory: str, manifest: dict[str, Any], hint: str) -> None:
        self.directory = directory
        self.manifest = manifest
        self.hint = hint

    @property
    def lengths(self) -> dict[str, int]:
        return dict(self.manifest["lengths"])

    def examples(self, task_name: str) -> int:
        return int(self.manifest["tasks"][task_name]["examples"])

    def source(self, task_name: str, process_index: int = 0, process_count: int = 1
               ) -> CachedSource:
        """This process's share of the task's examples (reads no other shard's file)."""
        from grain import sources  # grain's ArrayRecord reader: only when a cache is read

        entry = self.manifest["tasks"][task_name]
        wanted = share(entry["examples"], process_index, process_count)
        instructions, first = [], 0
        for shard in entry["shards"]:
            last = first + shard["records"]
            skip, stop = max(wanted.start, first), min(wanted.stop, last)
            if skip < stop:
                path = self._local(shard)
                instructions.append(FileInstruction(path, skip - first, stop - skip,
                                                    shard["records"]))
            first = last
        return CachedSource(sources.ArrayRecordDataSource(instructions), self.directory,
                            task_name, self.hint)

    def _local(self, shard: dict[str, Any]) -> str:
        """A shard file's local path (ArrayRecord reads local files): a gs:// shard is
        copied once into $MTF_CACHE, keyed by its path and size; its size is checked."""
        path = storage.join(self.directory, shard["file"])
        if storage.is_remote(path):
            key = hashlib.sha256(f"{path}:{shard['bytes']}".encode()).hexdigest()[:16]
            local = os.path.join(storage.cache_dir(), "token_cache", key,
                                 os.path.basename(path))
            if not os.path.exists(local):
                if not storage.exists(path):
                    raise CacheError(f"token cache shard {path} is missing; {self.hint}")
                storage.write_bytes(local, storage.read_bytes(path))
            path = local
        elif not os.path.exists(path):
            raise CacheError(f"token cache shard {path} is missing; {self.hint}")
        size = os.path.getsize(path)
        if size != shard["bytes"]:
            raise CacheError(f"token cache shard {storage.join(self.directory, shard['file'])}"
                             f" holds {size} bytes, its manifest says {shard['bytes']} "
                             f"(damaged or half-copied); {self.hint}")
        return path


class CachedSource:
    """Random access to decoded examples; a read error names the cache and the fix."""

    def __init__(self, records: Any, directory: str, task_name: str, hint: str) -> None:
        self._records, self._directory, self._task, self._hint = (records, directory,
                                                                  task_name, hint)

    def __len__(self) -> int:
        return len(self._records)

    def _failed(self, error: Exception) -> CacheError:
        return CacheError(f"token cache {self._directory}: a record of task {self._task} "
                          f"cannot be read ({str(error).splitlines()[0][:200]}); {self._hint}")

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return decode(self._records[index])
        except Exception as e:  # a bad header, or riegeli's damaged-chunk errors (several types)
            raise self._failed(e) from None

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        try:
            return [decode(raw) for raw in self._records.__getitems__(indices)]
        except Exception as e:
            raise self._failed(e) from None


def open_cache(directory: str, provider: seqio.Task | seqio.Mixture, split: str,
               lengths: Mapping[str, int]) -> TokenCache:
    """The cache at `directory`, checked against the run: every task of `provider` cached
    for `split` at lengths >= the run's, with the same vocabulary and record files."""
    hint = rebuild_hint(directory, provider.name)
    manifest = read_json(storage.join(directory, MANIFEST))
    if manifest is None:
        raise CacheError(f"DATA_CACHE_DIR={directory} holds no readable {MANIFEST} (not "
                         f"built, or the build did not finish); {hint}")
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise CacheError(f"DATA_CACHE_DIR={directory} is not an mtf token cache of version "
                         f"{VERSION}; {hint}")
    if manifest["split"] != split:
        raise CacheError(f"DATA_CACHE_DIR={directory} caches the {manifest['split']!r} "
                         f"split, the run reads {split!r}; {hint}")
    short = {k: v for k, v in manifest["lengths"].items() if lengths[k] > v}
    if short:
        raise CacheError(f"DATA_CACHE_DIR={directory} was built for lengths "
                         f"{manifest['lengths']}, shorter than TASK_FEATURE_LENGTHS "
                         f"{ {k: int(lengths[k]) for k in FEATURES} }; {hint} --inputs "
                         f"{lengths['inputs']} --targets {lengths['targets']}")
    for task in seqio_tasks.tasks_of(provider):
        entry = manifest["tasks"].get(task.name)
        if entry is None:
            raise CacheError(f"DATA_CACHE_DIR={directory} holds no cache of task {task.name} "
                             f"(built for {manifest.get('mixtures')}); {hint}")
        _check_task(task, entry, directory, hint)
    return TokenCache(directory, manifest, hint)


def _check_task(task: seqio.Task, entry: dict[str, Any], directory: str, hint: str) -> None:
    for feature in FEATURES:
        now = vocabulary_fingerprint(task.output_features[feature].vocabulary)
        if entry["vocabulary"][feature]["sha256"] != now["sha256"]:
            raise CacheError(f"DATA_CACHE_DIR={directory}: task {task.name} was cached with "
                             f"vocabulary {entry['vocabulary'][feature]['source']}, the run "
                             f"uses {now['source']} (another model); {hint}")
    cached = {s["name"]: s for s in entry["sources"]}
    for path in task.source.files():
        now = file_fingerprint(path)
        before = cached.get(now["name"])
        if before is None or before["size"] != now["size"] or before["sha256"] != now["sha256"]:
            raise CacheError(f"DATA_CACHE_DIR={directory} is stale: {path} "
                             f"{'was not part of' if before is None else 'changed since'} the "
                             f"cache of task {task.name}; {hint}")
    if entry["task_id"] != seqio_tasks.task_id(task.name):
        raise CacheError(f"DATA_CACHE_DIR={directory}: task {task.name}'s id changed; {hint}")


def shard_specs(tasks: Sequence[seqio.Task], count: int) -> Iterator[ShardSpec]:
    for task in tasks:
        for index in range(count):
            yield ShardSpec(task.name, index, count)
