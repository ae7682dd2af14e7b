"""Runs that survive faults: kill -9, SIGTERM, NaN loss, half-written checkpoints."""

import json
import re
import signal
import time

import numpy as np
import pytest

from mtf import checkpoint
from tests.train_helpers import last_losses, run, start, wait_for_step

pytestmark = pytest.mark.slow


def steps(model_dir):
    with checkpoint.Checkpoints(str(model_dir)) as ckpts:
        return ckpts.all_steps()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("uninterrupted")
    result = run(model_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir, last_losses(model_dir)


def test_kill_9_then_restart_sees_the_same_losses(uninterrupted, tmp_path):
    _, reference = uninterrupted
    assert sorted(reference) == list(range(1, 21))
    process = start(tmp_path)
    wait_for_step(tmp_path, 13, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    result = run(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # Step 10's checkpoint is saved asynchronously: on a loaded machine the kill can land
    # before it is finalised, and then the run resumes from step 5 instead.
    resumed_from = re.search(r"resumed from step (\d+)", result.stdout)
    assert resumed_from and int(resumed_from[1]) in (5, 10), result.stdout[-2000:]
    start_step = int(resumed_from[1]) + 1
    resumed = last_losses(tmp_path)
    np.testing.assert_allclose([resumed[s] for s in range(start_step, 21)],
                               [reference[s] for s in range(start_step, 21)], rtol=1e-6)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    process = start(tmp_path, TRAIN_STEPS="10000", CHECKPOINT_PERIOD="10000")
    wait_for_step(tmp_path, 3, process)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-3000:]
    saved = steps(tmp_path)
    assert len(saved) == 1 and f"preempted: saved step {saved[0]}" in out


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(uninterrupted, tmp_path):
    source, _ = uninterrupted
    import shutil

    shutil.copytree(source / "checkpoints", tmp_path / "checkpoints")
    for step in (15, 20):
        shutil.rmtree(tmp_path / "checkpoints" / str(step))
    # A learning rate that overflows the parameters: the loss turns NaN right after resuming.
    # The log period is long, so the check before saving step 15 is what catches it.
    result = run(tmp_path, LEARNING_RATE="1e38", LOG_PERIOD="100")
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-2000:]
    assert "loss is nan at step 15" in result.stderr
    assert "last good checkpoint is step 10" in result.stderr
    assert steps(tmp_path) == [5, 10]
    again = run(tmp_path, TRAIN_STEPS="12")
    assert again.returncode == 0 and "resumed from step 10" in again.stdout


def test_half_written_checkpoint_is_never_picked_up(uninterrupted, tmp_path):
    import shutil

    source, _ = uninterrupted
    shutil.copytree(source / "checkpoints", tmp_path / "checkpoints")
    shutil.rmtree(tmp_path / "checkpoints" / "20")
    # What a kill during an async save leaves behind: Orbax's temporary directory.
    partial = tmp_path / "checkpoints" / "20.orbax-checkpoint-tmp-1234567"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "half").write_bytes(b"\0" * 100)
    assert steps(tmp_path)[-1] == 15
    result = run(tmp_path, TRAIN_STEPS="16")
    assert result.returncode == 0 and "resumed from step 15" in result.stdout


def test_unpacked_run_resumes_by_seeking_with_the_same_losses(tmp_path):
    """mT0's recipe is unpacked: its stream seeks instead of replaying (seekable.py)."""
    import shutil

    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    result = run(reference_dir, PACK="False", TRAIN_STEPS="12", CHECKPOINT_PERIOD="6")
    assert result.returncode == 0, result.stderr[-3000:]
    # a run stopped at step 6: the reference's checkpoint of step 6 alone
    shutil.copytree(reference_dir / "checkpoints" / "6", resumed_dir / "checkpoints" / "6")
    second = run(resumed_dir, PACK="False", TRAIN_STEPS="12", CHECKPOINT_PERIOD="6")
    assert second.returncode == 0 and "resumed from step 6" in second.stdout
    reference, resumed = last_losses(reference_dir), last_losses(resumed_dir)
    np.testing.assert_allclose([resumed[s] for s in range(7, 13)],
                               [reference[s] for s in range(7, 13)], rtol=1e-6)


