"""Unpacked streams seek to a position: the same batches as reading up to it."""

import numpy as np
import pytest
import seqio

import tasks  # noqa: F401
from mtf.data import batches, seekable, seqio_tasks
from tests.test_xp3_tasks import registered, write_jsonl, xp3_tree  # noqa: F401


def take(config, batch_size, position, n, process_index=0, process_count=1):
    it = batches.batches(config, batch_size, position, process_index, process_count)
    return [next(it) for _ in range(n)]


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("process_index", [0, 1])
def test_mixture_resumes_at_a_position_without_replaying(process_index):
    config = batches.DataConfig(mixture_or_task_name="mini_xp3", pack=False,
                                task_feature_lengths={"inputs": 32, "targets": 16})
    assert batches.uses_seekable_stream(config)
    reference = take(config, 8, 0, 5, process_index, 2)
    resumed = take(config, 8, 3, 2, process_index, 2)
    for a, b in zip(reference[3:], resumed, strict=True):
        assert_same(a, b)
    other = take(config, 8, 0, 1, 1 - process_index, 2)[0]
    assert not np.array_equal(other["encoder_input_tokens"], reference[0]["encoder_input_tokens"])


def test_streamed_xp3_tasks_seek_too(registered):  # noqa: F811
    config = batches.DataConfig(mixture_or_task_name="xp3_proportional", pack=False,
                                task_feature_lengths={"inputs": 32, "targets": 8})
    assert batches.uses_seekable_stream(config)
    reference = take(config, 4, 0, 30)
    resumed = take(config, 4, 27, 3)
    for a, b in zip(reference[27:], resumed, strict=True):
        assert_same(a, b)
    languages = {int(x) for b in reference for x in b["decoder_language"][:, 0]}
    assert len(languages) == 3


def test_consumed_counts_match_the_choices():
    rates = [0.5, 0.3, 0.2]
    start = seekable.BLOCK + 123
    picks = seekable.choices(rates, 7, 0, 0)
    first = np.array([next(picks) for _ in range(start)])
    np.testing.assert_array_equal(seekable.consumed(rates, 7, 0, start),
                                  np.bincount(first, minlength=3))
    assert abs(np.bincount(first, minlength=3)[0] / start - 0.5) < 0.01
    later = seekable.choices(rates, 7, 0, start)
    continued = seekable.choices(rates, 7, 0, 0)
    for _ in range(start):
        next(continued)
    assert [next(later) for _ in range(50)] == [next(continued) for _ in range(50)]


def test_packed_or_filtering_tasks_fall_back_to_replaying():
    assert not batches.uses_seekable_stream(batches.DataConfig(pack=True))

    def drop_short(ds):
        return ds.filter(lambda ex: len(ex["inputs"]) > 3)

    source = seqio_tasks.RecordSource(lambda: [])
    features = seqio_tasks.output_features(seqio.PassThroughVocabulary(1))
    plain = seqio.Task("one_to_one", source, features,
                       preprocessors=[seqio.preprocessors.tokenize, seqio_tasks.add_metadata])
    filtered = seqio.Task("filtered", source, features,  # a user's N-to-M preprocessor
                          preprocessors=[seqio.preprocessors.tokenize, drop_short])
    assert seekable.supported(plain) and not seekable.supported(filtered)
