"""`python -m mtf.launch --gin_file=... [--gin.NAME=VALUE ...]`: the front door.

Every host of a pod runs the same command. Several processes are joined with
`jax.distributed`: auto-detected on TPU VM pods and SLURM; elsewhere (GPU clusters, local
tests) from --coordinator_address / --num_processes / --process_id or the environment
variables MTF_COORDINATOR_ADDRESS / MTF_NUM_PROCESSES / MTF_PROCESS_ID.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mtf import cli
from mtf.config import split_gin_flags

DEFAULT_GIN_FILE = "gin/mt0_tiny.gin"


def parse_flags(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """Gin files, distributed flags and `--gin.NAME=VALUE` bindings (T5X's flag syntax)."""
    parser = argparse.ArgumentParser(prog="python -m mtf.launch", description=__doc__)
    parser.add_argument("--gin_file", action="append", default=[],
                        help="gin file, searched in ., the repo and gin/ (repeatable)")
    parser.add_argument("--gin_bindings", action="append", default=[],
                        help="a binding NAME=VALUE (repeatable; same as --gin.NAME=VALUE)")
    parser.add_argument("--coordinator_address",
                        default=os.environ.get("MTF_COORDINATOR_ADDRESS"))
    parser.add_argument("--num_processes", type=int,
                        default=int(os.environ.get("MTF_NUM_PROCESSES", "0")) or None)
    parser.add_argument("--process_id", type=int,
                        default=int(os.environ["MTF_PROCESS_ID"])
                        if "MTF_PROCESS_ID" in os.environ else None)
    cli.add_verbose(parser)
    parser.add_argument("--heartbeat_timeout", type=int,
                        default=int(os.environ.get("MTF_HEARTBEAT_TIMEOUT", "100")),
                        help="seconds after which a silent host fails the others")
    args, rest = parser.parse_known_args(argv)
    flag_bindings, unknown = split_gin_flags(rest)
    bindings = list(args.gin_bindings) + flag_bindings
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.gin_file = args.gin_file or [DEFAULT_GIN_FILE]
    return args, bindings


def _auto_detected_cluster() -> bool:
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts or int(os.environ.get("SLURM_NTASKS", "1")) > 1


def init_distributed(args: argparse.Namespace) -> None:
    """Joins the processes of a multi-host run (no-op for a single process)."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only hosts
    if args.coordinator_address or (args.num_processes or 1) > 1:
        missing = [n for n in ("coordinator_address", "num_processes", "process_id")
                   if getattr(args, n) is None]
        if missing:
            raise SystemExit(f"error: a multi-process run needs --{' --'.join(missing)} "
                             "(or MTF_COORDINATOR_ADDRESS / MTF_NUM_PROCESSES / MTF_PROCESS_ID)")
        jax.distributed.initialize(args.coordinator_address, args.num_processes,
                                   args.process_id,
                                   heartbeat_timeout_seconds=args.heartbeat_timeout)
    elif _auto_detected_cluster():
        jax.distributed.initialize(heartbeat_timeout_seconds=args.heartbeat_timeout)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args, bindings = parse_flags(sys.argv[1:] if argv is None else argv)
    init_distributed(args)
    return cli.run(args.verbose, lambda: run(args.gin_file, bindings))


def run(gin_files: Sequence[str], bindings: Sequence[str]) -> int:
    """One run as `python -m mtf.launch` does it, in this process (`mtf.allocate pilot` runs
    several in turn): exit status 2 for a bad configuration, 3 for a loss gone NaN."""
    from mtf import config, runs, train  # after the flags: importing jax/seqio is slow

    try:
        config.parse(gin_files, bindings)
    except config.ConfigError as e:
        return cli.fail(e, 2)
    import gin

    try:
        config.register_xp3_from_gin()
        gin.get_configurable(runs.run)()
    except train.NonFiniteLossError as e:
        return cli.fail(e, 3)
    except Exception as e:
        import jax

        if jax.process_count() > 1 and isinstance(e, jax.errors.JaxRuntimeError):
            # A collective failed: another host died. Exit now with the reason rather than
            # wait in jax.distributed's shutdown barrier for a host that will not come.
            print(f"error: process {jax.process_index()}: a cross-host operation failed, most "
                  f"likely because another host died ({str(e).splitlines()[0]}). Checkpoints "
                  "already saved are intact; restart all hosts to resume.", file=sys.stderr,
                  flush=True)
            sys.stdout.flush()
            os._exit(4)
        raise  # a UserError is printed as one line by cli.run; anything else: traceback
    return 0


if __name__ == "__main__":
    sys.exit(main())