def test_damaged_latest_checkpoint_falls_back_to_the_one_before(uninterrupted, tmp_path):
    import shutil

    source, reference = uninterrupted
    shutil.copytree(source / "checkpoints", tmp_path / "checkpoints")
    # One flipped bit in the largest array file of step 20 (what a bad disk or copy leaves).
    files = [p for p in (tmp_path / "checkpoints" / "20" / "state").rglob("*")
             if p.is_file() and "/d/" in str(p)]
    largest = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[10] ^= 0x04
    largest.write_bytes(bytes(data))
    result = run(tmp_path, TRAIN_STEPS="20")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"checkpoint {tmp_path / 'checkpoints' / '20'} cannot be read" in result.stdout
    assert "resumed from step 15" in result.stdout
    assert (tmp_path / "damaged_checkpoints" / "20" / "state").is_dir()  # kept, not deleted
    resumed = last_losses(tmp_path)
    np.testing.assert_allclose([resumed[s] for s in range(16, 21)],
                               [reference[s] for s in range(16, 21)], rtol=1e-6)
    assert steps(tmp_path)[-1] == 20  # saved again, readable


def test_resuming_with_another_batch_size_is_refused(uninterrupted, tmp_path):
    import shutil

    source, _ = uninterrupted
    shutil.copytree(source / "checkpoints", tmp_path / "checkpoints")
    result = run(tmp_path, TRAIN_STEPS="25", BATCH_SIZE="16")
    assert result.returncode == 1, result.stderr[-3000:]
    error = result.stderr.strip().splitlines()[-1]
    assert "BATCH_SIZE=16, but the checkpoint at step 20" in error
    assert "--gin.BATCH_SIZE=8" in error and "INITIAL_CHECKPOINT_PATH=" in error
    assert steps(tmp_path) == [5, 10, 15, 20]  # nothing written


def test_train_steps_is_the_step_a_resumed_run_stops_at(uninterrupted, tmp_path):
    """What the README says TRAIN_STEPS means (checked against its own sentence)."""
    import shutil

    from tests.train_helpers import REPO

    readme = (REPO / "README.md").read_text()
    assert "a run resumed at step 300\n  with `TRAIN_STEPS=320` trains 20 more steps" in readme
    source, _ = uninterrupted
    shutil.copytree(source / "checkpoints", tmp_path / "checkpoints")
    result = run(tmp_path, TRAIN_STEPS="22")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from step 20; step 20 -> 22" in result.stdout
    assert sorted(last_losses(tmp_path)) == [21, 22]


