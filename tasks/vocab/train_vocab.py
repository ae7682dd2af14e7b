"""Trains the mini-xP3 SentencePiece vocabulary (committed as tasks/vocab/mini_xp3.model).

    python -m tasks.vocab.train_vocab [--vocab_size 4096] [--output tasks/vocab/mini_xp3]

T5's conventions: pad 0, eos 1, unk 2, no bos; byte fallback so that no character of any
script is unknown; the 100 sentinel ids are added on top by seqio (extra_ids=100).
Trained on every rendered example of the mini-xP3, held-out parts included, as mT5's
vocabulary covers languages that finetuning never sees.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import sentencepiece as spm

from tasks import mini_xp3

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "mini_xp3"


def corpus() -> list[str]:
    lines: set[str] = set()
    for language in mini_xp3.LANGUAGES + mini_xp3.HELDOUT_LANGUAGES:
        for e in mini_xp3.examples(language, tuple(mini_xp3.TASK_TYPES)):
            lines.update((e["inputs"], e["targets"]))
    return sorted(lines)


def train(output_prefix: str | Path = DEFAULT_OUTPUT, vocab_size: int = 4096) -> Path:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", character_coverage=0.9995, byte_fallback=True,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, input_sentence_size=0,
        shuffle_input_sentence=False, split_digits=True, minloglevel=2)
    path = Path(f"{output_prefix}.model")
    path.write_bytes(model.getvalue())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab_size", type=int, default=4096)
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="path without .model")
    args = parser.parse_args()
    path = train(args.output, args.vocab_size)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
