"""The token cache: seqio's very features, read from any position, each process its share,
stale or damaged caches refused with one line."""

import dataclasses
import json
import os

import numpy as np
import pytest
import seqio
import tensorflow as tf

from mtf.data import batches, cached_stream, records, seekable, seqio_tasks, token_cache
from tasks import mini_xp3, xp3
from tests.test_xp3_tasks import write_jsonl

LENGTHS = {"inputs": 32, "targets": 24}


def build(directory, mixture, lengths=LENGTHS, count=2, split="train"):
    """What `python -m mtf.tasks cache` does, in this process and one shard at a time."""
    found = seqio_tasks.tasks_of(seqio.get_mixture_or_task(mixture))
    entries = {}
    for task in found:
        shards = [token_cache.build_shard(task, split, lengths,
                                          token_cache.ShardSpec(task.name, i, count),
                                          str(directory)) for i in range(count)]
        entries[task.name] = token_cache.task_entry(task, shards, count)
    return token_cache.write_manifest(str(directory), split, lengths, entries, mixture, 0.0)


@pytest.fixture
def tree(tmp_path):
    """An xP3 tree of 3 languages, 90-160 records each, short ones and ones cut to length."""
    root = tmp_path / "xp3"
    for lang, count in (("en", 160), ("sw", 90), ("yo", 120)):
        write_jsonl(root / lang / f"merged_{lang}.jsonl",
                    [{"inputs": f"{lang} question {i}: " + "word " * (i % 23) if i % 3 else
                      f"{lang} {i}", "targets": f"answer {i} " * (1 + i % 3)}
                     for i in range(count)])
    xp3.register(str(root), vocabulary_path=str(mini_xp3.VOCABULARY_PATH))
    return root


@pytest.fixture
def cache(tree, tmp_path):
    directory = tmp_path / "cache"
    build(directory, "xp3")
    return directory


def config(cache_dir, pack=False, lengths=LENGTHS, mixture="xp3"):
    return batches.DataConfig(mixture_or_task_name=mixture, task_feature_lengths=lengths,
                              pack=pack, cache_dir=str(cache_dir))


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("pack", [False, True])
def test_cached_batches_are_seqios_features_of_the_tasks_examples(cache, pack):
    """A task's first examples, read from the cache (its first shard, in record order) and
    converted in numpy, equal seqio's tokenisation and EncDecFeatureConverter on tf.data
    for the same shard of the task."""
    opened = token_cache.open_cache(str(cache), seqio.get_mixture_or_task("xp3"), "train",
                                    LENGTHS)
    task = seqio.get_mixture_or_task("xp3_en")
    eos = {"inputs": 1, "targets": 1}
    cached = [cached_stream._example(LENGTHS, eos, opened.source("xp3_en")[i])  # noqa: SLF001
              for i in range(12)]
    ds = task.get_dataset(LENGTHS, split="train", shuffle=False, num_epochs=1,
                          shard_info=seqio.ShardInfo(0, 2))
    tokens = [{k: e[k] for k in ("inputs", "targets", "targets_language", "targets_task")}
              for e in ds.take(12).as_numpy_iterator()]
    for ours, theirs in zip(cached, tokens, strict=True):
        assert_same(ours, theirs)
    assert any(len(e["inputs"]) == LENGTHS["inputs"] for e in cached)  # some were cut
    converter = batches.feature_converter(pack)
    model_lengths = batches.task_feature_lengths(LENGTHS)
    expected = next(converter(ds.take(12), model_lengths).batch(12 if not pack else 4)
                    .as_numpy_iterator())
    if pack:  # seqio's packer: rows of consecutive examples; ours packs rows the same way
        rows = [dict(r) for r in _packed_rows(cached)]
        ours = cached_stream.packed_features(rows[:len(expected["encoder_input_tokens"])])
    else:
        ours = cached_stream.unpacked_features(LENGTHS, cached)
    assert_same(ours, expected)


