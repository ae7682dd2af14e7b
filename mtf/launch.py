"""`python -m mtf.launch --gin_file=... [--gin.NAME=VALUE ...]`: the front door.

Every host of a pod runs the same command. Today it runs the forward pass the gin files
configure (see README); training, eval and inference plug in here as they land.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

DEFAULT_GIN_FILE = "gin/mt0_tiny.gin"


def parse_flags(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Splits argv into gin files and `--gin.NAME=VALUE` bindings (T5X's flag syntax)."""
    parser = argparse.ArgumentParser(prog="python -m mtf.launch", description=__doc__)
    parser.add_argument("--gin_file", action="append", default=[],
                        help="gin file, searched in ., the repo and gin/ (repeatable)")
    parser.add_argument("--gin_bindings", action="append", default=[],
                        help="a binding NAME=VALUE (repeatable; same as --gin.NAME=VALUE)")
    args, rest = parser.parse_known_args(argv)
    bindings = list(args.gin_bindings)
    unknown = []
    for arg in rest:
        if arg.startswith("--gin."):
            bindings.append(arg[len("--gin."):])
        else:
            unknown.append(arg)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args.gin_file or [DEFAULT_GIN_FILE], bindings


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    gin_files, bindings = parse_flags(sys.argv[1:] if argv is None else argv)
    from mtf import config, forward  # after the flags: importing jax is slow

    try:
        config.parse(gin_files, bindings)
    except config.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import gin

    gin.get_configurable(forward.forward_pass)()
    return 0


if __name__ == "__main__":
    sys.exit(main())
