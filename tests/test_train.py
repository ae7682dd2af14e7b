"""The train loop's promises: the embedded default, resume order, checkpoint storage, the
flagship config building abstractly."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

import tasks  # noqa: F401  registers mini_xp3_sw
from mtf import checkpoint, optim, partitioning, run_setup, train
from mtf.convert import load_t5x, loading, save_hf, save_params
from mtf.convert.errors import CheckpointError
from mtf.convert.t5x import infer_config
from mtf.data import batches
from mtf.model import T5Config, init_params
from mtf.run_config import RunConfig
from tests.train_helpers import REPO, env, metrics

TINY = T5Config(vocab_size=4224, emb_dim=32, num_heads=2, num_encoder_layers=1,
                num_decoder_layers=1, head_dim=16, mlp_dim=64)
DATA = batches.DataConfig(mixture_or_task_name="mini_xp3_sw",
                          task_feature_lengths={"inputs": 16, "targets": 8})


@pytest.mark.slow
def test_embedded_default_trains_from_any_directory(tmp_path, monkeypatch, capsys):
    """README's first command: loss falls, checkpoint, metrics.jsonl, TensorBoard, config."""
    model_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "mtf.launch", "--gin_file=gin/mt0_tiny.gin",
                             f"--gin.MODEL_DIR={model_dir}"], cwd=tmp_path, env=env(),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compiled train step, per device:" in result.stdout
    records = [r for r in metrics(model_dir)
               if not any(k.startswith(("eval/", "validation/")) for k in r)]
    for key in ("step", "loss", "learning_rate", "tokens_per_second", "grad_norm", "mfu"):
        assert all(key in r for r in records), key
    assert any(k.startswith("loss/") and k[5:] in ("sw", "yo", "hi") for r in records for k in r)
    assert any(k.startswith("loss/task/term_") for r in records for k in r)
    first, last = records[0]["loss"], np.mean([r["loss"] for r in records[-3:]])
    assert first - last > 1.0, (first, last)
    # EVAL_PERIOD also measures the loss on the mixture's validation split (EVAL_STEPS)
    (validation,) = [r for r in metrics(model_dir) if "validation/loss" in r]
    assert validation["step"] == 300 and validation["validation/loss"] < first - 1.0
    assert "validation loss at step 300:" in result.stdout
    with checkpoint.Checkpoints(str(model_dir)) as ckpts:
        assert ckpts.latest_step() == 300
    assert list((model_dir / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert "MIXTURE_OR_TASK_NAME = 'mini_xp3'" in (model_dir / "config.gin").read_text()
    _check_the_final_evaluation(model_dir, result.stdout, tmp_path, monkeypatch, capsys)


def _check_the_final_evaluation(model_dir, stdout, tmp_path, monkeypatch, capsys):
    """mt0_tiny ends with the held-out evaluation: report files, logged numbers, accuracy
    above chance on trained task types in held-out languages; eval.gin on the checkpoint
    gives the same numbers; `mtf.infer` answers from it."""
    report_dir = model_dir / "eval" / "step_300"
    results = json.loads((report_dir / "results.json").read_text())
    assert results["step"] == 300 and results["mixture"] == "mini_xp3_heldout"
    table = (report_dir / "results.md").read_text()
    assert "| ak * |" in table and "| ig |" in table  # Akan is not in mT5's pretraining
    assert (report_dir / "results.png").stat().st_size > 10_000
    assert "evaluation at step 300:" in stdout and "term_to_english (accuracy" in stdout
    trained_types = [results["results"][d][lang]["median"]["accuracy"]
                     for d in ("term_from_english", "term_to_english") for lang in ("ig", "ta",
                                                                                   "eu")]
    assert np.mean(trained_types) > 40.0, trained_types  # 4 choices: chance is 25%
    logged = [r for r in metrics(model_dir) if "eval/term_to_english/accuracy" in r]
    assert len(logged) == 1 and logged[0]["step"] == 300

    # eval.gin on the checkpoint, one held-out language's task (a third of the time of all
    # 35): the numbers of the in-training evaluation for that language
    again = subprocess.run(
        [sys.executable, "-m", "mtf.launch", "--gin_file=gin/mt0_tiny.gin",
         "--gin_file=gin/runs/eval.gin", f"--gin.CHECKPOINT_PATH='{model_dir}'",
         "--gin.EVAL_MIXTURE='mini_xp3_heldout_ig'",
         f"--gin.MODEL_DIR='{tmp_path / 'eval_run'}'"], cwd=REPO, env=env(),
        capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    standalone = json.loads((tmp_path / "eval_run" / "eval" / "step_300" / "results.json")
                            .read_text())
    compared = [(dataset, lang) for dataset, by_language in standalone["results"].items()
                for lang in by_language]
    assert len(compared) == 3 and {lang for _, lang in compared} == {"ig"}
    for dataset, lang in compared:
        assert standalone["results"][dataset][lang]["median"] == pytest.approx(
            results["results"][dataset][lang]["median"], abs=1e-6), (dataset, lang)
    # `mtf.infer` (in this process) finds the vocabulary the run recorded
    from mtf import infer

    monkeypatch.delenv("MTF_VOCABULARY", raising=False)
    capsys.readouterr()
    assert infer.main(["generate", "--checkpoint", str(model_dir),
                       'Translate "January" into Swahili.']) == 0
    answer = capsys.readouterr().out
    assert len(answer.strip().splitlines()) == 1 and answer.strip()


def test_flagship_config_builds_abstractly(tmp_path):
    (tmp_path / "sw").mkdir()
    (tmp_path / "sw" / "merged_sw.jsonl").write_text('{"inputs": "a", "targets": "b"}\n')
    result = subprocess.run([sys.executable, "tests/flagship_check.py", str(tmp_path)],
                            cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    built = json.loads(result.stdout.strip().splitlines()[-1])
    assert 12.8e9 < built["params"] < 13.0e9 and built["emb_dim"] == 4096
    assert (built["batch"], built["lengths"], built["pack"]) == (512, [1024, 1024], False)
    assert built["normalizing"] == "AVERAGE_PER_SEQUENCE" and built["z_loss"] == 1e-4
    assert built["dtype"] == "bfloat16" and built["dropout"] == 0.1
    assert built["mesh"] == {"data": 1, "fsdp": 8, "model": 1}  # FSDP over every device
    # scanned layers: the leading layer axis is not sharded
    assert built["mlp_spec"] == ["None", "fsdp", "model"] and built["mixture_tasks"] == 1
    assert built["initial"].endswith("mt5_xxl/checkpoint_1000000") and built["lowered"]


def _initial(model_config, path, tmp_path):
    run = run_setup.setup(RunConfig(model_config=model_config, model_dir=str(tmp_path / "run"),
                                    train_steps=1, batch_size=8, data=DATA,
                                    initial_checkpoint_path=path))
    with run.checkpoints() as ckpts:
        start = run.start(ckpts)
    return start.state, start.position, start.source


def test_initial_checkpoint_in_each_format(fixtures, tmp_path):
    t5x_path = str(fixtures / "t5x" / "test_t5_tiny.checkpoint_0")
    reference = load_t5x(t5x_path)
    config = infer_config(reference)
    state, position, source = _initial(config, t5x_path, tmp_path / "a")
    assert source == f"initialised from {t5x_path}"
    assert position == checkpoint.DataPosition()  # no data read yet
    assert int(state.step) == 0
    np.testing.assert_array_equal(state.params["decoder"]["logits_dense"]["kernel"],
                                  reference["decoder"]["logits_dense"]["kernel"])
    params = jax.tree.map(np.asarray, init_params(TINY, jax.random.key(3)))
    save_params(tmp_path / "mtf", TINY, params)
    save_hf(TINY, params, tmp_path / "hf")
    for fmt in ("mtf", "hf"):
        state, _, _ = _initial(TINY, str(tmp_path / fmt), tmp_path / f"run_{fmt}")
        np.testing.assert_allclose(state.params["encoder"]["layers_0"]["mlp"]["wo"]["kernel"],
                                   params["encoder"]["layers_0"]["mlp"]["wo"]["kernel"])
    with pytest.raises(CheckpointError, match="the gin config asks for"):
        _initial(TINY.replace(emb_dim=64), str(tmp_path / "mtf"), tmp_path / "bad")
    (tmp_path / "junk").mkdir()
    with pytest.raises(CheckpointError, match="is not an mtf, T5X or Hugging Face"):
        loading.detect_format(str(tmp_path / "junk"))


def test_latest_checkpoint_wins_over_the_initial_one(tmp_path):
    params = jax.tree.map(np.asarray, init_params(TINY, jax.random.key(3)))
    save_params(tmp_path / "init", TINY, params)
    kwargs = dict(model_config=TINY, model_dir=str(tmp_path / "run"), batch_size=4, data=DATA,
                  initial_checkpoint_path=str(tmp_path / "init"), log_period=1,
                  checkpoint_config=checkpoint.CheckpointConfig(period=2))
    first = train.train(RunConfig(train_steps=2, **kwargs))
    assert first.source.startswith("initialised from") and first.final_step == 2
    second = train.train(RunConfig(train_steps=3, **kwargs))
    assert second.source == "resumed from step 2" and second.start_step == 2
    assert second.final_step == 3 and set(second.losses) == {3}


def test_bfloat16_checkpoint_storage(tmp_path):
    result = train.train(RunConfig(model_config=TINY, model_dir=str(tmp_path), batch_size=4,
                                   data=DATA, train_steps=1,
                                   checkpoint_config=checkpoint.CheckpointConfig(
                                       period=1, dtype="bfloat16")))
    assert result.final_step == 1
    tx = optim.make_optimizer("adafactor")
    mesh = partitioning.make_mesh((-1, 1, 1))
    from mtf import state as state_lib

    abstract, shardings = state_lib.state_shardings(TINY, tx, mesh)
    with checkpoint.Checkpoints(str(tmp_path)) as ckpts:
        restored, position, saved = ckpts.restore(1, abstract, shardings)
    kernel = np.asarray(restored.params["encoder"]["layers_0"]["mlp"]["wo"]["kernel"])
    assert kernel.dtype == np.float32 and position.batches == 1 and saved == TINY
    np.testing.assert_array_equal(kernel, kernel.astype(jax.numpy.bfloat16).astype(np.float32))
    wrong, wrong_shardings = state_lib.state_shardings(TINY.replace(mlp_dim=32), tx, mesh)
    with checkpoint.Checkpoints(str(tmp_path)) as ckpts, pytest.raises(
            CheckpointError, match="does not fit this run's model"):
        ckpts.restore(1, wrong, wrong_shardings)