def _packed_rows(examples):
    """Consecutive examples packed greedily into rows of LENGTHS, as seqio packs them."""
    rows, row = [], None
    for e in examples:
        size = {k: len(e[k]) for k in ("inputs", "targets")}
        if row is None or any(row["used"][k] + size[k] > LENGTHS[k] for k in size):
            row = {"used": {"inputs": 0, "targets": 0}, "segment": 0, **{
                f"{k}{suffix}": np.zeros(LENGTHS["targets" if "targets" in k else k], np.int32)
                for k in ("inputs", "targets", "targets_language", "targets_task")
                for suffix in ("", "_segment_ids", "_positions")}}
            rows.append(row)
        row["segment"] += 1
        for key in ("inputs", "targets", "targets_language", "targets_task"):
            start = row["used"]["inputs" if key == "inputs" else "targets"]
            stop = start + len(e[key])
            row[key][start:stop] = e[key]
            row[f"{key}_segment_ids"][start:stop] = row["segment"]
            row[f"{key}_positions"][start:stop] = np.arange(len(e[key]))
        for k in size:
            row["used"][k] += size[k]
    return [{k: v for k, v in r.items() if k not in ("used", "segment")} for r in rows]


@pytest.mark.parametrize("pack,bos,loss_on_prompt", [(False, 1, False), (True, 1, False),
                                                     (True, None, True)])
def test_cached_decoder_only_batches_are_the_converters_sequences(cache, pack, bos,
                                                                  loss_on_prompt):
    """A decoder-only run reads the same cache: the task examples as one sequence each (BOS,
    prompt without its EOS, response), weights and ids, packed or not, equal
    DecoderOnlyFeatureConverter's on tf.data; `batches()` serves them from DATA_CACHE_DIR."""
    from mtf.data.decoder_only import DecoderOnlyFeatureConverter
    from mtf.model import DECODER_ONLY
    from mtf.model.features import SequenceIds

    ids = SequenceIds(bos, 1)
    opened = token_cache.open_cache(str(cache), seqio.get_mixture_or_task("xp3"), "train",
                                    LENGTHS)
    eos = {"inputs": 1, "targets": 1}
    sequences = [cached_stream.decoder_only_sequence(ids, loss_on_prompt, cached_stream._example(  # noqa: SLF001
        LENGTHS, eos, opened.source("xp3_en")[i])) for i in range(12)]
    task = seqio.get_mixture_or_task("xp3_en")
    ds = task.get_dataset(LENGTHS, split="train", shuffle=False, num_epochs=1,
                          shard_info=seqio.ShardInfo(0, 2))
    converter = DecoderOnlyFeatureConverter(pack, bos, 1, loss_on_prompt,
                                            batches.DECODER_ONLY_METADATA)
    expected = next(converter(ds.take(12), batches.task_feature_lengths(LENGTHS))
                    .batch(12).as_numpy_iterator())
    length = LENGTHS["inputs"] + LENGTHS["targets"]
    if pack:
        rows = _packed_sequence_rows(sequences, length)
        ours = cached_stream.packed_sequences(rows[:len(expected[DECODER_ONLY.targets])])
    else:
        ours = cached_stream.unpacked_sequences(length, sequences)
    assert_same(ours, expected)
    assert ours[DECODER_ONLY.loss_weights].sum() < (ours[DECODER_ONLY.targets] > 0).sum() or (
        loss_on_prompt)
    served = batches.batches(dataclasses.replace(config(cache, pack), decoder_only=ids,
                                                 loss_on_prompt=loss_on_prompt), 4)
    batch = next(served)
    assert set(batch) == set(expected) and batch[DECODER_ONLY.targets].shape == (4, length)


def _packed_sequence_rows(sequences, length):
    """Consecutive sequences packed greedily into rows of `length`, as seqio packs them."""
    rows, used = [], length
    for sequence in sequences:
        size = len(sequence["decoder_target_tokens"])
        if used + size > length:
            rows.append({f"{k}{suffix}": np.zeros(length, np.int32) for k in sequence
                         for suffix in ("", "_segment_ids", "_positions")} | {"segment": 0})
            used = 0
        row = rows[-1]
        row["segment"] += 1
        for key, values in sequence.items():
            row[key][used:used + size] = values
            row[f"{key}_segment_ids"][used:used + size] = row["segment"]
            row[f"{key}_positions"][used:used + size] = np.arange(size)
        used += size
    return [{k: v for k, v in r.items() if k != "segment"} for r in rows]


