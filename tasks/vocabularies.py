"""The vocabularies tasks are registered with (loaded lazily: nothing is read at import)."""

from __future__ import annotations

import os

import numpy as np
import seqio
import tensorflow as tf
import tokenizers

from mtf import storage
from mtf.errors import MissingFileError
from mtf.vocabulary import pieces

MT5_VOCABULARY = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"


class VocabularyError(storage.StorageError):
    """The SentencePiece model cannot be read; the message names MTF_VOCABULARY."""


class StoredSentencePieceVocabulary(seqio.SentencePieceVocabulary):
    """A SentencePiece vocabulary whose model file may live on gs://: it is read through
    `mtf.storage` (seqio would read it with TensorFlow's GCS client) into a local cache at
    first use, and an unreadable model names MTF_VOCABULARY instead of failing inside seqio.
    A model that already holds the sentinels (`mtf.vocab extend` writes them before its
    new pieces, at the ids they had) gets none appended."""

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
            with open(self._sentencepiece_model_file, "rb") as f:
                holds = self._extra_ids and pieces.holds_sentinels(f.read(), self._extra_ids)
            if holds:  # an extended model (mtf.vocab extend): its sentinels are written out
                self._model = seqio.vocabularies._load_model(  # the loader, adding none
                    self._sentencepiece_model_file, 0, None, self._reverse_extra_ids)
        return super()._model_context()


class TokenizerJsonVocabulary(seqio.Vocabulary):
    """A Hugging Face `tokenizers` file (tokenizer.json: BLOOM's and Llama 3's byte-level
    BPE) as a seqio vocabulary, so every registered task can be read with it. Text is
    encoded without special tokens (the decoder-only converter puts the model's BOS
    first and the tasks' features add EOS); EOS is the file's end-of-text token."""

    EOS_TOKENS = ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>")

    def __init__(self, path: str) -> None:
        self.source = path
        self._tokenizer = None
        super().__init__(extra_ids=0)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            try:
                data = storage.read_bytes(self.source).decode("utf-8")
                self._tokenizer = tokenizers.Tokenizer.from_str(data)
            except Exception as e:  # tokenizers raises its own errors for a bad file
                raise VocabularyError(f"cannot read the tokenizer {self.source} ({e}); set "
                                      "MTF_VOCABULARY to the model's tokenizer.json") from None
        return self._tokenizer

    @property
    def eos_id(self) -> int:
        for token in self.EOS_TOKENS:
            found = self.tokenizer.token_to_id(token)
            if found is not None:
                return int(found)
        raise VocabularyError(f"{self.source} has none of the end-of-text tokens "
                              f"{self.EOS_TOKENS}")

    @property
    def unk_id(self) -> int | None:
        return self.tokenizer.token_to_id("<unk>")

    @property
    def _base_vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def _encode(self, s: str) -> list[int]:
        return list(self.tokenizer.encode(s, add_special_tokens=False).ids)

    def _decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids if int(i) >= 0],
                                     skip_special_tokens=True)

    def _encode_tf(self, s):
        def encode(text) -> np.ndarray:  # bytes (tf.data) or a 0-d array of them (eager)
            raw = text.item() if isinstance(text, np.ndarray) else text
            return np.asarray(self._encode(raw.decode("utf-8")), np.int32)

        ids = tf.numpy_function(encode, [s], tf.int32, stateful=False)
        return tf.ensure_shape(ids, [None])

    def _decode_tf(self, ids):
        """ids [..., length] -> strings [...] (seqio decodes batches)."""
        def decode(batch):
            rows = batch.reshape(-1, batch.shape[-1]) if batch.size else batch.reshape(1, 0)
            texts = [self._decode(row.tolist()).encode("utf-8") for row in rows]
            return np.asarray(texts, object).reshape(batch.shape[:-1])

        texts = tf.numpy_function(decode, [ids], tf.string, stateful=False)
        return tf.ensure_shape(texts, ids.shape[:-1])

    def __eq__(self, other) -> bool:
        return isinstance(other, TokenizerJsonVocabulary) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)


def mt5(path: str | None = None) -> seqio.Vocabulary:
    """The tasks' vocabulary: mT5's 250k SentencePiece model, or the file at
    $MTF_VOCABULARY (a local copy; another model's SentencePiece `.model`, e.g. LLaMA's;
    or a `tokenizers` `tokenizer.json`, e.g. BLOOM's)."""
    path = path or os.environ.get("MTF_VOCABULARY", MT5_VOCABULARY)
    if path.endswith(".json"):
        return TokenizerJsonVocabulary(path)
    return StoredSentencePieceVocabulary(path, extra_ids=100)
