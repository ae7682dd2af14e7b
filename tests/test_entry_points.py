"""The commands users type: `python -m mtf.launch`, `mtf.convert` and the others."""

import os
import subprocess
import sys
from pathlib import Path

import gin
import pytest

from mtf import config as gin_config
from mtf.convert import load_params, load_t5x
from mtf.model import T5Config

REPO = Path(__file__).resolve().parents[1]


def run(*args, cwd=REPO):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_launch_names_the_bad_binding(tmp_path):
    result = run("mtf.launch", "--gin.run_config.RunConfig.batch_sise=2", cwd=tmp_path)
    assert result.returncode == 2
    assert "--gin.run_config.RunConfig.batch_sise=2" in result.stderr
    assert "batch_sise" in result.stderr
    result = run("mtf.launch", "--gin_file=gin/nope.gin")
    assert result.returncode == 2 and "gin file 'gin/nope.gin' not found" in result.stderr


def test_launch_prints_user_errors_alone_and_other_errors_with_their_traceback(tmp_path):
    tiny = str(REPO / "gin" / "mt0_tiny.gin")
    user = run("mtf.launch", f"--gin_file={tiny}", f"--gin.MODEL_DIR={tmp_path}",
               "--gin.TRAIN_STEPS=0", cwd=tmp_path)
    assert user.returncode == 1
    assert user.stderr.strip().splitlines()[-1] == "error: TRAIN_STEPS=0 must be positive"
    assert "Traceback" not in user.stderr
    # Not one of mtf's errors (a bug, or here a mapping mtf does not type-check): traceback.
    other = run("mtf.launch", f"--gin_file={tiny}", f"--gin.MODEL_DIR={tmp_path}",
                "--gin.TASK_FEATURE_LENGTHS=5", cwd=tmp_path)
    assert other.returncode == 1 and "Traceback (most recent call last)" in other.stderr
    assert "TypeError" in other.stderr


@pytest.mark.parametrize("binding,message", [
    ("TRAIN_STEP=10", "TRAIN_STEP is not a macro of the loaded gin files, so it would change "
                      "nothing; did you mean TRAIN_STEPS"),
    ("train_steps=10", "did you mean TRAIN_STEPS"),
    ("TRAIN_STEPS=ten", "mtf.run_config.RunConfig.train_steps takes int, got 'ten' (str)"),
    ("LEARNING_RATE=fast",
     "mtf.run_config.OptimizerConfig.learning_rate takes float, got 'fast' (str)"),
    ("MESH_SHAPE=5", "mtf.run_config.RunConfig.mesh_shape takes tuple, got 5 (int)"),
    ("run_config.RunConfig.batch_size=eight",
     "mtf.run_config.RunConfig.batch_size takes int, got 'eight'"),
    ("CHECKPOINT_MINUTES=soon", "takes float or None, got 'soon'"),
])
def test_typos_and_wrong_types_in_bindings_are_named(binding, message):
    try:
        with pytest.raises(gin_config.ConfigError) as error:
            gin_config.parse(["gin/mt0_tiny.gin"], [binding])
        assert f"--gin.{binding}: " in str(error.value) and message in str(error.value)
    finally:
        gin.clear_config()


def test_right_bindings_still_pass():
    try:
        gin_config.parse(["gin/mt0_tiny.gin"], [
            "TRAIN_STEPS=10", "LEARNING_RATE=1", "MESH_SHAPE=(2, 1, 1)", "XP3_DIR=/data/xp3",
            "CHECKPOINT_MINUTES=None", "run_config.RunConfig.batch_size=4", "PACK=False"])
        assert gin.query_parameter("%TRAIN_STEPS") == 10
    finally:
        gin.clear_config()


@pytest.mark.parametrize("size,emb,heads,layers,mlp", [
    ("small", 512, 6, 8, 1024), ("base", 768, 12, 12, 2048), ("large", 1024, 16, 24, 2816),
    ("xl", 2048, 32, 24, 5120), ("xxl", 4096, 64, 24, 10240)])