def test_mixture_draws_the_uncached_streams_task_sequence(cache):
    """The cached mixture keeps the rates and ids: its task at each position is the one
    the uncached stream draws there (seekable's seeded blocks), languages and tasks intact."""
    provider = seqio.get_mixture_or_task("xp3")
    rates = [provider.get_rate(t) for t in provider.tasks]
    selection = cached_stream.MixtureSelection(rates, 0, 1)
    expected = seekable.choices(rates, 0, 1, 0)
    seen = {}
    for index in range(3 * seekable.BLOCK // 2):
        task, position = selection[index]
        assert task == next(expected)
        assert position == seen.get(task, 0)  # each task's stream is read in order
        seen[task] = position + 1
    far = seekable.BLOCK * 5 + 17  # a far position, computed without the ones before it
    counts = seekable.consumed(rates, 0, 1, far)
    task, position = cached_stream.MixtureSelection(rates, 0, 1)[far]
    assert position == counts[task]
    batch = next(batches.batches(config(cache), 64))
    ids = {int(i) for i in batch["decoder_task"][:, 0]}
    assert ids == {seqio_tasks.task_id(t.name) for t in provider.tasks}


@pytest.mark.parametrize("pack,decoder_only", [(False, False), (True, False), (True, True)])
def test_resuming_at_a_position_gives_the_same_batches(cache, pack, decoder_only):
    """Unpacked streams resume from the position, packed ones from the packer's state;
    decoder-only sequences (BOS 1, EOS 1) alike."""
    from mtf.model.features import SequenceIds

    data = dataclasses.replace(config(cache, pack),
                               decoder_only=SequenceIds(1, 1) if decoder_only else None)
    stream = batches.batches(data, 8)
    reference, states = [], []
    for _ in range(12):  # more than an epoch of the smallest task's share: reshuffled
        states.append(stream.state())
        reference.append(next(stream))
    assert (states[5] is not None) == pack
    for position in (5, 11):
        resumed = batches.batches(data, 8, position, state=states[position])
        for expected in reference[position:]:
            assert_same(next(resumed), expected)
    if pack and not decoder_only:
        rows = reference[0]["decoder_segment_ids"]
        assert rows.max() > 1  # several examples a row
        targets = reference[0]["decoder_target_tokens"]
        shifted = reference[0]["decoder_input_tokens"]
        starts = reference[0]["decoder_positions"] == 0
        assert (shifted[starts] == 0).all()
        np.testing.assert_array_equal(shifted[:, 1:][~starts[:, 1:]],
                                      targets[:, :-1][~starts[:, 1:]])


def test_each_of_8_processes_reads_only_its_share(tree, tmp_path, monkeypatch):
    """Raw records: each process parses only its lines; the cache: each process's sources
    hold only its share of every task (disjoint, together the whole)."""
    parsed = []

    class CountingJson:
        @staticmethod
        def loads(text, *args, **kwargs):
            parsed.append(text)
            return json.loads(text, *args, **kwargs)

    monkeypatch.setattr(records, "json", CountingJson)
    task = seqio.get_mixture_or_task("xp3_en")
    per_process = []
    for index in range(8):
        before = len(parsed)
        ds = task.get_dataset(None, split="train", shuffle=False, num_epochs=1,
                              shard_info=seqio.ShardInfo(index, 8))
        examples = sum(1 for _ in ds.as_numpy_iterator())
        per_process.append(len(parsed) - before)
        assert examples <= per_process[-1]
    assert per_process == [20] * 8  # 160 lines, each parsed by one process
    monkeypatch.undo()

    directory = tmp_path / "cache8"
    build(directory, "xp3", count=3)
    opened = token_cache.open_cache(str(directory), seqio.get_mixture_or_task("xp3"),
                                    "train", LENGTHS)
    for name in ("xp3_en", "xp3_sw"):
        total = opened.examples(name)
        shares = [token_cache.share(total, i, 8) for i in range(8)]
        assert sum(len(s) for s in shares) == total
        assert all(a.stop == b.start for a, b in zip(shares, shares[1:], strict=False))
        sources = [opened.source(name, i, 8) for i in range(8)]
        assert [len(s) for s in sources] == [len(s) for s in shares]
        whole = opened.source(name)
        for index in (0, 7):  # the share's records are the whole's at the share's offsets
            for k in range(len(sources[index])):
                got, want = sources[index][k], whole[shares[index].start + k]
                np.testing.assert_array_equal(got["inputs"], want["inputs"])
    streams = [next(batches.batches(config(directory), 16, 0, i, 8)) for i in (0, 1)]
    assert not np.array_equal(streams[0]["encoder_input_tokens"],
                              streams[1]["encoder_input_tokens"])


def one_line(error):
    message = str(error.value)
    assert "\n" not in message and "python -m mtf.tasks cache --mixture xp3" in message
    return message


def test_stale_or_damaged_caches_are_refused_with_the_command_that_rebuilds(tree, cache,
                                                                            tmp_path):
    provider = seqio.get_mixture_or_task("xp3")
    with pytest.raises(token_cache.CacheError) as e:
        batches.token_cache_of(config(cache, lengths={"inputs": 64, "targets": 24}))
    assert "shorter than TASK_FEATURE_LENGTHS" in one_line(e)
    with pytest.raises(token_cache.CacheError) as e:
        token_cache.open_cache(str(tmp_path / "nothing"), provider, "train", LENGTHS)
    assert "holds no readable manifest.json" in one_line(e)

    manifest = json.loads((cache / "manifest.json").read_text())
    changed = json.loads(json.dumps(manifest))
    changed["tasks"]["xp3_sw"]["vocabulary"]["inputs"]["sha256"] = "0" * 64
    (cache / "manifest.json").write_text(json.dumps(changed))
    with pytest.raises(token_cache.CacheError) as e:
        batches.token_cache_of(config(cache))
    assert "task xp3_sw was cached with vocabulary" in one_line(e)
    (cache / "manifest.json").write_text(json.dumps(manifest))

    shard = cache / "xp3_yo" / "00001-of-00002.array_record"
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0xFF  # a flipped byte inside the first records: same size
    shard.write_bytes(bytes(data))
    source = token_cache.open_cache(str(cache), provider, "train", LENGTHS).source("xp3_yo")
    with pytest.raises(token_cache.CacheError) as e:
        for index in range(len(source)):
            source[index]
    assert "a record of task xp3_yo cannot be read" in one_line(e)
    shard.write_bytes(bytes(data[:-100]))  # cut short (a half-copied file)
    with pytest.raises(token_cache.CacheError) as e:
        batches.batches(config(cache), 8)
    assert "00001-of-00002.array_record holds" in one_line(e)

    with open(tree / "sw" / "merged_sw.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"inputs": "one more", "targets": "record"}) + "\n")
    with pytest.raises(token_cache.CacheError) as e:
        batches.token_cache_of(config(cache))
    assert "is stale" in one_line(e) and "merged_sw.jsonl changed since" in str(e.value)


def test_the_embedded_mini_xp3_caches_too_and_uncacheable_tasks_are_named(tmp_path):
    directory = tmp_path / "mini"
    mixture = seqio.get_mixture_or_task("mini_xp3")
    tasks = seqio_tasks.tasks_of(mixture)[:2]
    seqio_tasks.register_mixture("mini_xp3_two", [(t.name, 1.0) for t in tasks])
    build(directory, "mini_xp3_two", count=1)
    batch = next(batches.batches(config(directory, True, mixture="mini_xp3_two"), 4))
    assert batch["decoder_segment_ids"].max() > 1

    def drop_short(ds):
        return ds.filter(lambda ex: tf.size(ex["inputs"]) > 3)

    other = seqio.Task("filtered_task", tasks[0].source, tasks[0].output_features,
                       preprocessors=[seqio.preprocessors.tokenize, drop_short])
    assert "preprocessors" in token_cache.uncacheable_reason(other)
    assert token_cache.uncacheable_reason(tasks[0]) is None
    assert os.path.exists(directory / "manifest.json")
