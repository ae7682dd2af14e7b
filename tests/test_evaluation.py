"""The evaluator and its report on a tiny random model, and every bad input it must name."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

import tasks  # noqa: F401  registers the mini-xP3
from mtf import partitioning
from mtf.convert import save_params
from mtf.convert.errors import CheckpointError
from mtf.data import records, seqio_tasks
from mtf.errors import SettingError
from mtf.eval import evaluation, report, runner
from mtf.model import T5Config, init_params
from tasks import heldout, mini_xp3
from tests.train_helpers import REPO, env

TINY = T5Config(vocab_size=4224, emb_dim=32, num_heads=2, num_encoder_layers=1,
                num_decoder_layers=1, head_dim=16, mlp_dim=64)
LENGTHS = {"inputs": 12, "targets": 6}


@pytest.fixture(scope="module")
def mesh():
    return partitioning.make_mesh((-1, 1, 1), jax.devices()[:1])


@pytest.fixture(scope="module")
def params():
    return init_params(TINY, jax.random.key(0))


def _choice_task(tmp_path, name, lines):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return heldout.register_multiple_choice(name, str(path))


def _config(name, **kw):
    return evaluation.EvalConfig(mixture_or_task_name=name, task_feature_lengths=LENGTHS,
                                 batch_size=4, **kw)


def test_results_by_dataset_language_template_and_the_report(tmp_path, mesh, params):
    lines = [{"inputs": f"question {i} " + "long " * (20 if i == 0 else 0),
              "answer_choices": ["yes", "no", "a much longer answer than six tokens"][:2 + i % 2],
              "label": i % 2, "language": "sw" if i < 5 else "fr"} for i in range(9)]
    name = _choice_task(tmp_path, "mc_eval_test", lines)
    evaluator = evaluation.Evaluator(TINY, mesh, _config(name))
    result = evaluator.run(params, keep_predictions=True)
    assert set(result["results"]) == {"mc_eval_test"}
    by_language = result["results"]["mc_eval_test"]
    assert set(by_language) == {"sw", "fr"}
    assert by_language["sw"]["templates"]["-"]["examples"] == 5
    assert 0 <= by_language["fr"]["median"]["accuracy"] <= 100
    assert result["truncated"]["prompts"] == 1 and result["truncated"]["choices"] == 4
    rows = result["predictions"][name]
    assert [len(r["scores"]) for r in rows] == [2 + i % 2 for i in range(9)]
    accuracy = 100 * np.mean([r["prediction"] == r["label"] for r in rows if r["language"]
                              == "sw"])
    assert by_language["sw"]["median"]["accuracy"] == pytest.approx(accuracy)
    # guessing: 1 / the number of choices, averaged over the language's examples
    assert by_language["sw"]["chance"] == pytest.approx(100 * (3 / 2 + 2 / 3) / 5)
    assert by_language["fr"]["chance"] == pytest.approx(100 * (2 / 2 + 2 / 3) / 4)

    result.update(step=7, checkpoint="random")
    paths = report.write(str(tmp_path / "eval"), result)
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["step"] == 7
    md = (tmp_path / "eval" / "results.md").read_text()
    assert "## mc_eval_test: accuracy" in md and "| sw |" in md
    assert "| median | max | chance |" in md and f" {by_language['sw']['chance']:.1f} |" in md
    assert f"(chance {by_language['fr']['chance']:.1f})" in report.summary(result)
    assert "Cut to fit: 1 prompts (> 12 tokens), 4 answer choices" in md
    assert (tmp_path / "eval" / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["md"].endswith("results.md")
    scalars = report.scalars(result)
    assert scalars["eval/mc_eval_test/sw/accuracy"] == pytest.approx(accuracy)


def test_generation_metrics_on_a_mini_xp3_task(mesh, params):
    config = _config("mini_xp3_heldout_ig", max_examples_per_task=2, max_decode_length=4)
    result = evaluation.Evaluator(TINY, mesh, config).run(params)
    entry = result["results"]["term_from_english"]["ig"]
    assert {"accuracy", "exact_match", "chrf"} <= set(entry["median"])
    assert all(t["examples"] == 2 for t in entry["templates"].values())
    assert {"median", "max"} <= set(entry)


def test_bad_evaluation_inputs_are_named(tmp_path, mesh, params):
    with pytest.raises(SettingError, match="unknown metric"):
        evaluation.Evaluator(TINY, mesh, _config("mini_xp3_heldout_ig", metrics=("blue",)))
    with pytest.raises(SettingError, match="not registered"):
        evaluation.Evaluator(TINY, mesh, _config("no_such_task"))
    bad = _choice_task(tmp_path, "mc_bad_label", [
        {"inputs": "q", "answer_choices": ["a", "b"], "label": 0, "language": "sw"},
        {"inputs": "q", "answer_choices": ["a", "b"], "label": 2, "language": "sw"}])
    with pytest.raises(records.RecordError, match=r"mc_bad_label.jsonl:2: label 2"):
        evaluation.Evaluator(TINY, mesh, _config(bad)).examples()
    seqio_tasks.register_task("gen_without_metrics", lambda _bad_records: [
        {"inputs": "a", "targets": "b", "language": "sw", "template": "", "language_id": 1,
         "task_id": 1, "split": ""}], mini_xp3.vocabulary(), validation_fraction=1.0,
        in_memory=True)
    with pytest.raises(SettingError, match="no answer choices .* set EVAL_METRICS"):
        evaluation.Evaluator(TINY, mesh, _config("gen_without_metrics")).run(params)


def test_a_checkpoint_that_does_not_fit_the_model_is_named(tmp_path):
    save_params(tmp_path / "params", TINY, init_params(TINY, jax.random.key(1)))
    other = TINY.replace(emb_dim=48)
    with pytest.raises(CheckpointError, match="CHECKPOINT_PATH=.*emb 32.*emb 48"):
        runner.evaluate(model_config=other, checkpoint_path=str(tmp_path / "params"),
                           model_dir=str(tmp_path / "run"),
                           eval_config=_config("mini_xp3_heldout_ig", max_examples_per_task=1))


def test_infer_cli_names_bad_lines(tmp_path):
    save_params(tmp_path / "params", TINY, init_params(TINY, jax.random.key(1)))
    bad = tmp_path / "mc.jsonl"
    bad.write_text('{"inputs": "q", "answer_choices": ["a", "b"], "label": 5}\n')
    out = subprocess.run([sys.executable, "-m", "mtf.infer", "score", "--checkpoint",
                          str(tmp_path / "params"), "--input_file", str(bad)], cwd=REPO,
                         env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert out.stderr.strip().endswith(
        "mc.jsonl:1: label 5 is not an index into its 2 answer choices")
    out = subprocess.run([sys.executable, "-m", "mtf.infer", "generate", "--checkpoint",
                          str(tmp_path / "nowhere"), "hello"], cwd=REPO, env=env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "--checkpoint=" in out.stderr and "does not exist" in (
        out.stderr)


def _replicated(mesh, tree):
    from jax.sharding import NamedSharding, PartitionSpec
    return jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), tree)


def test_validation_loss_is_the_train_loss_on_the_validation_split(mesh, params):
    """validation/loss is the train step's loss without dropout over the first EVAL_STEPS
    validation batches, microbatched or not; per-language losses come with it."""
    import dataclasses

    from mtf import step
    from mtf.data import batches
    from mtf.eval import validation
    from mtf.model.family import family_of
    data = batches.DataConfig("mini_xp3_sw", {"inputs": 24, "targets": 12}, pack=True)
    loss = step.LossConfig(normalizing_factor="AVERAGE_PER_SEQUENCE", z_loss=1e-4)
    dropout = TINY.replace(dropout_rate=0.3)  # validation must switch it off
    results = [validation.ValidationLoss(dropout, mesh, _replicated(mesh, params), data, 8,
                                         loss, k, steps=3)(params) for k in (1, 2)]
    source = dataclasses.replace(data, split="validation", shuffle=False, seekable=False)
    stream = batches.batches(source, 8)
    model = family_of(TINY)
    expected = []
    for _ in range(3):
        batch = next(stream)
        train_batch = {k: batch[k] for k in ("encoder_input_tokens", "decoder_input_tokens",
                                             "decoder_target_tokens", "encoder_segment_ids",
                                             "decoder_segment_ids", "encoder_positions",
                                             "decoder_positions", "decoder_loss_weights")}
        expected.append(float(step.gradients(params, train_batch, None, model, loss)[0]))
    for result in results:
        assert result["validation/loss"] == pytest.approx(np.mean(expected), rel=1e-5)
        assert any(k.startswith("validation/loss/") for k in result)
        assert "validation/grad_norm" not in result
    # the validation split, not the training one
    train_stream = batches.batches(dataclasses.replace(data, shuffle=False, seekable=False), 8)
    assert not np.array_equal(next(train_stream)["encoder_input_tokens"],
                              next(batches.batches(source, 8))["encoder_input_tokens"])
    with pytest.raises(SettingError, match="EVAL_STEPS=0"):
        validation.ValidationLoss(TINY, mesh, _replicated(mesh, params), data, 8, loss, 1, 0)


def test_optional_eval_mixture_lets_training_go_on(mesh, capsys):
    from mtf import train
    from mtf.data import records
    missing = evaluation.EvalConfig(mixture_or_task_name="no_such_heldout_mixture",
                                    task_feature_lengths=LENGTHS, optional=True)
    assert train._evaluator(TINY, mesh, 10, missing, False, records.SkipReport()) is None
    assert "'no_such_heldout_mixture' is not registered" in capsys.readouterr().out
    with pytest.raises(SettingError, match="not registered"):
        train._evaluator(TINY, mesh, 10, dataclasses_replace(missing, optional=False), False,
                         records.SkipReport())


def dataclasses_replace(config, **changes):
    import dataclasses
    return dataclasses.replace(config, **changes)


@pytest.mark.parametrize("recipe", ["mt0_small", "mt0_base", "mt0_large", "mt0_xl",
                                    "mt0_xxl", "mt0_xxl_v4_64"])
def test_mt0_recipes_evaluate_the_registered_heldout_sets(recipe):
    import gin

    from mtf import config
    gin.clear_config()
    try:
        config.parse([f"gin/{recipe}.gin"], ["MODEL_DIR='/tmp/x'"])
        assert gin.query_parameter("%EVAL_MIXTURE") == heldout.MIXTURE
        assert gin.query_parameter("%EVAL_MIXTURE_OPTIONAL") is True
        assert gin.query_parameter("%EVAL_STEPS") == 20
        assert gin.query_parameter("%EVAL_PERIOD") == 1000
    finally:
        gin.clear_config()
