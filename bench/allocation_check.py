"""Does the allocation `python -m mtf.allocate` solves for beat an even split, at small scale?

    python bench/allocation_check.py [--languages sw,yo] [--sizes 16,64,256,1000]
        [--seeds 2] [--steps 150] [--budget 400] [--tolerance 1.0] [--finals 2]
        [--out /tmp/mtf/allocation_check]

Pilots of the tiny model (gin/mt0_tiny.gin, the mini-xP3 smoke mixture) at each size and
seed, each scored by the loss on its own language's validation split (recorded negated:
higher is better); `fit --top 0`; `solve` at the budget with every language capped at the
data it has; then the allocated and the even split trained for the same steps,
`--finals` seeds each, and scored by each language's loss on the smoke mixture's
validation split. (Generation metrics of the tiny model at these steps are ~0 chrF.) Prints (and
writes to OUT/report.md) predicted beside measured scores and the pilots' seed noise.
Everything is an ordinary `python -m mtf.*` command; minutes per pilot on 2 CPUs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRIC = "validation/loss/{language}"
SMOKE = "--gin.MIXTURE_OR_TASK_NAME='mini_xp3_smoke'"  # the pilots' recipe mixture
COMMON = ["--gin_file=gin/mt0_tiny.gin",
          "--gin.EVAL_MIXTURE=None", "--gin.CHECKPOINT_PERIOD=1000",
          "--gin.KEEP_CHECKPOINTS=1", "--gin.LOG_PERIOD=50"]


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def _sizes(languages: list[str]) -> dict[str, int]:
    """Each language task's training examples: its cap."""
    code = ("import json, seqio, tasks; print(json.dumps({l: seqio.get_mixture_or_task("
            f"'mini_xp3_' + l).source.train_size() for l in {languages!r}}}))")
    return json.loads(_run("-c", code).strip().splitlines()[-1])


def _final(model_dir: Path, language: str) -> float:
    key = METRIC.format(language=language)
    rows = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    return -[r[key] for r in rows if key in r][-1]  # negated, as the pilots record it


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--languages", default="sw,yo")
    parser.add_argument("--sizes", default="16,64,256,1000")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--budget", type=int, default=400)
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="fit's: how far a mean pilot score may dip between sizes")
    parser.add_argument("--finals", type=int, default=2)
    parser.add_argument("--out", default="/tmp/mtf/allocation_check")
    args = parser.parse_args()
    out, languages = Path(args.out), args.languages.split(",")
    steps = [f"--gin.TRAIN_STEPS={args.steps}", f"--gin.EVAL_PERIOD={args.steps}"]
    _run("-m", "mtf.allocate", "pilot", *COMMON, SMOKE, *steps, "--languages", args.languages,
         "--sizes", args.sizes, "--seeds", str(args.seeds), "--task", "mini_xp3_{language}",
         "--validate", "mini_xp3_{language}", "--metric", METRIC, "--lower_is_better",
         "--gin.EVAL_STEPS=4", "--output", str(out / "pilots"))
    _run("-m", "mtf.allocate", "fit", "--pilots", str(out / "pilots" / "pilots.jsonl"),
         "--output", str(out / "fits.json"), "--tolerance", str(args.tolerance), "--top", "0")
    caps = _sizes(languages)
    _run("-m", "mtf.allocate", "solve", "--fits", str(out / "fits.json"), "--budget",
         str(args.budget), "--caps", ",".join(f"{k}={v}" for k, v in caps.items()),
         "--output", str(out / "solved"))
    fits = json.loads((out / "fits.json").read_text())
    predicted_md = (out / "solved" / "predictions.md").read_text()
    measured: dict[str, dict[str, list[float]]] = {}
    for split in ("allocation", "uniform"):
        for seed in range(args.finals):
            model_dir = out / "final" / f"{split}_seed{seed}"
            if not (model_dir / "metrics.jsonl").exists() or not any(
                    METRIC.format(language=languages[0]) in line for line in
                    (model_dir / "metrics.jsonl").read_text().splitlines()):
                # the split's gin file binds MIXTURE_OR_TASK_NAME: the smoke mixture with
                # each language's task cut to its share
                split_gin = f"--gin_file={out / 'solved' / f'{split}.gin'}"
                _run("-m", "mtf.launch", COMMON[0], split_gin, *COMMON[1:], *steps,
                     f"--gin.MODEL_DIR='{model_dir}'", f"--gin.SHUFFLE_SEED={seed}",
                     "--gin.VALIDATION_MIXTURE='mini_xp3_smoke'", "--gin.EVAL_STEPS=30")
            for language in languages:
                measured.setdefault(split, {}).setdefault(language, []).append(
                    _final(model_dir, language))
    allocation = json.loads((out / "solved" / "allocation.json").read_text())
    lines = [f"Pilots: {', '.join(languages)} at {args.sizes} examples, {args.seeds} seeds, "
             f"{args.steps} steps each; budget {args.budget}; score: minus the loss on the "
             "language's validation examples (higher is better).", "",
             "Predicted (from the fits):", "", predicted_md, "",
             f"Measured ({args.finals} seeds each, mean ± standard deviation):", "",
             "| split | " + " | ".join(languages) + " | sum |", "|---" * (len(languages) + 2)
             + "|"]
    sums = {}
    for split, label in (("allocation", "allocated"), ("uniform", "uniform")):
        per = measured[split]
        totals = [sum(per[k][i] for k in languages) for i in range(args.finals)]
        sums[label] = (statistics.mean(totals), statistics.stdev(totals))
        lines.append(f"| {label} | " + " | ".join(
            f"{statistics.mean(per[k]):.2f} ± {statistics.stdev(per[k]):.2f}"
            for k in languages) + f" | {sums[label][0]:.2f} ± {sums[label][1]:.2f} |")
    noise = {k: v["seed_std"] for k, v in fits["languages"].items()}
    gap = sums["allocated"][0] - sums["uniform"][0]
    spread = (sums["allocated"][1] ** 2 + sums["uniform"][1] ** 2) ** 0.5
    verdict = ("allocation won" if gap > spread else "allocation lost" if gap < -spread
               else "no difference beyond the seeds' spread")
    lines += ["", f"Allocation: {allocation}. Pilots' seed noise (standard deviation at a "
              f"size, mean over sizes): {noise}.", "",
              f"Measured sum, allocated minus uniform: {gap:+.3f} (seed spread "
              f"{spread:.3f}): {verdict}."]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