def test_model_gin_files_have_published_shapes(size, emb, heads, layers, mlp):
    gin.clear_config()
    try:
        gin_config.parse([f"models/mt5_{size}.gin"])
        config = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
    finally:
        gin.clear_config()
    assert isinstance(config, T5Config)
    assert (config.emb_dim, config.num_heads, config.num_encoder_layers,
            config.num_decoder_layers, config.mlp_dim, config.head_dim, config.vocab_size) == (
        emb, heads, layers, layers, mlp, 64, 250112)
    assert config.mlp_activations == ("gelu", "linear") and not config.logits_via_embedding


def test_bare_string_bindings_are_quoted():
    assert gin_config.normalize_binding("MODEL_DIR=/tmp/run") == "MODEL_DIR = '/tmp/run'"
    assert gin_config.normalize_binding("TRAIN_STEPS=1000") == "TRAIN_STEPS = 1000"
    assert gin_config.normalize_binding("X=%Y") == "X = %Y"
    assert gin_config.normalize_binding("L={'inputs': 8}") == "L = {'inputs': 8}"
    with pytest.raises(gin_config.ConfigError, match="NAME=VALUE"):
        gin_config.normalize_binding("no equals sign")


def test_convert_cli_t5x_to_mtf_to_hf_and_back(fixtures, tmp_path):
    t5x = fixtures / "t5x" / "test_t5_tiny.checkpoint_0"
    result = run("mtf.convert", "--from", "t5x", "--to", "mtf", str(t5x), str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    config, params = load_params(tmp_path / "m")
    assert config.emb_dim == 8 and config.num_heads == 4
    result = run("mtf.convert", "--from", "mtf", "--to", "hf", str(tmp_path / "m"),
                 str(tmp_path / "hf"))
    assert result.returncode == 0, result.stderr
    result = run("mtf.convert", "--from", "hf", "--to", "mtf", str(tmp_path / "hf"),
                 str(tmp_path / "m2"))
    assert result.returncode == 0, result.stderr
    _, again = load_params(tmp_path / "m2")
    reference = load_t5x(t5x)
    import jax
    import numpy as np

    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, again), reference)