def test_lora_on_a_trained_tiny_model_learns_resumes_after_kill_9_and_merges(uninterrupted,
                                                                             tmp_path, capsys):
    """runs/lora.gin on the trained tiny model: the loss falls, checkpoints hold the adapters
    alone, kill -9 resumes with the uninterrupted losses, another base is refused, and the
    adapters merged by mtf.convert score as the base + --adapter does."""
    import json

    from mtf.convert import adapters

    base, _ = uninterrupted
    lora = {"gin_files": ("gin/runs/lora.gin",), "INITIAL_CHECKPOINT_PATH": str(base),
            "LEARNING_RATE": "1e-3"}
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    result = run(reference_dir, **lora)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"LoRA adapters (rank 8) initialised on {base}" in result.stdout
    reference = last_losses(reference_dir)
    assert np.mean([reference[s] for s in range(16, 21)]) < np.mean(
        [reference[s] for s in range(1, 6)]) - 0.2
    config, saved, record = adapters.load(reference_dir)
    assert config.lora.rank == 8 and record["path"] == str(base)
    state_bytes = [sum(f.stat().st_size for f in (d / "checkpoints" / "20" / "state").rglob("*")
                       if f.is_file()) for d in (reference_dir, base)]
    assert state_bytes[0] < state_bytes[1] / 3, state_bytes  # adapters + their AdamW moments

    process = start(killed_dir, **lora)
    wait_for_step(killed_dir, 13, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    result = run(killed_dir, **lora)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed_from = re.search(r"resumed from step (\d+)", result.stdout)
    assert resumed_from and int(resumed_from[1]) in (5, 10), result.stdout[-2000:]
    resumed = last_losses(killed_dir)
    np.testing.assert_allclose([resumed[s] for s in range(int(resumed_from[1]) + 1, 21)],
                               [reference[s] for s in range(int(resumed_from[1]) + 1, 21)],
                               rtol=1e-6)

    other = run(killed_dir, **{**lora, "INITIAL_CHECKPOINT_PATH": str(base / "checkpoints" /
                                                                      "10"),
                               "TRAIN_STEPS": "25"})
    assert other.returncode == 1, other.stdout[-2000:] + other.stderr[-2000:]
    assert f"were trained on the base {base}" in other.stderr and "other weights" in other.stderr

    # the commands in this process (what they print is what a user sees)
    from mtf import infer
    from mtf.convert import __main__ as convert

    assert convert.main(["--from", "mtf", "--to", "hf", str(reference_dir),
                         str(tmp_path / "merged")]) == 0
    question = tmp_path / "q.jsonl"
    question.write_text(json.dumps({"inputs": "Translate dog into Swahili.",
                                    "answer_choices": ["mbwa", "paka", "ndege"]}) + "\n")
    scores = []
    for args in (["--checkpoint", str(base), "--adapter", str(reference_dir)],
                 ["--checkpoint", str(tmp_path / "merged")]):
        capsys.readouterr()
        assert infer.main(["score", "--input_file", str(question), "--batch_size", "1",
                           *args]) == 0
        scores.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["scores"])
    np.testing.assert_allclose(scores[1], scores[0], rtol=1e-5)


def test_cached_runs_resume_exactly_packed_after_kill_9_and_unpacked(tmp_path):
    """DATA_CACHE_DIR: a packed run killed with -9 resumes from the packer state saved with
    its checkpoint, an unpacked one from its batch count; both see the uninterrupted losses."""
    from tests.test_token_cache import build

    cache = tmp_path / "cache"
    build(cache, "mini_xp3_smoke", lengths={"inputs": 32, "targets": 16}, count=1)
    cached = {"DATA_CACHE_DIR": f"'{cache}'", "TRAIN_STEPS": "60"}  # the kill lands mid-run
    reference = run(tmp_path / "reference", **cached)
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = last_losses(tmp_path / "reference")
    killed = tmp_path / "killed"
    process = start(killed, **cached)
    committed = killed / "checkpoints" / "5" / "commit_success.txt"
    deadline = time.time() + 300
    while not committed.exists():  # the kill lands after a checkpoint, mid-run
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    result = run(killed, **cached)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed_from = int(re.search(r"resumed from step (\d+)", result.stdout)[1])
    assert 5 <= resumed_from < 60 and "replaying" not in result.stderr  # the saved state
    resumed = last_losses(killed)
    np.testing.assert_allclose([resumed[s] for s in range(resumed_from + 1, 61)],
                               [expected[s] for s in range(resumed_from + 1, 61)], rtol=1e-6)
    saved = json.loads((killed / "checkpoints" / "5" / "data" / "metadata").read_text())
    assert saved["cache"] == str(cache) and len(saved["streams"]) == 1

    unpacked = {**cached, "PACK": "False", "TRAIN_STEPS": "8", "CHECKPOINT_PERIOD": "4"}
    reference = run(tmp_path / "unpacked_reference", **unpacked)
    assert reference.returncode == 0, reference.stderr[-3000:]
    first = run(tmp_path / "unpacked", **{**unpacked, "TRAIN_STEPS": "4"})
    assert first.returncode == 0, first.stderr[-3000:]
    second = run(tmp_path / "unpacked", **unpacked)
    assert second.returncode == 0 and "resumed from step 4" in second.stdout
    expected, resumed = last_losses(tmp_path / "unpacked_reference"), last_losses(
        tmp_path / "unpacked")
    np.testing.assert_allclose([resumed[s] for s in range(5, 9)],
                               [expected[s] for s in range(5, 9)], rtol=1e-6)
