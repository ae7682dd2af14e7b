"""seqio metric functions (targets, predictions) -> {name: value}, and their aggregation.

BLEU and chrF(++) are sacreBLEU's, ROUGE is rouge-score's; exact match and token F1 are
SQuAD's definitions (lower-cased, punctuation and English articles removed), as MLQA and
XQuAD report them. Every value is a percentage.
"""

from __future__ import annotations

import collections
import re
import statistics
import string
from collections.abc import Callable, Mapping, Sequence

import sacrebleu

from mtf.errors import SettingError


class MetricInputError(SettingError):
    """Targets and predictions that a metric cannot be computed on."""


def _check(targets: Sequence[str], predictions: Sequence[str], metric: str) -> None:
    if len(targets) != len(predictions):
        raise MetricInputError(f"{metric}: {len(targets)} targets but {len(predictions)} "
                               "predictions")
    if not targets:
        raise MetricInputError(f"{metric}: no examples to score (empty targets and "
                               "predictions); check the task's validation split")
    if not any(t.strip() for t in targets):
        raise MetricInputError(f"{metric}: every target is empty; the task's targets field "
                               "is probably wrong")


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Percentage of predictions equal to their target after stripping whitespace."""
    _check(targets, predictions, "exact_match")
    hits = sum(t.strip() == p.strip() for t, p in zip(targets, predictions, strict=True))
    return {"exact_match": 100.0 * hits / len(targets)}


def chrf(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Corpus chrF: character n-grams suit short terms in many scripts better than BLEU."""
    _check(targets, predictions, "chrf")
    return {"chrf": sacrebleu.corpus_chrf(list(predictions), [list(targets)]).score}


def chrf_plus_plus(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Corpus chrF++ (character n-grams plus word uni- and bigrams), FLORES' second metric."""
    _check(targets, predictions, "chrf++")
    metric = sacrebleu.metrics.CHRF(word_order=2)
    return {"chrf++": metric.corpus_score(list(predictions), [list(targets)]).score}


def bleu(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Corpus sacreBLEU with the flores101 SentencePiece tokenizer is x-LLaMA's; '13a' here
    because flores101 downloads its model on first use."""
    _check(targets, predictions, "bleu")
    return {"bleu": sacrebleu.corpus_bleu(list(predictions), [list(targets)]).score}


def rouge(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure (rouge-score; its default tokenizer keeps a-z0-9 only,
    so use it for Latin-script summaries)."""
    from rouge_score import rouge_scorer

    _check(targets, predictions, "rouge")
    types = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(types))
    sums = collections.Counter()
    for t, p in zip(targets, predictions, strict=True):
        for name, s in scorer.score(t, p).items():
            sums[name] += s.fmeasure
    return {name: 100.0 * sums[name] / len(targets) for name in types}


def _squad_normalize(text: str) -> str:
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def squad(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """SQuAD exact match and token F1 (MLQA / XQuAD), one reference per example."""
    _check(targets, predictions, "squad")
    em = f1 = 0.0
    for t, p in zip(targets, predictions, strict=True):
        gold, pred = _squad_normalize(t).split(), _squad_normalize(p).split()
        em += float(gold == pred)
        common = sum((collections.Counter(gold) & collections.Counter(pred)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            f1 += 2 * precision * recall / (precision + recall)
        else:
            f1 += float(gold == pred)  # both empty
    return {"squad_exact_match": 100.0 * em / len(targets), "f1": 100.0 * f1 / len(targets)}


METRICS: dict[str, Callable[[Sequence[str], Sequence[str]], dict[str, float]]] = {
    "exact_match": exact_match, "chrf": chrf, "chrf++": chrf_plus_plus, "bleu": bleu,
    "rouge": rouge, "squad": squad,
}


def by_name(names: Sequence[str]) -> list[Callable]:
    """Metric functions for names (gin: EVAL_METRICS); an unknown name is an error."""
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise SettingError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)} (rank "
                           "classification adds 'accuracy' by itself)")
    return [METRICS[n] for n in names]


def accuracy(labels: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """Rank-classification accuracy, a percentage."""
    if len(labels) != len(predictions) or not labels:
        raise MetricInputError(f"accuracy: {len(labels)} labels, {len(predictions)} "
                               "predictions")
    return {"accuracy": 100.0 * sum(int(a == b) for a, b in zip(labels, predictions,
                                                                 strict=True)) / len(labels)}


def over_templates(per_template: Mapping[str, Mapping[str, float]]
                   ) -> dict[str, dict[str, float]]:
    """{'median': {metric: ...}, 'max': {metric: ...}} over prompt templates (the mT0 paper
    reports the median; the max shows the best prompt)."""
    names = sorted({m for scores in per_template.values() for m in scores})
    out: dict[str, dict[str, float]] = {"median": {}, "max": {}}
    for m in names:
        values = [scores[m] for scores in per_template.values() if m in scores]
        out["median"][m] = float(statistics.median(values))
        out["max"][m] = float(max(values))
    return out
