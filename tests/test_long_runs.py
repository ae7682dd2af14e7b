"""What a long pod run needs besides the step: time-based checkpoints, window-averaged
metrics, skippable bad records, one run per MODEL_DIR, a full disk named as such."""

import json
import os
import socket
import subprocess
import time

import numpy as np
import pytest

from mtf import checkpoint, runlock
from tests.test_xp3_tasks import write_jsonl
from tests.train_helpers import last_losses, metrics, run, start, wait_for_step

pytestmark = pytest.mark.slow


def steps(model_dir):
    with checkpoint.Checkpoints(str(model_dir)) as ckpts:
        return ckpts.all_steps()


def test_metrics_average_over_the_log_window_and_checkpoint_minutes(tmp_path):
    """Two runs of the same 8 steps: one logs every step and saves only at the end, the
    other logs every 4 and saves on the clock between periods (CHECKPOINT_MINUTES)."""
    every = run(tmp_path / "every", TRAIN_STEPS="8", LOG_PERIOD="1", CHECKPOINT_PERIOD="1000",
                CHECKPOINT_MINUTES="None")
    # A period that never comes: every save but the last is the clock's (~0.1 s here).
    window = run(tmp_path / "window", TRAIN_STEPS="8", LOG_PERIOD="4",
                 CHECKPOINT_PERIOD="1000", CHECKPOINT_MINUTES="1e-6")
    assert every.returncode == 0 and window.returncode == 0, window.stderr[-3000:]
    assert steps(tmp_path / "window") == list(range(1, 9))
    assert steps(tmp_path / "every") == [8]
    per_step = {m["step"]: m for m in metrics(tmp_path / "every")}
    logged = {m["step"]: m for m in metrics(tmp_path / "window")}
    assert sorted(logged) == [4, 8]
    for end in (4, 8):
        steps_in = range(end - 3, end + 1)
        np.testing.assert_allclose(logged[end]["loss"],
                                   np.mean([per_step[s]["loss"] for s in steps_in]), rtol=1e-5)
        # Every language seen in any step of the window is reported, not only the last's.
        seen = {k for s in steps_in for k in per_step[s] if k.startswith("loss/")}
        assert {k for k in logged[end] if k.startswith("loss/")} == seen
    last_only = {k for k in per_step[8] if k.startswith("loss/")}
    assert len({k for k in logged[8] if k.startswith("loss/")}) > len(last_only)


def test_skip_bad_records_from_gin_counts_them_in_metrics(tmp_path):
    root = tmp_path / "xp3"
    good = [{"inputs": f"Question {i}?", "targets": str(i)} for i in range(80)]
    write_jsonl(root / "en" / "merged_en.jsonl", good)
    with open(root / "en" / "merged_en.jsonl", "a") as f:
        f.write('{"inputs": "broken", \n{"inputs": "no targets"}\n')
    common = dict(MIXTURE_OR_TASK_NAME="'xp3_en'", XP3_DIR=f"'{root}'", TRAIN_STEPS="3",
                  PACK="False", CHECKPOINT_PERIOD="100")
    stopped = run(tmp_path / "a", **common)
    assert stopped.returncode == 1
    assert f"{root}/en/merged_en.jsonl:81: malformed JSON" in stopped.stderr
    skipped = run(tmp_path / "b", SKIP_BAD_RECORDS="True", **common)
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert metrics(tmp_path / "b")[-1]["skipped_records"] == 2


def test_a_second_run_on_the_same_model_dir_is_refused(tmp_path):
    first = start(tmp_path, TRAIN_STEPS="100000", CHECKPOINT_PERIOD="100000")
    try:
        wait_for_step(tmp_path, 2, first)
        second = run(tmp_path, TRAIN_STEPS="3")
        assert second.returncode == 1
        error = second.stderr.strip().splitlines()[-1]
        assert f"in use by process {first.pid} on this host ({socket.gethostname()})" in error
    finally:
        first.kill()
        first.wait()
    # The first is gone (killed: its lock is still there): the next run's lock takes over
    # (the lock a run takes first, before reading anything; released at its end).
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == first.pid
    lock = runlock.RunLock(str(tmp_path))
    lock.acquire()
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / "run.lock").exists()


def test_lock_held_by_another_host_until_its_heartbeat_goes_stale(tmp_path):
    lock_file = tmp_path / "run.lock"
    lock_file.write_text(json.dumps({"host": "tpu-worker-7", "pid": 4242,
                                     "heartbeat": time.time() - 60}))
    with pytest.raises(runlock.RunLockError, match="process 4242 on host tpu-worker-7"):
        runlock.RunLock(str(tmp_path)).acquire()
    lock_file.write_text(json.dumps({"host": "tpu-worker-7", "pid": 4242,
                                     "heartbeat": time.time() - runlock.STALE_AFTER_SECONDS - 1}))
    lock = runlock.RunLock(str(tmp_path))
    lock.acquire()
    assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    lock.release()
    assert not lock_file.exists()


@pytest.fixture
def small_disk(tmp_path):
    """A 10 MiB tmpfs: room for one checkpoint of the tiny model (about 7 MiB), not two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10M", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {made.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_full_disk_names_the_directory_and_the_space_needed(small_disk):
    model_dir = small_disk / "run"
    result = run(model_dir, TRAIN_STEPS="6", CHECKPOINT_PERIOD="3", KEEP_CHECKPOINTS="None")
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f"error: no space left in {model_dir}/checkpoints to save step 6")
    assert "needs about 7 MiB" in error and "steps [3]) are intact" in error
    assert "Traceback" not in result.stderr
    assert steps(model_dir) == [3]
    assert sorted(last_losses(model_dir)) == [1, 2, 3, 4, 5, 6]
