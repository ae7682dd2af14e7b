"""`python -m mtf.allocate fit|solve`: spend a data budget where it helps most.

x-LLaMA (arXiv 2308.04948) fits, per language, how translation quality grows with the
amount of parallel data, and splits a fixed budget across languages by the fits.

  fit   --pilots pilots.jsonl --output fits.json
        rows {"language", "size", "metric", "value"} (more keys allowed; several rows of a
        language and size are seeds): a saturating power law and a log curve per language
        (`mtf.allocation.curves`), each checked by leaving one size out, the better one
        chosen; points and curves drawn next to the output (fits.png). Pilots whose score
        falls with data, or with too few sizes, are refused, naming the language.
  solve --fits fits.json --budget N [--caps sw=50000,yo=20000] [--objective sum|min]
        [--floor K] --output DIR
        examples per language (DIR/allocation.json), a gin file registering the mixture with
        those rates (DIR/allocation.gin: --gin_file it after the recipe), and the predicted
        scores beside a uniform and a size-proportional split (DIR/predictions.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from mtf import cli
from mtf.allocation import curves, solver
from mtf.errors import MissingFileError, UserError


def _read_pilots(path: str, metric: str | None) -> tuple[str, dict[str, list], dict[str, str]]:
    """(metric, {language: [(size, value), ...]}, {language: task}) from a pilots.jsonl."""
    if not Path(path).exists():
        raise MissingFileError(f"--pilots {path} does not exist")
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append((str(row["language"]), float(row["size"]), str(row["metric"]),
                         float(row["value"]), row.get("task")))
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
    for language, size, row_metric, value, task in rows:
        if row_metric == metric:
            points.setdefault(language, []).append((size, value))
            if task:
                tasks[language] = task
    return metric, points, tasks


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
    axes.set_ylabel(metric)
    axes.set_title("pilot scores and fitted curves (x2-4 beyond: extrapolated)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def cmd_fit(args: argparse.Namespace) -> None:
    metric, points, tasks = _read_pilots(args.pilots, args.metric)
    fits = {}
    for language, rows in sorted(points.items()):
        sizes, values = zip(*rows, strict=True)
        fits[language] = curves.fit_language(language, sizes, values, args.top,
                                             args.tolerance)
        if language in tasks:
            fits[language]["task"] = tasks[language]
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"metric": metric, "top": args.top, "languages": fits},
                                 indent=1) + "\n")
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


def _gin(allocation: Mapping[str, int], tasks: Mapping[str, str], name: str,
         command: str) -> str:
    rates = "".join(f"      {tasks[k]!r}: {n},\n" for k, n in allocation.items() if n > 0)
    return (f"# Written by: {command}\n"
            "# Examples per language as mixing rates; --gin_file it after the recipe.\n"
            "from __gin__ import dynamic_registration\n"
            "from mtf.data import seqio_tasks\n\n"
            "MIXTURE_OR_TASK_NAME = @seqio_tasks.rated_mixture()\n"
            "seqio_tasks.rated_mixture:\n"
            f"  name = {name!r}\n"
            "  rates = {\n" + rates + "  }\n")


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
    (out / "allocation.gin").write_text(_gin(allocation, tasks, args.mixture, command))
    rows = {"allocated": allocation,
            "uniform": solver.uniform(list(fitted), args.budget, caps),
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
    print(f"wrote {out / 'allocation.json'}, {out / 'allocation.gin'}, "
          f"{out / 'predictions.md'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtf.allocate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
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
    p.add_argument("--mixture", default="allocated", help="the registered mixture's name")
    p.add_argument("--output", required=True, help="a folder")
    cli.add_verbose(parser)
    args = parser.parse_args(argv)
    args.argv = None if argv is None else list(argv)
    return cli.run(args.verbose, lambda: {"fit": cmd_fit, "solve": cmd_solve}[args.command](
        args))


if __name__ == "__main__":
    sys.exit(main())