@pytest.mark.parametrize("args,message", [
    (("mtf.convert", "--from", "hf", "--to", "mtf", "{tmp}", "{tmp}/o"), "config.json not found"),
    (("mtf.tasks", "show", "no_such_task"), "no task or mixture named 'no_such_task'"),
    (("mtf.infer", "generate", "--checkpoint", "{tmp}/nothing", "hi"), "does not exist"),
    (("mtf.bench", "input", "--gin_file=gin/mt0_tiny.gin", "--process_index", "2",
      "--process_count", "2"), "--process_index 2 is not in 0..1"),
    (("mtf.allocate", "solve", "--fits", "{tmp}/fits.json", "--budget", "10", "--output",
      "{tmp}/o"), "--fits {tmp}/fits.json does not exist"),
    (("mtf.vocab", "extend", "--checkpoint", "{tmp}/nothing", "--corpus", "{tmp}/gu.txt",
      "--new_pieces", "10", "--output", "{tmp}/o"), "--checkpoint={tmp}/nothing does not exist"),
], ids=lambda a: a[0] if isinstance(a, tuple) else None)
def test_each_command_answers_a_mistake_in_one_line(args, message, tmp_path):
    """Every entry point goes through `mtf.cli.run`: "error: ...", exit 1, no traceback
    (launch and plan: their own tests above and in test_plan.py)."""
    result = run(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert result.returncode == 1, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and message.replace("{tmp}", str(tmp_path)) in line, line


def test_every_command_starts_through_the_cli_helper():
    """Each module users run with `python -m` hands its work to `cli.run`, so --verbose,
    the quiet start-up and one-line user errors are the same everywhere."""
    import ast

    mains = [p for p in sorted((REPO / "mtf").rglob("*.py"))
             if 'if __name__ == "__main__":' in p.read_text()]
    assert len(mains) >= 6, mains
    for path in mains:
        tree = ast.parse(path.read_text())
        calls = {f"{n.func.value.id}.{n.func.attr}" for n in ast.walk(tree)
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                 and isinstance(n.func.value, ast.Name)}
        assert "cli.run" in calls, f"{path.relative_to(REPO)} does not start through cli.run"


def test_bench_prints_its_json(capsys):
    import json

    # --lora_rank: the LoRA step, and full finetuning of the same shapes beside it
    result = run("mtf.bench", "train", "--model", "tiny", "--vocab", "4224", "--batch", "2",
                 "--inputs", "16", "--targets", "8", "--steps", "2", "--lora_rank", "4",
                 "--optimizer", "adamw")
    assert result.returncode == 0, result.stderr[-2000:]
    line = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("tokens_per_s", "step_s", "peak_flops_per_s", "mfu", "model_flops_per_step",
                "full_tokens_per_s", "temp_bytes", "full_temp_bytes"):
        assert line[key] > 0, key
    assert line["tokens_per_s"] == pytest.approx(2 * 24 / line["step_s"])
    assert line["lora_rank"] == 4
    assert line["trainable_parameters"] < line["full_trainable_parameters"] / 10
    # AdamW's two float32 moments of the adapters alone (plus its step count)
    assert 8 * line["trainable_parameters"] <= line["optimizer_state_bytes"] < (
        8 * line["trainable_parameters"] + 64)
    # a decoder-only model: one sequence of inputs + targets tokens (in this process)
    from mtf import bench

    capsys.readouterr()
    assert bench.main(["train", "--model", "llama_tiny", "--vocab", "4224", "--batch", "2",
                       "--inputs", "16", "--targets", "8", "--steps", "2"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["tokens_per_s"] == pytest.approx(2 * 24 / line["step_s"])
    assert line["model_flops_per_step"] > 0 and line["loss"] > 0


@pytest.mark.slow
def test_readme_train_export_load_in_three_commands(tmp_path):
    """The README's three commands (train, export the run's newest step, load with
    transformers), with a shorter run and paths under tmp_path."""
    import json as json_lib
    import re
    import stat

    readme = (REPO / "README.md").read_text()
    block = readme.split("From a training run to a Hugging Face model, in three commands:")[1]
    commands = re.search(r"```bash\n(.*?)```", block, re.S)[1].strip().splitlines()
    assert len(commands) == 3
    model_dir, export = tmp_path / "mt0_tiny", tmp_path / "mt0_tiny_hf"
    commands = [c.replace("/tmp/mtf/mt0_tiny", str(model_dir))
                 .replace("/tmp/mt0_tiny_hf", str(export)) for c in commands]
    commands[0] += " --gin.TRAIN_STEPS=3 --gin.EVAL_PERIOD=None"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("MTF_VOCABULARY", None)  # the tokenizer must come from what the run recorded
    for command in commands:
        result = subprocess.run(command.replace("python ", f"{sys.executable} ", 1),
                                shell=True, cwd=tmp_path, env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    for name in ("model.safetensors", "config.json", "spiece.model", "tokenizer_config.json"):
        mode = stat.S_IMODE((export / name).stat().st_mode)
        assert mode & 0o044 == 0o044, f"{name} is {oct(mode)}"
    assert json_lib.loads((export / "tokenizer_config.json").read_text())["extra_ids"] == 100
    from transformers import AutoTokenizer

    from tasks import mini_xp3

    text = "Habari ya asubuhi dunia"
    ours = mini_xp3.vocabulary().encode(text)
    assert AutoTokenizer.from_pretrained(export)(text).input_ids == ours + [1]  # + EOS


NOISE = ("oneDNN", "Could not find cuda drivers", "absl::InitializeLog", "libtpu",
         "TPU_WORKER_HOSTNAMES")


def test_commands_start_quietly_unless_verbose(tmp_path):
    args = ("mtf.launch", "--gin_file=gin/mt0_tiny.gin", f"--gin.MODEL_DIR={tmp_path / 'a'}",
            "--gin.TRAIN_STEPS=1", "--gin.BATCH_SIZE=4", "--gin.EVAL_PERIOD=None",
            "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 8}")
    quiet = run(*args)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert not [line for line in quiet.stderr.splitlines() if any(n in line for n in NOISE)], (
        quiet.stderr)
    assert "done: step 1" in quiet.stdout
    listing = ("mtf.tasks", "list", "--filter", "no_such_task")
    quiet_listing = run(*listing)
    assert quiet_listing.returncode == 0 and not any(n in quiet_listing.stderr for n in NOISE)
    verbose = run(listing[0], "--verbose", *listing[1:])
    assert verbose.returncode == 0 and any(n in verbose.stderr for n in NOISE)
