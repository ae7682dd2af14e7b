"""Does extending the vocabulary for a language it splits badly help, at small scale?

    python bench/vocab_extension.py [--language gu] [--new_pieces 1000] [--base_steps 300]
        [--steps 100] [--seeds 2] [--out /tmp/mtf/vocab_extension]

A tiny mT0 (gin/mt0_tiny.gin) trained on the whole mini-xP3 is the base; `python -m
mtf.vocab extend` adds pieces trained on CLDR's names in the language (nine in ten; the
tenth measures fertility); the base and its extension are then finetuned alike on the
language's mini-xP3 task, `--seeds` runs each, and scored on the language's held-out task
(rank classification: accuracy, chance 25%; generation: chrF). Per-token losses are left
out: the two tokenise differently. Prints (and writes to OUT/report.md) the fertility table
and both held-out results. Every step is an ordinary `python -m mtf.*` command.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_VOCABULARY = str(REPO / "tasks" / "vocab" / "mini_xp3.model")
COMMON = ["--gin_file=gin/mt0_tiny.gin", "--gin.CHECKPOINT_PERIOD=1000",
          "--gin.KEEP_CHECKPOINTS=1", "--gin.LOG_PERIOD=50"]


def _run(*args: str, vocabulary: str = BASE_VOCABULARY) -> str:
    env = dict(os.environ, MTF_VOCABULARY=vocabulary, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          env=env)
    if done.returncode:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def _corpus(language: str, out: Path) -> tuple[Path, Path]:
    """CLDR's names in the language: nine in ten to train pieces on, the tenth to measure."""
    from mtf.data import cldr

    names = cldr.corpus(language)
    held = [t for t in names if zlib.crc32(t.encode()) % 10 == 0]
    out.mkdir(parents=True, exist_ok=True)
    train_file, held_file = out / f"{language}.txt", out / f"{language}.heldout.txt"
    train_file.write_text("\n".join(t for t in names if t not in held) + "\n")
    held_file.write_text("\n".join(held) + "\n")
    return train_file, held_file


def _results(model_dir: Path, step: int, language: str) -> dict[str, float]:
    """Accuracy (rank classification) and chrF (generation) on the held-out task: the
    median over its prompt templates, as results.json reports it."""
    results = json.loads((model_dir / "eval" / f"step_{step}" / "results.json").read_text())
    found: dict[str, float] = {}
    for by_language in results["results"].values():
        median = by_language.get(language, {}).get("median", {})
        found.update({m: float(median[m]) for m in ("accuracy", "chrf") if m in median})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--language", default="gu")
    parser.add_argument("--new_pieces", type=int, default=1000)
    parser.add_argument("--base_steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", default="/tmp/mtf/vocab_extension")
    args = parser.parse_args()
    out, language = Path(args.out), args.language
    train_file, held_file = _corpus(language, out / "corpus")
    base = out / "base"
    if not (base / "metrics.jsonl").exists():
        _run("-m", "mtf.launch", *COMMON, f"--gin.MODEL_DIR='{base}'",
             f"--gin.TRAIN_STEPS={args.base_steps}", "--gin.EVAL_PERIOD=None")
    extended = out / "extended"
    if not (extended / "vocabulary.model").exists():
        print(_run("-m", "mtf.vocab", "extend", "--checkpoint", str(base), "--corpus",
                   f"{language}={train_file}", "--new_pieces", str(args.new_pieces),
                   "--output", str(extended)))
    vocabulary = str(extended / "vocabulary.model")
    fertility = _run("-m", "mtf.vocab", "report", "--corpus", f"{language}={held_file}",
                     "--vocabulary", BASE_VOCABULARY, "--vocabulary", vocabulary)
    rows = json.loads((extended / "config.json").read_text())["vocab_size"]
    measured: dict[str, dict[str, list[float]]] = {}
    for label, start, vocab, embeddings in (("base vocabulary", base, BASE_VOCABULARY, 4224),
                                            ("extended", extended, vocabulary, rows)):
        for seed in range(args.seeds):
            model_dir = out / "finetune" / f"{label.split()[0]}_seed{seed}"
            if not (model_dir / "eval" / f"step_{args.steps}" / "results.json").exists():
                _run("-m", "mtf.launch", *COMMON, f"--gin.MODEL_DIR='{model_dir}'",
                     f"--gin.INITIAL_CHECKPOINT_PATH='{start}'",
                     f"--gin.NUM_EMBEDDINGS={embeddings}",
                     f"--gin.MIXTURE_OR_TASK_NAME='mini_xp3_{language}'",
                     f"--gin.EVAL_MIXTURE='mini_xp3_heldout_currency_{language}'",
                     f"--gin.TRAIN_STEPS={args.steps}", f"--gin.EVAL_PERIOD={args.steps}",
                     "--gin.EVAL_MAX_EXAMPLES=None", f"--gin.SHUFFLE_SEED={seed}",
                     vocabulary=vocab)
            for metric, value in _results(model_dir, args.steps, language).items():
                measured.setdefault(label, {}).setdefault(metric, []).append(value)
    lines = [f"Language {language}: `mtf.vocab extend --new_pieces {args.new_pieces}` on "
             f"CLDR's {language} names (nine in ten); fertility measured on the tenth:", "",
             fertility.strip(), "",
             f"Held-out {language} (mini_xp3_heldout_currency_{language}) after "
             f"{args.base_steps} steps on mini-xP3 and {args.steps} on mini_xp3_{language}, "
             f"{args.seeds} seeds each (mean ± standard deviation):", "",
             "| model | accuracy % (chance 25) | chrF |", "|---|---|---|"]
    for label, metrics in measured.items():
        cells = [f"{statistics.mean(v):.1f} ± {statistics.pstdev(v):.1f}"
                 for v in (metrics.get("accuracy", [float("nan")]),
                           metrics.get("chrf", [float("nan")]))]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
