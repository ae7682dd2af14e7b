"""`python -m mtf.tasks`: inspect registered tasks and mixtures.

    python -m mtf.tasks list [--filter xp3]
    python -m mtf.tasks show mini_xp3 [-n 3] [--split train]
    python -m mtf.tasks lengths mini_xp3 --inputs 128 --targets 32 [--max_examples 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence


def _provider(name: str):
    import seqio

    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        known = sorted(seqio.TaskRegistry.names() | seqio.MixtureRegistry.names())
        raise SystemExit(f"error: no task or mixture named {name!r}; `python -m mtf.tasks "
                         f"list` shows the {len(known)} registered ones") from None


def _examples(task, split: str, limit: int | None):
    """Examples of `split`, or of the task's only split (held-out tasks are validation)."""
    if split not in task.splits:
        split = task.splits[0]
    ds = task.get_dataset(sequence_length=None, split=split, shuffle=False,
                          num_epochs=1, use_cached=False)
    if limit:
        ds = ds.take(limit)
    return ds.as_numpy_iterator()


def _task_languages(task, split: str, limit: int = 200) -> list[str]:
    from mtf.data import languages

    ids = {int(e["language_id"]) for e in _examples(task, split, limit) if "language_id" in e}
    return sorted(languages.language_from_id(i) for i in ids)


def cmd_list(args: argparse.Namespace) -> None:
    import seqio

    from mtf.data import mixing

    for name in sorted(seqio.MixtureRegistry.names()):
        if args.filter and args.filter not in name:
            continue
        mixture = seqio.get_mixture_or_task(name)
        rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
        total = sum(rates.values()) or 1.0
        top = sorted(rates.items(), key=lambda kv: -kv[1])[:5]
        shown = ", ".join(f"{n} {r / total:.3f}" for n, r in top)
        print(f"mixture {name}: {len(rates)} tasks; top rates: {shown}")
    for name in sorted(seqio.TaskRegistry.names()):
        if args.filter and args.filter not in name:
            continue
        task = seqio.get_mixture_or_task(name)
        try:
            size = mixing.size(name)
        except KeyError:
            size = "?"
        langs = ",".join(_task_languages(task, task.splits[0])) if args.languages else ""
        print(f"task {name}: splits {','.join(task.splits)}; train examples {size}"
              + (f"; languages {langs}" if langs else ""))


def cmd_show(args: argparse.Namespace) -> None:
    from mtf.data import seqio_tasks

    provider = _provider(args.name)
    tasks = seqio_tasks.tasks_of(provider)
    vocab = tasks[0].output_features["targets"].vocabulary
    shown = 0
    per_task = args.n if len(tasks) == 1 else 1
    for task in tasks[:args.n]:
        for e in _examples(task, args.split, per_task):
            if shown >= args.n:
                return
            shown += 1
            print(json.dumps({
                "task": task.name, "language": e["language"].decode(),
                "template": e["template"].decode(),
                "inputs": e["inputs_pretokenized"].decode(),
                "targets": e["targets_pretokenized"].decode(),
                "input_tokens": len(e["inputs"]), "target_tokens": len(e["targets"]),
                "input_pieces": [vocab.decode([int(t)]) for t in e["inputs"][:24]],
            }, ensure_ascii=False))


def cmd_lengths(args: argparse.Namespace) -> None:
    from mtf.data import seqio_tasks

    provider = _provider(args.name)
    lengths = {"inputs": args.inputs, "targets": args.targets}
    seen, over = Counter(), Counter()
    for task in seqio_tasks.tasks_of(provider):
        for e in _examples(task, args.split, args.max_examples):
            seen[task.name] += 1
            for key in ("inputs", "targets"):
                if len(e[key]) > lengths[key]:
                    over[key] += 1
                    over[f"{task.name}:{key}"] += 1
    total = sum(seen.values())
    print(json.dumps({"examples": total, "feature_lengths": lengths,
                      "truncated_inputs": over["inputs"], "truncated_targets": over["targets"],
                      "truncated_fraction": {k: round(over[k] / max(total, 1), 4)
                                             for k in ("inputs", "targets")}}))
    worst = sorted(((k, v) for k, v in over.items() if ":" in k), key=lambda kv: -kv[1])[:5]
    for key, count in worst:
        print(f"  {key}: {count} of {seen[key.split(':')[0]]} examples exceed the length")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mtf.tasks", description=__doc__)
    parser.add_argument("--skip_bad_records", action="store_true",
                        help="skip malformed records (their count is reported)")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="registered mixtures (rates) and tasks (sizes)")
    p.add_argument("--filter", default="")
    p.add_argument("--languages", action="store_true", help="also read each task's languages")
    p = sub.add_parser("show", help="rendered examples with their tokens")
    p.add_argument("name")
    p.add_argument("-n", type=int, default=3)
    p.add_argument("--split", default="train")
    p = sub.add_parser("lengths", help="how many examples exceed the feature lengths")
    p.add_argument("name")
    p.add_argument("--inputs", type=int, default=1024)
    p.add_argument("--targets", type=int, default=1024)
    p.add_argument("--split", default="train")
    p.add_argument("--max_examples", type=int, default=2000)
    parser.add_argument("--verbose", action="store_true",
                        help="keep TensorFlow's, absl's and libtpu's start-up messages")
    args = parser.parse_args(argv)
    from mtf import quiet

    quiet.start(args.verbose)
    import tasks  # noqa: F401  registers everything
    from mtf.data import records

    records.skip_bad_records_for_the_run(args.skip_bad_records)
    {"list": cmd_list, "show": cmd_show, "lengths": cmd_lengths}[args.command](args)
    if records.SKIPPED.total:
        print(records.SKIPPED.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
