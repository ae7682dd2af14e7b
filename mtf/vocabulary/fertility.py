"""What a vocabulary costs each language: pieces per character and per word, and the share
of pieces that are unknown or byte fallbacks (text the vocabulary has no piece for)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import sentencepiece as spm
import tokenizers

from mtf import storage
from mtf.errors import MissingFileError, UserError

_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


@dataclasses.dataclass(frozen=True)
class Fertility:
    characters: int
    words: int
    tokens: int
    unknown: int  # the unknown piece (<unk>)
    bytes: int  # byte-fallback pieces (<0xNN>): characters spelled out byte by byte

    @property
    def per_character(self) -> float:
        return self.tokens / max(self.characters, 1)

    @property
    def per_word(self) -> float:
        return self.tokens / max(self.words, 1)

    @property
    def unknown_share(self) -> float:
        return self.unknown / max(self.tokens, 1)

    @property
    def byte_share(self) -> float:
        return self.bytes / max(self.tokens, 1)


class Tokenizer:
    """A SentencePiece model or a `tokenizers` tokenizer.json, reading plain text."""

    def __init__(self, path: str) -> None:
        self.path = path
        if not storage.exists(path):
            raise MissingFileError(f"--vocabulary {path} does not exist")
        data = storage.read_bytes(path)
        if path.endswith(".json"):
            self._bpe = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
            self._sp = None
        else:
            self._sp = spm.SentencePieceProcessor()
            try:
                self._sp.LoadFromSerializedProto(data)
            except RuntimeError as e:
                raise UserError(f"--vocabulary {path} is not a SentencePiece model ({e})"
                                ) from None
            self._bpe = None

    @property
    def size(self) -> int:
        return self._sp.GetPieceSize() if self._sp else self._bpe.get_vocab_size()

    def count(self, text: str) -> tuple[int, int, int]:
        """(tokens, unknown, byte-fallback) of one text."""
        if self._sp is not None:
            ids = self._sp.EncodeAsIds(text)
            unknown = sum(self._sp.IsUnknown(i) for i in ids)
            return len(ids), unknown, sum(self._sp.IsByte(i) for i in ids)
        tokens = self._bpe.encode(text, add_special_tokens=False).tokens
        return (len(tokens), sum(t == "<unk>" for t in tokens),
                sum(bool(_BYTE_PIECE.fullmatch(t)) for t in tokens))


def fertility(tokenizer: Tokenizer, lines: Iterable[str]) -> Fertility:
    characters = words = tokens = unknown = byte_pieces = 0
    for line in lines:
        text = line.strip()
        if not text:
            continue
        n, unk, byt = tokenizer.count(text)
        characters += len(text.replace(" ", ""))
        words += len(text.split())
        tokens, unknown, byte_pieces = tokens + n, unknown + unk, byte_pieces + byt
    return Fertility(characters, words, tokens, unknown, byte_pieces)


def read_corpus(specs: Sequence[str]) -> dict[str, list[str]]:
    """{language: lines} from `LANG=PATH` or `PATH` (the language is the file's name
    without its extension: `corpus/sw.txt` is Swahili); plain text, one line per text."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        language, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        language = language or Path(path).name.split(".")[0]
        if not storage.exists(path):
            raise MissingFileError(f"--corpus {path} does not exist")
        out.setdefault(language, []).extend(
            line for line in storage.read_bytes(path).decode("utf-8").splitlines()
            if line.strip())
    return out


def table(corpus: Mapping[str, Sequence[str]], vocabularies: Sequence[Tokenizer],
          names: Sequence[str] | None = None) -> str:
    """A markdown table: one row per language, per vocabulary (named by its file, or
    `names`) its pieces per character and per word and its unknown and byte-fallback
    shares."""
    names = names or [Path(v.path).name if sum(Path(w.path).name == Path(v.path).name
                                               for w in vocabularies) == 1 else v.path
                      for v in vocabularies]
    head = ["language", "characters"] + [
        f"{n} {what}" for n in names for what in ("tok/char", "tok/word", "unk %", "byte %")]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for language, lines in corpus.items():
        cells = [language]
        for i, v in enumerate(vocabularies):
            f = fertility(v, lines)
            if i == 0:
                cells.append(str(f.characters))
            cells += [f"{f.per_character:.3f}", f"{f.per_word:.2f}",
                      f"{100 * f.unknown_share:.1f}", f"{100 * f.byte_share:.1f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)
