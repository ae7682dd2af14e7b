"""What every `python -m mtf.*` command does the same way: `--verbose`, a quiet start-up,
and a user's mistake (`UserError`) answered with one line and exit status 1.

Anything that is not a `UserError` is a bug or an environment failure and keeps its
traceback. Kept free of jax/TensorFlow imports so `--help` and argparse errors stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from mtf import quiet
from mtf.errors import UserError


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="keep TensorFlow's, absl's and libtpu's start-up messages")


def message(error: BaseException) -> str:
    """The error's own message, without the "In call to configurable" lines gin appends."""
    return str(error).split("\n  In call to configurable")[0]


def fail(error: BaseException, status: int = 1) -> int:
    print(f"error: {message(error)}", file=sys.stderr, flush=True)
    return status


def run(verbose: bool, body: Callable[[], int | None]) -> int:
    """Starts quietly (unless `verbose`), runs `body` and returns its exit status (None: 0);
    a `UserError` becomes "error: <message>" on stderr and status 1."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "3")
    quiet.start(verbose)
    try:
        status = body()
    except UserError as e:
        return fail(e)
    return 0 if status is None else status
