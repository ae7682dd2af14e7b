"""seqio metric functions for generation tasks: exact match and chrF (sacreBLEU)."""

from __future__ import annotations

from collections.abc import Sequence

import sacrebleu


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Percentage of predictions equal to their target after stripping whitespace."""
    if len(targets) != len(predictions):
        raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
    hits = sum(t.strip() == p.strip() for t, p in zip(targets, predictions, strict=True))
    return {"exact_match": 100.0 * hits / max(len(targets), 1)}


def chrf(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Corpus chrF: character n-grams suit short terms in many scripts better than BLEU."""
    return {"chrf": sacrebleu.corpus_chrf(list(predictions), [list(targets)]).score}


def bleu(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Corpus sacreBLEU with the flores101 SentencePiece tokenizer is x-LLaMA's; '13a' here
    because flores101 downloads its model on first use."""
    return {"bleu": sacrebleu.corpus_bleu(list(predictions), [list(targets)]).score}
