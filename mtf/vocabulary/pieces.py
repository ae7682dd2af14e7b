"""A SentencePiece model extended with pieces trained on a corpus, every old id kept.

seqio reads mT5's model with 100 sentinels appended as pieces (`▁<extra_id_99>` ...
`▁<extra_id_0>`, ids 250000-250099): an extended model therefore holds the base pieces,
then those sentinels written out as seqio would add them, then the new pieces, and is read
with no sentinels added again (`holds_sentinels`). New pieces are unigram pieces of a model
trained on the corpus (the `sentencepiece` trainer), keep that model's log-probability as
their score, and are taken best first among those the base lacks.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterable, Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from mtf.errors import UserError

Piece = model_pb2.ModelProto.SentencePiece
SENTINELS = 100  # T5's span-corruption sentinels, seqio's extra_ids
_RULES = ("nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf", "identity")  # the trainer's built-ins


def sentinel_piece(i: int) -> str:
    return f"▁<extra_id_{i}>"


def load(model: bytes) -> model_pb2.ModelProto:
    try:
        return model_pb2.ModelProto.FromString(model)
    except Exception as e:  # protobuf's DecodeError
        raise UserError(f"not a SentencePiece model ({e})") from None


def sentinel_start(proto: model_pb2.ModelProto, sentinels: int = SENTINELS) -> int | None:
    """The id of `▁<extra_id_{sentinels-1}>` when the model already holds seqio's
    sentinels in seqio's order (an extended model), else None."""
    if not sentinels:
        return None
    names = {p.piece: i for i, p in enumerate(proto.pieces)
             if p.type == Piece.USER_DEFINED and p.piece.startswith("▁<extra_id_")}
    start = names.get(sentinel_piece(sentinels - 1))
    if start is None or any(names.get(sentinel_piece(sentinels - 1 - k)) != start + k
                            for k in range(sentinels)):
        return None
    return start


def holds_sentinels(model: bytes, sentinels: int = SENTINELS) -> bool:
    return sentinel_start(load(model), sentinels) is not None


@dataclasses.dataclass(frozen=True)
class Extension:
    model: bytes  # the extended SentencePiece model, sentinels included
    first_new_id: int  # the id of the first new piece: the base's ids, sentinels included
    added: tuple[str, ...]  # the new pieces, in id order

    @property
    def size(self) -> int:
        return self.first_new_id + len(self.added)


def _train_candidates(corpus: Sequence[str], size: int, base: model_pb2.ModelProto
                      ) -> list[Piece]:
    """A unigram model of `size` pieces trained on the corpus with the base's normaliser;
    its ordinary pieces, best first."""
    trained = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus), model_writer=trained, vocab_size=size,
            model_type="unigram", character_coverage=1.0, hard_vocab_limit=False,
            normalization_rule_name=(base.normalizer_spec.name if base.normalizer_spec.name
                                     in _RULES else "nmt_nfkc"),
            split_digits=base.trainer_spec.split_digits, num_threads=1,
            input_sentence_size=0, shuffle_input_sentence=False, minloglevel=2,
            max_sentencepiece_length=base.trainer_spec.max_sentencepiece_length or 16)
    except RuntimeError as e:
        raise UserError(f"SentencePiece could not train on the corpus ({e}); a corpus of a "
                        "few thousand lines of the language is enough") from None
    pieces = [p for p in load(trained.getvalue()).pieces if p.type == Piece.NORMAL]
    return sorted(pieces, key=lambda p: -p.score)


def extend(base_model: bytes, corpus: Iterable[str], new_pieces: int,
           sentinels: int = SENTINELS) -> Extension:
    """`base_model` with up to `new_pieces` pieces of the corpus it lacks, after its
    `sentinels` (written out when the base does not hold them yet; 0 for a model whose
    embedding has no rows for them, as LLaMA's 32000: seqio then appends them after the new
    pieces, as it did after the old ones)."""
    if new_pieces < 1:
        raise UserError(f"--new_pieces {new_pieces}: at least 1")
    lines = [line for line in (s.strip() for s in corpus) if line]
    if not lines:
        raise UserError("the corpus has no text")
    proto = load(base_model)
    if sentinels and sentinel_start(proto, sentinels) is None:
        for i in reversed(range(sentinels)):
            proto.pieces.add(piece=sentinel_piece(i), score=0.0, type=Piece.USER_DEFINED)
    base_size = len(proto.pieces)
    known = {p.piece for p in proto.pieces}
    # more than asked: many of the corpus's pieces are in the base already (and the trainer
    # caps a small corpus's vocabulary below what is asked: hard_vocab_limit off)
    candidates = _train_candidates(lines, 3 * new_pieces + 256, proto)
    added = []
    for p in candidates:
        if p.piece not in known and p.piece != "▁":
            added.append(p)
            known.add(p.piece)
        if len(added) == new_pieces:
            break
    for p in added:
        proto.pieces.add(piece=p.piece, score=p.score, type=Piece.NORMAL)
    return Extension(proto.SerializeToString(), base_size, tuple(p.piece for p in added))


def splitter(base_model: bytes) -> spm.SentencePieceProcessor:
    """The base model reading a piece as it appears inside text: no `▁` added in front,
    spaces kept (so `▁word` and `word` split as they would mid-sentence)."""
    proto = load(base_model)
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    processor = spm.SentencePieceProcessor()
    processor.LoadFromSerializedProto(proto.SerializeToString())
    return processor


def base_ids(base_model: bytes, pieces: Sequence[str]) -> list[list[int]]:
    """The ids the base model splits each piece into (what a new piece's row starts from)."""
    processor = splitter(base_model)
    return [processor.EncodeAsIds(p.replace("▁", " ")) for p in pieces]
