"""`python -m mtf.tasks`: inspect registered tasks and mixtures.

    python -m mtf.tasks list [--filter xp3]
    python -m mtf.tasks show mini_xp3 [-n 3] [--split train]
    python -m mtf.tasks lengths mini_xp3 --inputs 128 --targets 32 [--max_examples 2000]
    python -m mtf.tasks cache --mixture xp3 --output gs://bucket/xp3_cache \
        [--inputs 1024 --targets 1024] [--shards N] [--workers N] \
        [--process_index i --process_count n]

`cache` tokenises a mixture's training split once into a token cache that runs read with
DATA_CACHE_DIR (see README, "Feed a pod"): shards are built in parallel (--workers local
processes; on several hosts each takes its share with --process_index/--process_count),
a finished shard is never rebuilt (a killed build resumes), and the manifest is written
when every shard is there.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence

from mtf import cli, quiet
from mtf.data import languages, mixing, records
from mtf.errors import SettingError


def _provider(name: str):
    import seqio

    try:
        return seqio.get_mixture_or_task(name)
    except ValueError:
        known = sorted(seqio.TaskRegistry.names() | seqio.MixtureRegistry.names())
        raise SettingError(f"no task or mixture named {name!r}; `python -m mtf.tasks list` "
                           f"shows the {len(known)} registered ones") from None


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
    ids = {int(e["language_id"]) for e in _examples(task, split, limit) if "language_id" in e}
    return sorted(languages.language_from_id(i) for i in ids)


def cmd_list(args: argparse.Namespace) -> None:
    import seqio

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
            size = mixing.size(task)
        except SettingError:
            size = "?"
        langs = ",".join(_task_languages(task, task.splits[0])) if args.languages else ""
        print(f"task {name}: splits {','.join(task.splits)}; train examples {size}"
              + (f"; languages {langs}" if langs else ""))


def cmd_show(args: argparse.Namespace) -> None:
    from mtf.data import seqio_tasks  # TensorFlow: after the quiet start

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
    from mtf.data import seqio_tasks  # TensorFlow: after the quiet start

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


def _build_shard(job: tuple[str, str, dict[str, int], int, int, str, bool, bool]
                 ) -> tuple[str, int, dict, float]:
    """One shard, in a worker process (spawned: it registers the tasks itself)."""
    import time

    name, split, lengths, index, count, output, skip_bad_records, verbose = job
    quiet.start(verbose)
    import seqio

    import tasks  # noqa: F401  registers everything, as the parent did (after the quiet start)
    from mtf.data import seqio_tasks, token_cache  # TensorFlow: after the worker's quiet start

    provider, skipped = seqio.get_mixture_or_task(name), records.SkipReport()
    seqio_tasks.handle_bad_records(provider, skip_bad_records, skipped)
    start = time.perf_counter()
    done = token_cache.build_shard(provider, split, lengths,
                                   token_cache.ShardSpec(name, index, count), output)
    if skipped.total:
        print(f"{name} shard {index}: {skipped.summary()}", file=sys.stderr)
    return name, index, done, time.perf_counter() - start


def cmd_cache(args: argparse.Namespace) -> None:
    import multiprocessing
    import os
    import time

    from mtf.data import seqio_tasks, token_cache  # TensorFlow: after the quiet start

    provider = _provider(args.mixture)
    found = seqio_tasks.tasks_of(provider)
    refused = {t.name: token_cache.uncacheable_reason(t) for t in found}
    refused = {k: v for k, v in refused.items() if v}
    if refused:
        raise SettingError(f"cannot cache {args.mixture}: "
                           + "; ".join(f"task {k}: {v}" for k, v in refused.items())
                           + " (train such tasks without DATA_CACHE_DIR)")
    if not 0 <= args.process_index < args.process_count:
        raise SettingError(f"--process_index {args.process_index} is not in "
                           f"0..{args.process_count - 1}")
    workers = args.workers or os.cpu_count() or 1
    count = args.shards or workers * args.process_count
    lengths = {"inputs": args.inputs, "targets": args.targets}
    specs = list(token_cache.shard_specs(found, count))
    mine = [s for j, s in enumerate(specs) if j % args.process_count == args.process_index]
    todo = [s for s in mine if token_cache.read_json(s.done(args.output)) is None]
    print(f"token cache of {args.mixture} ({len(found)} tasks x {count} shards) in "
          f"{args.output}: {len(mine) - len(todo)} of this process's {len(mine)} shards "
          f"already built, {workers} worker(s)", flush=True)
    jobs = [(s.task, args.split, lengths, s.index, s.count, args.output,
             args.skip_bad_records, args.verbose) for s in todo]
    start = time.perf_counter()
    if jobs:
        with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            for name, index, done, seconds in pool.imap_unordered(_build_shard, jobs):
                print(f"  {name} {token_cache.shard_name(index, count)}: {done['records']} "
                      f"examples, {done['bytes'] / 2**20:.1f} MiB, {seconds:.1f} s", flush=True)
    shards = {t.name: [token_cache.read_json(token_cache.ShardSpec(t.name, i, count).done(
        args.output)) for i in range(count)] for t in found}
    missing = sum(s is None for v in shards.values() for s in v)
    if missing:
        print(f"{missing} shard(s) are left to the other processes; the last one to finish "
              "writes the manifest", flush=True)
        return
    token_cache.write_manifest(args.output, args.split, lengths, {
        t.name: token_cache.task_entry(t, shards[t.name], count) for t in found}, args.mixture,
        time.perf_counter() - start)
    examples = sum(s["records"] for v in shards.values() for s in v)
    print(json.dumps({"cache": args.output, "tasks": len(found), "shards": count,
                      "examples": examples, "build_s": round(time.perf_counter() - start, 1),
                      "bytes": sum(s["bytes"] for v in shards.values() for s in v)}))


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
    p = sub.add_parser("cache", help="tokenise a mixture once into a token cache "
                       "(DATA_CACHE_DIR) that runs read from any position")
    p.add_argument("--mixture", required=True, help="a registered task or mixture")
    p.add_argument("--output", required=True, help="the cache folder, local or gs://")
    p.add_argument("--split", default="train")
    p.add_argument("--inputs", type=int, default=1024,
                   help="the longest inputs length runs of this cache may use")
    p.add_argument("--targets", type=int, default=1024)
    p.add_argument("--shards", type=int, default=0,
                   help="shards per task (default: workers x processes)")
    p.add_argument("--workers", type=int, default=0,
                   help="local processes that build shards (default: one per core)")
    p.add_argument("--process_index", type=int, default=0,
                   help="this host's index when several hosts build one cache")
    p.add_argument("--process_count", type=int, default=1)
    cli.add_verbose(parser)
    args = parser.parse_args(argv)
    return cli.run(args.verbose, lambda: _command(args))


def _command(args: argparse.Namespace) -> int:
    import seqio

    import tasks  # noqa: F401  registers everything (TensorFlow): after the quiet start
    from mtf.data import seqio_tasks  # (the same)

    skipped = records.SkipReport()  # every task this command reads reports here
    for name in seqio.TaskRegistry.names():
        seqio_tasks.handle_bad_records(seqio.get_mixture_or_task(name), args.skip_bad_records,
                                       skipped)
    {"list": cmd_list, "show": cmd_show, "lengths": cmd_lengths,
     "cache": cmd_cache}[args.command](args)
    if skipped.total:
        print(skipped.summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
