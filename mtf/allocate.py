"""`python -m mtf.allocate pilot|fit|solve`: spend a data budget where it helps most.

x-LLaMA (arXiv 2308.04948) fits, per language, how translation quality grows with the
amount of parallel data, and splits a fixed budget across languages by the fits.

  pilot --gin_file=RECIPE --languages sw,yo --sizes 1000,4000,16000 --task 'T_{language}'
        --metric 'eval/<dataset>/{language}/chrf' [--eval 'E_{language}'] [--seeds 2]
        --output DIR [--gin.NAME=VALUE ...]
        a short run of the recipe per language, size and seed on the first `size` examples
        of the language's task (the rest of the recipe's mixture as it was), scored by the
        recipe's own evaluation: DIR/pilots.jsonl, one row per run (`mtf.allocation.pilots`);
        run again, it runs only what is missing.

  fit   --pilots pilots.jsonl --output fits.json
        rows {"language", "size", "metric", "value"} (more keys allowed; several rows of a
        language and size are seeds): a saturating power law and a log curve per language
        (`mtf.allocation.curves`), each checked by leaving one size out, the better one
        chosen; points and curves drawn next to the output (fits.png). Pilots whose score
        falls with data, or with too few sizes, are refused, naming the language.
  solve --fits fits.json --budget N [--caps sw=50000,yo=20000] [--objective sum|min]
        [--floor K] --output DIR
        examples per language (DIR/allocation.json), a gin file registering the mixture with
        those rates (DIR/allocation.gin: --gin_file it after the recipe; DIR/uniform.gin the
        even split of the same budget, to train beside it), and the predicted scores beside
        the even and a size-proportional split (DIR/predictions.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from mtf import cli, config
from mtf.allocation import curves, pilots, solver
from mtf.errors import MissingFileError, UserError


def _read_pilots(path: str, metric: str | None
                 ) -> tuple[str, dict[str, list], dict[str, str], str | None]:
    """(metric, {language: [(size, value), ...]}, {language: task}, the recipe's mixture)
    from a pilots.jsonl (task and mixture: what `pilot` records, when it ran them)."""
    if not Path(path).exists():
        raise MissingFileError(f"--pilots {path} does not exist")
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append((str(row["language"]), float(row["size"]), str(row["metric"]),
                         float(row["value"]), row.get("task"), row.get("mixture")))
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path} line {number}: not a pilot row ({e}); each line is "
                            '{"language": ..., "size": ..., "metric": ..., "value": ...}'
                            ) from None
    metrics = sorted({r[2] for r in rows})
    if not rows:
        raise UserError(f"{path} has no pilot rows")
    if metric is None:
        if len(metrics) > 1:
            raise UserError(f"{path} holds several metrics {metrics}: choose one with --metric")
        metric = metrics[0]
    elif metric not in metrics:
        raise UserError(f"--metric {metric!r} is not in {path} (it has {metrics})")
    points: dict[str, list] = {}
    tasks: dict[str, str] = {}
    mixtures = {r[5] for r in rows if r[2] == metric}
    for language, size, row_metric, value, task, _ in rows:
        if row_metric == metric:
            points.setdefault(language, []).append((size, value))
            if task:
                tasks[language] = task
    return metric, points, tasks, mixtures.pop() if len(mixtures) == 1 else None


def _plot(fits: Mapping[str, dict], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for language, entry in sorted(fits.items()):
        sizes, values = zip(*entry["points"], strict=True)
        dots = axes.scatter(sizes, values, s=14)
        grid = np.geomspace(min(sizes) / 2, max(sizes) * 4, 200)
        curve = curves.chosen_curve(entry)
        axes.plot(grid, [curve(x) for x in grid], color=dots.get_facecolor()[0],
                  label=f"{language} ({entry['chosen']})")
    axes.set_xscale("log")
    axes.set_xlabel("training examples of the language")
    axes.set_ylabel(metric.replace("{language}", "<language>"))
    axes.set_title("pilot scores and fitted curves (x2-4 beyond: extrapolated)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _numbers(text: str, flag: str) -> list[int]:
    try:
        numbers = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: whole numbers, comma-separated") from None
    if not numbers or min(numbers) <= 0:
        raise UserError(f"{flag} {text!r}: at least one size, each above 0")
    return numbers


def cmd_pilot(args: argparse.Namespace) -> None:
    languages = [k.strip() for k in args.languages.split(",") if k.strip()]
    sweep = pilots.plan(languages, _numbers(args.sizes, "--sizes"), args.seeds, args.task)
    output = Path(args.output)
    for row in pilots.run(args.gin_file, args.bindings, sweep, args.metric,
                          args.lower_is_better, output, args.runs_dir or str(output / "runs"),
                          args.eval, args.validate):
        print(f"pilot {row['language']} {row['size']} seed {row['seed']}: "
              f"{row['metric'].format(language=row['language'])} {row['value']:.4g} at "
              f"step {row['step']}", flush=True)
    print(f"{output / 'pilots.jsonl'} holds {len(pilots.done(output / 'pilots.jsonl'))} of "
          f"{len(sweep)} pilots; next: python -m mtf.allocate fit --pilots "
          f"{output / 'pilots.jsonl'} --output {output / 'fits.json'}")


def cmd_fit(args: argparse.Namespace) -> None:
    metric, points, tasks, mixture = _read_pilots(args.pilots, args.metric)
    fits = {}
    for language, rows in sorted(points.items()):
        sizes, values = zip(*rows, strict=True)
        fits[language] = curves.fit_language(language, sizes, values, args.top,
                                             args.tolerance)
        if language in tasks:
            fits[language]["task"] = tasks[language]
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"metric": metric, "top": args.top, "mixture": mixture,
                                  "languages": fits}, indent=1) + "\n")
    plot = output.with_suffix(".png")
    _plot(fits, metric, plot)
    for language, entry in fits.items():
        errors = ", ".join(f"{form} {v['held_out_rmse']:.3g}" for form, v in
                           entry["forms"].items() if v["held_out_rmse"] is not None)
        params = ", ".join(f"{k}={v:.4g}" for k, v in entry["forms"][entry["chosen"]]
                           ["params"].items())
        print(f"{language}: {entry['chosen']} ({params}); held-out error {errors}")
    print(f"wrote {output} and {plot}")


def _caps(text: str) -> dict[str, int]:
    caps = {}
    for item in filter(None, text.split(",")):
        language, _, number = item.partition("=")
        try:
            caps[language.strip()] = int(number)
        except ValueError:
            raise UserError(f"--caps {text!r}: write language=examples, comma-separated "
                            "(sw=50000,yo=20000)") from None
    return caps


def _gin(allocation: Mapping[str, int], tasks: Mapping[str, str], mixture: str | None,
         command: str) -> str:
    examples = "".join(f"      {tasks[k]!r}: {n},\n" for k, n in allocation.items() if n > 0)
    within = (f"the rest of {mixture} as it was" if mixture else
              "mixed in proportion to their examples")
    return (f"# Written by: {command}\n"
            f"# Each language's task cut to its first allocated examples, {within};\n"
            "# --gin_file it after the recipe.\n"
            "from __gin__ import dynamic_registration\n"
            "from mtf.data import seqio_tasks\n\n"
            "MIXTURE_OR_TASK_NAME = @seqio_tasks.cut_mixture()\n"
            "seqio_tasks.cut_mixture:\n"
            f"  mixture = {mixture!r}\n"
            "  examples = {\n" + examples + "  }\n")


def cmd_solve(args: argparse.Namespace) -> None:
    if not Path(args.fits).exists():
        raise MissingFileError(f"--fits {args.fits} does not exist (python -m mtf.allocate "
                               "fit writes it)")
    data = json.loads(Path(args.fits).read_text())
    fitted = {k: curves.chosen_curve(v) for k, v in data["languages"].items()}
    caps = _caps(args.caps)
    allocation = solver.allocate(fitted, args.budget, caps, args.objective, args.floor)
    tasks = {k: (args.task.format(language=k) if args.task else v.get("task"))
             for k, v in data["languages"].items()}
    missing = sorted(k for k, t in tasks.items() if not t)
    if missing:
        raise UserError(f"no task named for {missing}: pass --task with a {{language}} "
                        "pattern (e.g. --task 'translate_en_{language}')")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "allocation.json").write_text(json.dumps(allocation, indent=1) + "\n")
    command = "python -m mtf.allocate " + " ".join(sys.argv[1:] if args.argv is None
                                                   else args.argv)
    mixture = data.get("mixture") if args.within is None else (args.within or None)
    (out / "allocation.gin").write_text(_gin(allocation, tasks, mixture, command))
    even = solver.uniform(list(fitted), args.budget, caps)
    (out / "uniform.gin").write_text(_gin(even, tasks, mixture, command + " (even split)"))
    rows = {"allocated": allocation, "uniform": even,
            "size-proportional": solver.proportional(list(fitted), args.budget, caps)}
    languages = list(fitted)
    table = [f"| split ({data['metric']}, budget {args.budget}) | "
             + " | ".join(languages) + " | sum | min |",
             "|---" * (len(languages) + 3) + "|"]
    for label, split in rows.items():
        if split is None:
            table.append(f"| {label} | " + " | ".join("-" for _ in languages)
                         + " | (needs --caps for every language) | |")
            continue
        scores = solver.predicted(fitted, split)
        table.append(f"| {label} | " + " | ".join(f"{split[k]} ({scores[k]:.2f})"
                                                  for k in languages)
                     + f" | {sum(scores.values()):.2f} | {min(scores.values()):.2f} |")
    largest = {k: max(v["sizes"]) for k, v in data["languages"].items()}
    beyond = [k for k, n in allocation.items() if n > 4 * largest[k]]
    note = (f"\nExtrapolated more than 4x beyond the largest pilot: {', '.join(beyond)}.\n"
            if beyond else "")
    (out / "predictions.md").write_text("\n".join(table) + "\n" + note)
    print("\n".join(table) + note)
    print(f"wrote {out / 'allocation.json'}, {out / 'allocation.gin'}, {out / 'uniform.gin'}, "
          f"{out / 'predictions.md'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtf.allocate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pilot", help="short runs of the recipe at each size, scored")
    p.add_argument("--gin_file", action="append", required=True, help="the recipe")
    p.add_argument("--languages", required=True, help="sw,yo,...")
    p.add_argument("--sizes", required=True, help="training examples: 1000,4000,16000")
    p.add_argument("--seeds", type=int, default=1, help="runs per language and size")
    p.add_argument("--task", required=True,
                   help="the language's task in the recipe's mixture, a {language} pattern")
    p.add_argument("--metric", required=True,
                   help="a metrics.jsonl key with {language}: validation/loss/{language}, "
                        "eval/<dataset>/{language}/chrf, ...")
    p.add_argument("--eval", default=None,
                   help="each pilot's EVAL_MIXTURE, a {language} pattern (default: the "
                        "recipe's, every language evaluated in every pilot)")
    p.add_argument("--validate", default=None,
                   help="each pilot's VALIDATION_MIXTURE, a {language} pattern: the "
                        "validation loss on its own language's task (with --metric "
                        "'validation/loss/{language}' --lower_is_better)")
    p.add_argument("--lower_is_better", action="store_true",
                   help="a loss: recorded negated (fit it with --top 0)")
    p.add_argument("--output", required=True, help="a folder: pilots.jsonl, gin/")
    p.add_argument("--runs_dir", default=None,
                   help="where the pilots' MODEL_DIRs go, local or gs:// (OUTPUT/runs)")
    p = sub.add_parser("fit", help="a curve per language from pilots.jsonl")
    p.add_argument("--pilots", required=True)
    p.add_argument("--output", required=True, help="fits.json (the PNG goes beside it)")
    p.add_argument("--metric", default=None, help="when pilots.jsonl holds several")
    p.add_argument("--top", type=float, default=100.0,
                   help="the metric's ceiling, which the power law saturates at")
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="how far a mean score may fall between sizes before refusing")
    p = sub.add_parser("solve", help="examples per language under a budget")
    p.add_argument("--fits", required=True)
    p.add_argument("--budget", type=int, required=True, help="training examples in all")
    p.add_argument("--caps", default="", help="examples each language has: sw=50000,...")
    p.add_argument("--objective", choices=solver.OBJECTIVES, default="sum")
    p.add_argument("--floor", type=int, default=0, help="least examples of any language")
    p.add_argument("--task", default=None,
                   help="task name per language, a {language} pattern (default: the task "
                        "the pilots recorded)")
    p.add_argument("--within", default=None,
                   help="the mixture the cut tasks sit in (default: the recipe's, as the "
                        "pilots recorded it; '' for the cut tasks alone)")
    p.add_argument("--output", required=True, help="a folder")
    cli.add_verbose(parser)
    args, rest = parser.parse_known_args(argv)
    args.bindings, unknown = config.split_gin_flags(rest)
    if unknown or (args.bindings and args.command != "pilot"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.argv = None if argv is None else list(argv)
    verbs = {"pilot": cmd_pilot, "fit": cmd_fit, "solve": cmd_solve}
    return cli.run(args.verbose, lambda: verbs[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
