"""Quiet start-up for mtf's commands: TensorFlow, absl and libtpu print their start-up
lines from C++ before any logging is set up (TF_CPP_MIN_LOG_LEVEL does not reach them), so
the C-level stderr is pointed at /dev/null while they load. `--verbose` keeps them.

Errors are not lost: an exception raised while loading is re-raised after stderr is back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool = True):
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def start(verbose: bool = False) -> None:
    """Loads TensorFlow and initialises jax's backends with their start-up noise dropped
    (unless `verbose`), and keeps Python-side third-party logging at WARNING."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "3")
    with native_stderr_silenced(not verbose):
        import jax
        import tensorflow  # noqa: F401  (seqio's; its C++ start-up lines are the noise)

        jax.devices()  # backend discovery: libtpu's warnings on machines without a TPU
    if not verbose:
        for name in ("absl", "jax._src.xla_bridge", "gcsfs", "tensorflow"):
            logging.getLogger(name).setLevel(logging.ERROR)
