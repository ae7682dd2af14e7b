"""Shared test set-up: quiet TensorFlow, locate the third-party fixtures, keep the one test
that needs most of the host's memory from running beside any other."""

import fcntl
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The test extra installs libtpu (for mtf.plan); tests run on the CPU and must not contend
# for its lock file. mtf.plan's own subprocesses set what they need.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tasks default to mT5's vocabulary on gs://; tests use the committed mini-xP3 one offline.
os.environ.setdefault("MTF_VOCABULARY", str(Path(__file__).resolve().parents[1] / "tasks"
                                            / "vocab" / "mini_xp3.model"))

# One persistent XLA compilation cache for the test run, this process and every command a
# test starts: dozens of runs compile the same tiny train step. Size-capped, so that jax
# takes its file lock when writing (pytest-xdist's workers share it). mtf.plan opts out.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(Path(tempfile.gettempdir()) / f"mtf-tests-xla-cache-{os.getuid()}"))
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    if not FIXTURES.exists():
        pytest.skip(f"third-party fixtures not found at {FIXTURES} (../shared/fixtures)")
    return FIXTURES


def random_batch(rng: np.random.Generator, vocab: int, batch: int = 3, inputs: int = 9,
                 targets: int = 7) -> dict[str, np.ndarray]:
    """Token batch with trailing padding of different lengths per row (0 = pad, BOS)."""
    enc = rng.integers(2, vocab, size=(batch, inputs)).astype(np.int32)
    tgt = rng.integers(2, vocab, size=(batch, targets)).astype(np.int32)
    for row in range(batch):
        enc[row, inputs - row * 2:] = 0
        tgt[row, targets - row:] = 0
    dec_in = np.zeros_like(tgt)
    dec_in[:, 1:] = tgt[:, :-1]
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
            "decoder_target_tokens": tgt}


# The longest test files first (their durations in .ci/run's log, longest first), so that
# pytest-xdist, which hands whole files to its workers in collection order, ends with
# short files on every worker instead of one worker alone in a long one. Files not named
# here follow in their usual order.
LONGEST_FIRST = ("test_plan_fits.py", "test_train_faults.py", "test_plan.py",
                 "test_entry_points.py", "test_train.py", "test_chunked_loss.py", "test_gcs.py",
                 "test_multihost.py", "test_lora.py", "test_long_runs.py",
                 "test_decoder_only.py", "test_step.py", "test_flash_attention.py",
                 "test_model.py", "test_decode.py", "test_allocate.py")


# Host memory: the TPU compiler needs 16 GB of this machine's 24 GiB to compile mt0-base
# unscanned (24 layers) and was killed for memory beside other workers' runs. A test marked
# `exclusive_host_memory` runs while no other test of any worker (or of another pytest run on
# this machine) does: every test holds a shared lock, it the exclusive one. A gate taken
# before either keeps the other workers from starving it between their tests.
_LOCKS = Path(tempfile.gettempdir()) / f"mtf-tests-host-memory-{os.getuid()}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _LOCKS.mkdir(exist_ok=True)
    exclusive = item.get_closest_marker("exclusive_host_memory") is not None
    with open(_LOCKS / "gate", "a") as gate, open(_LOCKS / "tests", "a") as tests:
        fcntl.flock(gate, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        fcntl.flock(tests, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        if not exclusive:
            fcntl.flock(gate, fcntl.LOCK_UN)
        return (yield)  # setup (module fixtures too), call, teardown; closing frees both


def pytest_collection_modifyitems(items: list) -> None:
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file, and of the others, is kept
