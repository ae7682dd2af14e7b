"""Two processes (jax.distributed over gloo on 127.0.0.1) train as two hosts."""

import socket
import subprocess
import time

import pytest

from mtf import checkpoint
from tests.train_helpers import REPO, env, launch_args, metrics

pytestmark = pytest.mark.slow


def steps(model_dir):
    with checkpoint.Checkpoints(str(model_dir)) as ckpts:
        return ckpts.all_steps()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_hosts(model_dir, heartbeat=100, **overrides):
    port = free_port()
    return [subprocess.Popen(
        launch_args(model_dir, **overrides) + [
            f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
            f"--process_id={i}", f"--heartbeat_timeout={heartbeat}"],
        cwd=REPO, env=env(JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for i in range(2)]


def test_two_hosts_train_then_one_host_resumes_on_another_mesh(tmp_path):
    hosts = start_hosts(tmp_path, TRAIN_STEPS="10", LOG_PERIOD="5")
    outputs = [h.communicate(timeout=600) for h in hosts]
    for h, (_, err) in zip(hosts, outputs, strict=True):
        assert h.returncode == 0, err[-3000:]
    assert "over 2 devices on 2 process(es)" in outputs[0][0]
    assert steps(tmp_path) == [5, 10]
    result = subprocess.run(
        launch_args(tmp_path, TRAIN_STEPS="14", LOG_PERIOD="2", MESH_SHAPE="(1, 2, 2)"),
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env=env(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'fsdp': 2, 'model': 2" in result.stdout and "resumed from step 10" in result.stdout
    logged = [m["step"] for m in metrics(tmp_path)]
    assert logged[-2:] == [12, 14]
    assert steps(tmp_path)[-1] == 14


def test_a_dead_host_makes_the_other_exit_with_an_error(tmp_path):
    hosts = start_hosts(tmp_path, heartbeat=5, TRAIN_STEPS="100000",
                        CHECKPOINT_PERIOD="100000")
    deadline = time.time() + 300
    while len(metrics(tmp_path)) < 3:
        assert time.time() < deadline and hosts[0].poll() is None, hosts[0].communicate()
        time.sleep(0.5)
    hosts[1].kill()
    hosts[1].wait()
    start = time.time()
    out, err = hosts[0].communicate(timeout=120)  # a hang would time out here
    assert hosts[0].returncode != 0
    assert time.time() - start < 120
    assert "another host died" in err or "heartbeat" in err or "task died" in err, err[-2000:]


def test_two_hosts_resume_a_packed_cached_run_from_both_packer_states(tmp_path):
    """DATA_CACHE_DIR, packed: each host's packer state is gathered into the checkpoint,
    and two hosts resumed from step 10 log the uninterrupted run's losses."""
    import json
    import shutil

    import numpy as np

    from tests.test_token_cache import build
    from tests.train_helpers import last_losses

    cache = tmp_path / "cache"
    build(cache, "mini_xp3_smoke", lengths={"inputs": 32, "targets": 16}, count=1)
    cached = {"DATA_CACHE_DIR": f"'{cache}'", "TRAIN_STEPS": "14", "LOG_PERIOD": "1"}
    reference = tmp_path / "reference"
    hosts = start_hosts(reference, **cached)
    for h in hosts:
        _, err = h.communicate(timeout=600)
        assert h.returncode == 0, err[-3000:]
    saved = json.loads((reference / "checkpoints" / "10" / "data" / "metadata").read_text())
    assert len(saved["streams"]) == 2 and all(isinstance(s, dict) for s in saved["streams"])
    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)
    shutil.rmtree(resumed / "checkpoints" / "14")
    hosts = start_hosts(resumed, **cached)
    outputs = [h.communicate(timeout=600) for h in hosts]
    for h, (_, err) in zip(hosts, outputs, strict=True):
        assert h.returncode == 0, err[-3000:]
    assert "resumed from step 10" in outputs[0][0]
    assert not any("replaying" in err for _, err in outputs)  # each host's own state
    expected, got = last_losses(reference), last_losses(resumed)
    np.testing.assert_allclose([got[s] for s in range(11, 15)],
                               [expected[s] for s in range(11, 15)], rtol=1e-6)
