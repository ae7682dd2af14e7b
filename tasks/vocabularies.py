"""The vocabularies tasks are registered with (loaded lazily by seqio: no download here)."""

from __future__ import annotations

import os

import seqio

MT5_VOCABULARY = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"


def mt5(path: str | None = None) -> seqio.SentencePieceVocabulary:
    """mT5's 250k vocabulary, or the model at $MTF_VOCABULARY (e.g. a local copy)."""
    return seqio.SentencePieceVocabulary(
        path or os.environ.get("MTF_VOCABULARY", MT5_VOCABULARY), extra_ids=100)
