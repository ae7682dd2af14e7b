"""Metrics against the libraries' own numbers, and the aggregation over templates."""

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from mtf.data import metrics
from mtf.errors import SettingError

TARGETS = ["The cat sat on the mat.", "Il pleut des cordes aujourd'hui.", "Habari ya asubuhi"]
PREDICTIONS = ["The cat is on the mat.", "Il pleut beaucoup aujourd'hui.", "Habari za asubuhi"]


def test_bleu_and_chrf_equal_sacrebleu():
    assert metrics.bleu(TARGETS, PREDICTIONS)["bleu"] == pytest.approx(
        sacrebleu.corpus_bleu(PREDICTIONS, [TARGETS]).score)
    assert metrics.chrf(TARGETS, PREDICTIONS)["chrf"] == pytest.approx(
        sacrebleu.corpus_chrf(PREDICTIONS, [TARGETS]).score)
    plus = sacrebleu.metrics.CHRF(word_order=2).corpus_score(PREDICTIONS, [TARGETS]).score
    assert metrics.chrf_plus_plus(TARGETS, PREDICTIONS)["chrf++"] == pytest.approx(plus)
    assert plus != pytest.approx(metrics.chrf(TARGETS, PREDICTIONS)["chrf"])


def test_rouge_equals_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    got = metrics.rouge(TARGETS, PREDICTIONS)
    for name in ("rouge1", "rouge2", "rougeL"):
        want = 100 * sum(scorer.score(t, p)[name].fmeasure
                         for t, p in zip(TARGETS, PREDICTIONS, strict=True)) / 3
        assert got[name] == pytest.approx(want)


def test_squad_exact_match_and_f1_by_hand():
    got = metrics.squad(["the Eiffel Tower", "Paris, France"], ["Eiffel tower!", "France"])
    assert got["squad_exact_match"] == pytest.approx(50.0)
    # second: gold {paris, france}, pred {france}: precision 1, recall 1/2, F1 2/3
    assert got["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_accuracy_median_and_max_over_templates():
    assert metrics.accuracy([0, 1, 2, 1], [0, 1, 1, 1]) == {"accuracy": 75.0}
    agg = metrics.over_templates({"a": {"accuracy": 40.0}, "b": {"accuracy": 70.0},
                                  "c": {"accuracy": 50.0}, "d": {"accuracy": 60.0}})
    assert agg == {"median": {"accuracy": 55.0}, "max": {"accuracy": 70.0}}


def test_bad_metric_inputs_are_named():
    with pytest.raises(metrics.MetricInputError, match="no examples"):
        metrics.bleu([], [])
    with pytest.raises(metrics.MetricInputError, match="every target is empty"):
        metrics.chrf(["", " "], ["a", "b"])
    with pytest.raises(metrics.MetricInputError, match="2 targets but 1 predictions"):
        metrics.exact_match(["a", "b"], ["a"])
    with pytest.raises(SettingError, match=r"unknown metric\(s\) \['blue'\]"):
        metrics.by_name(["bleu", "blue"])
