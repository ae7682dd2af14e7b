"""Writes an xP3-shaped tree for input benchmarks: `{root}/{lang}/merged_{lang}.jsonl`.

    python bench/xp3_tree.py --output /tmp/xp3_bench [--languages 10] [--records 20000] \
        [--input_chars 2400]

Each record's `inputs` is ~`--input_chars` characters of the language's own CLDR words
(territory and language names in that language, so the text tokenises as that script
does), `targets` a short answer; deterministic for a given seed. xP3 itself cannot be
downloaded here; this tree has its shape (one merged file per language, xmtf's language
codes, ~2.4k-character prompts: xP3's mean input length).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import babel

LANGUAGES = ("en", "es", "pt", "fr", "ar", "id", "zh", "hi", "vi", "sw", "ur", "te", "ta",
             "bn", "yo", "ig")


def words(code: str) -> list[str]:
    locale = babel.Locale.parse(code)
    found = list(locale.territories.values()) + list(locale.languages.values())
    return [w for w in found if w] or ["word"]


def record(rng: random.Random, vocabulary: list[str], input_chars: int) -> dict[str, str]:
    parts, size = [], 0
    while size < input_chars:
        word = rng.choice(vocabulary)
        parts.append(word)
        size += len(word) + 1
    answer = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 12)))
    return {"inputs": " ".join(parts)[:input_chars], "targets": answer}


def write_tree(root: Path, languages: Sequence[str], records: int, input_chars: int,
               seed: int = 0) -> list[Path]:
    paths = []
    for code in languages:
        rng = random.Random(f"{seed}:{code}")
        vocabulary = words(code)
        path = root / code / f"merged_{code}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for _ in range(records):
                f.write(json.dumps(record(rng, vocabulary, input_chars), ensure_ascii=False)
                        + "\n")
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True)
    parser.add_argument("--languages", type=int, default=10,
                        help=f"how many of {','.join(LANGUAGES)} (in that order)")
    parser.add_argument("--records", type=int, default=20_000, help="records per language")
    parser.add_argument("--input_chars", type=int, default=2400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 1 <= args.languages <= len(LANGUAGES):
        parser.error(f"--languages must be 1..{len(LANGUAGES)}")
    paths = write_tree(Path(args.output), LANGUAGES[:args.languages], args.records,
                       args.input_chars, args.seed)
    print(json.dumps({"root": args.output, "files": len(paths), "records": args.records,
                      "bytes": sum(p.stat().st_size for p in paths)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
