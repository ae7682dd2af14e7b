"""The vocabularies tasks are registered with (loaded lazily: nothing is read at import)."""

from __future__ import annotations

import os

import seqio

from mtf import storage
from mtf.errors import MissingFileError

MT5_VOCABULARY = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"


class VocabularyError(storage.StorageError):
    """The SentencePiece model cannot be read; the message names MTF_VOCABULARY."""


class StoredSentencePieceVocabulary(seqio.SentencePieceVocabulary):
    """A SentencePiece vocabulary whose model file may live on gs://: it is read through
    `mtf.storage` (seqio would read it with TensorFlow's GCS client) into a local cache at
    first use, and an unreadable model names MTF_VOCABULARY instead of failing inside seqio."""

    def __init__(self, sentencepiece_model_file: str, **kwargs):
        super().__init__(sentencepiece_model_file, **kwargs)
        self.source = sentencepiece_model_file  # as given (the file read may be a cached copy)

    def _model_context(self):
        if not self._model:
            source = self._sentencepiece_model_file
            try:
                self._sentencepiece_model_file = storage.local_copy(source)
                if not os.path.exists(self._sentencepiece_model_file):
                    raise MissingFileError(f"{source} does not exist")
            except OSError as e:
                raise VocabularyError(
                    f"cannot read the SentencePiece vocabulary {source} ({e}). On a machine "
                    "without access to it, copy sentencepiece.model to a local file and set "
                    "MTF_VOCABULARY=/path/to/sentencepiece.model") from None
        return super()._model_context()


def mt5(path: str | None = None) -> seqio.SentencePieceVocabulary:
    """mT5's 250k vocabulary, or the model at $MTF_VOCABULARY (e.g. a local copy)."""
    return StoredSentencePieceVocabulary(
        path or os.environ.get("MTF_VOCABULARY", MT5_VOCABULARY), extra_ids=100)
