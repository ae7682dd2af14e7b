"""Pilot runs: the recipe, trained on the first N examples of one language's task (the rest
of its mixture as it was), and the score its own evaluation gives, one row per run.

Each pilot is an ordinary mtf run in its own MODEL_DIR (local or gs://), started in this
process one after another (their train steps have one shape, so later pilots reuse the
compiled step). A sweep that is stopped resumes: rows already in pilots.jsonl are kept, a
pilot that was cut short resumes from its checkpoint like any run.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import gin

from mtf import config, launch, storage
from mtf.errors import UserError

MIXTURE = "MIXTURE_OR_TASK_NAME"


@dataclasses.dataclass(frozen=True)
class Pilot:
    language: str
    size: int
    seed: int
    task: str

    @property
    def name(self) -> str:
        return f"{self.language}_{self.size}_seed{self.seed}"


def plan(languages: Sequence[str], sizes: Sequence[int], seeds: int, task: str
         ) -> list[Pilot]:
    """Every language x size x seed, smallest sizes first (the cheapest fits come early)."""
    if "{language}" not in task:
        raise UserError(f"--task {task!r} must contain {{language}} (e.g. "
                        "'translate_en_{language}')")
    return [Pilot(lang, size, seed, task.format(language=lang))
            for size in sorted(sizes) for lang in languages for seed in range(seeds)]


def done(path: Path) -> dict[tuple[str, int, int], dict]:
    """The rows already written, by (language, size, seed)."""
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["language"], int(r["size"]), int(r.get("seed", 0))): r for r in rows}


def _recipe_mixture(gin_files: Sequence[str], bindings: Sequence[str]) -> str:
    gin.clear_config()
    config.parse(gin_files, bindings)
    try:
        mixture = gin.query_parameter(f"%{MIXTURE}")
    except ValueError:
        mixture = None
    if not isinstance(mixture, str) or not mixture:
        raise UserError(f"the recipe binds no {MIXTURE}: pilots change its mixture, so "
                        "it needs one")
    return mixture


def _pilot_gin(mixture: str, pilot: Pilot) -> str:
    return ("from __gin__ import dynamic_registration\n"
            "from mtf.data import seqio_tasks\n\n"
            f"{MIXTURE} = @seqio_tasks.cut_mixture()\n"
            "seqio_tasks.cut_mixture:\n"
            f"  mixture = {mixture!r}\n  examples = {{{pilot.task!r}: {pilot.size}}}\n")


def _score(model_dir: str, key: str, language: str) -> tuple[int, float]:
    """(step, value) of the last metrics.jsonl record holding `key`."""
    path = storage.join(model_dir, "metrics.jsonl")
    found, keys = None, set()
    if storage.exists(path):
        for line in storage.read_bytes(path).decode().splitlines():
            if line.strip():
                record = json.loads(line)
                keys.update(record)
                if key in record:
                    found = (int(record["step"]), float(record[key]))
    if found is None:
        near = sorted(k for k in keys if f"/{language}" in k)[:8]
        raise UserError(f"the pilot run {model_dir} logged no {key!r} (its evaluation must "
                        f"measure it: EVAL_PERIOD, the eval mixture); it logged e.g. {near}")
    return found


def run(gin_files: Sequence[str], bindings: Sequence[str], pilots: Sequence[Pilot],
        metric: str, lower_is_better: bool, output: Path, runs_dir: str,
        eval_mixture: str | None = None, validation_mixture: str | None = None
        ) -> Iterator[dict]:
    """Runs each pilot not in `output`/pilots.jsonl yet and appends its row; yields rows.
    eval_mixture, validation_mixture: {language} patterns, the pilot's EVAL_MIXTURE and
    VALIDATION_MIXTURE (its own language's evaluation / validation loss), else the
    recipe's."""
    if "{language}" not in metric:
        raise UserError(f"--metric {metric!r} must contain {{language}}: the pilot's score "
                        "is its own language's (e.g. 'validation/loss/{language}')")
    own = [b for b in bindings if not config.normalize_binding(b).startswith(MIXTURE)]
    mixture = _recipe_mixture(gin_files, bindings)
    output.mkdir(parents=True, exist_ok=True)
    rows_path = output / "pilots.jsonl"
    finished = done(rows_path)
    for pilot in pilots:
        if (pilot.language, pilot.size, pilot.seed) in finished:
            print(f"pilot {pilot.name}: done before, kept")
            continue
        gin_path = output / "gin" / f"{pilot.name}.gin"
        gin_path.parent.mkdir(exist_ok=True)
        gin_path.write_text(_pilot_gin(mixture, pilot))
        model_dir = storage.join(runs_dir, pilot.name)
        print(f"pilot {pilot.name}: {pilot.task}, first {pilot.size} examples, in {model_dir}",
              flush=True)
        evaluation = [f"{macro}={pattern.format(language=pilot.language)!r}"
                      for macro, pattern in (("EVAL_MIXTURE", eval_mixture),
                                             ("VALIDATION_MIXTURE", validation_mixture))
                      if pattern]
        gin.clear_config()
        status = launch.run([*gin_files, str(gin_path)], own + evaluation + [
            f"MODEL_DIR={model_dir!r}", f"SHUFFLE_SEED={pilot.seed}"])
        if status:  # launch has printed why (a bad binding, a loss gone NaN)
            raise SystemExit(status)
        step, value = _score(model_dir, metric.format(language=pilot.language),
                             pilot.language)
        row = {"language": pilot.language, "size": pilot.size, "seed": pilot.seed,
               "metric": ("-" if lower_is_better else "") + metric,
               "value": -value if lower_is_better else value, "step": step,
               "task": pilot.task, "mixture": mixture, "run": model_dir}
        with rows_path.open("a") as f:  # one whole line per pilot: a kill loses no row
            f.write(json.dumps(row) + "\n")
        yield row
    gin.clear_config()
