"""Launching small training runs as separate processes (as users do) for fault tests."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# mini_xp3_smoke: a mixture (resumes go through mixing) that starts ~13 s sooner than mini_xp3
SMALL = {"MIXTURE_OR_TASK_NAME": "'mini_xp3_smoke'",
         "TASK_FEATURE_LENGTHS": "{'inputs': 32, 'targets': 16}", "BATCH_SIZE": "8",
         "LOG_PERIOD": "1", "CHECKPOINT_PERIOD": "5", "TRAIN_STEPS": "20",
         "KEEP_CHECKPOINTS": "None", "EVAL_PERIOD": "None"}


def launch_args(model_dir, gin_files=(), recipe="gin/mt0_tiny.gin", **overrides):
    """`recipe` (mt0_tiny.gin), then `gin_files` (e.g. runs/lora.gin), then the bindings."""
    bindings = {**SMALL, "MODEL_DIR": str(model_dir), **overrides}
    files = [f"--gin_file={recipe}"] + [f"--gin_file={f}" for f in gin_files]
    return [sys.executable, "-m", "mtf.launch", *files] + [
        f"--gin.{k}={v}" for k, v in bindings.items()]


def env(**extra):
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **extra)


def run(model_dir, timeout=600, extra_env=None, **overrides):
    return subprocess.run(launch_args(model_dir, **overrides), cwd=REPO,
                          env=env(**(extra_env or {})), capture_output=True, text=True,
                          timeout=timeout)


def start(model_dir, extra_env=None, **overrides):
    return subprocess.Popen(launch_args(model_dir, **overrides), cwd=REPO,
                            env=env(**(extra_env or {})), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def metrics(model_dir):
    path = Path(model_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_step(model_dir, step, process, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(m["step"] >= step for m in metrics(model_dir)):
            return
        if process.poll() is not None:
            raise AssertionError(f"run ended early: {process.communicate()}")
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def last_losses(model_dir):
    """{step: loss}, the last logged value of each step (a resumed run logs again)."""
    return {m["step"]: m["loss"] for m in metrics(model_dir) if "loss" in m}
