"""The embedded mini-xP3: languages, held-out parts, prompts, vocabulary, the CLI."""

import json
import os
import re
from pathlib import Path

import pytest
import sentencepiece as spm
import seqio

from mtf import tasks as tasks_cli
from mtf.data import languages, seqio_tasks
from tasks import mini_xp3

ROOT = Path(__file__).resolve().parents[1]


def task_names(mixture):
    return sorted(t.name for t in seqio.get_mixture_or_task(mixture).tasks)


def test_languages_promised():
    train = {n.removeprefix("mini_xp3_") for n in task_names("mini_xp3")}
    assert len(train) >= 30
    assert len(train & set(languages.LOW_RESOURCE)) >= 10
    assert {c for c in train if c in languages.AFRICAN} and {c for c in train
                                                             if c in languages.INDIC}
    assert len(mini_xp3.HELDOUT_LANGUAGES) >= 3
    assert not train & set(mini_xp3.HELDOUT_LANGUAGES)


def test_held_out_parts_are_absent_from_training():
    heldout = task_names("mini_xp3_heldout")
    for c in mini_xp3.HELDOUT_LANGUAGES:
        assert f"mini_xp3_heldout_{c}" in heldout
    assert sum(n.startswith("mini_xp3_heldout_currency_") for n in heldout) >= 30
    held_type = seqio_tasks.task_id(mini_xp3.HELDOUT_TASK_TYPE)
    for lang in ("sw", "hi", "yo"):
        examples = mini_xp3.examples(lang, mini_xp3.TRAINING_TASK_TYPES)
        assert all(e["task_id"] != held_type for e in examples)
        assert all("currency" not in e["inputs"] for e in examples)
    task = seqio.get_mixture_or_task("mini_xp3_heldout_ta")
    assert task.splits == ("validation",)


def test_english_and_in_language_prompts():
    sw = mini_xp3.examples("sw", ("term_from_english",))
    assert any(e["inputs"].startswith("Translate") and e["targets"] == "Januari" for e in sw)
    assert any(e["inputs"].startswith("Tafsiri") and e["template"].endswith("@sw") for e in sw)
    hi = mini_xp3.examples("hi", ("language_identification",))
    assert any("भाषा" in e["inputs"] for e in hi)
    # native script targets (CLDR), each language's own (not another locale's leaked data)
    januaries = {c: next(e["targets"] for e in mini_xp3.examples(c, ("term_from_english",))
                         if '"January"' in e["inputs"]) for c in ("zh", "hi", "sw", "yo", "ar")}
    assert len(set(januaries.values())) == 5, januaries
    assert any(e["targets"] == "जनवरी" for e in mini_xp3.examples("hi", ("term_from_english",)))


def test_training_dataset_yields_tokens():
    task = seqio.get_mixture_or_task("mini_xp3_yo")
    e = next(task.get_dataset({"inputs": 64, "targets": 16}, "train",
                              shuffle=False).as_numpy_iterator())
    assert e["targets"][-1] == 1  # EOS
    assert e["language"] == b"yo" and (e["targets_language"] == languages.language_id("yo")).all()


def test_committed_vocabulary_fits_the_tiny_model():
    sp = spm.SentencePieceProcessor(model_file=str(mini_xp3.VOCABULARY_PATH))
    assert sp.get_piece_size() == 4096
    assert sp.pad_id() == 0 and sp.eos_id() == 1 and sp.unk_id() == 2
    assert sp.id_to_piece(3) == "<0x00>"  # byte fallback: no script is unknown
    assert 2 not in sp.encode("Ɔpɛpɔn ଜାନୁଆରୀ 伊博语 ꯃꯅꯤꯄꯨꯔ")
    vocab = mini_xp3.vocabulary()
    gin_text = (ROOT / "gin" / "models" / "mt5_tiny.gin").read_text()
    embeddings = int(re.search(r"NUM_EMBEDDINGS = (\d+)", gin_text).group(1))
    assert vocab.vocab_size == 4196 and embeddings >= vocab.vocab_size
    assert embeddings % 128 == 0


def test_vocabulary_script_trains_a_model(tmp_path):
    from tasks.vocab import train_vocab

    path = train_vocab.train(tmp_path / "v", vocab_size=2000)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    assert sp.get_piece_size() == 2000 and sp.eos_id() == 1


def test_cli_lists_shows_and_reports_truncation(capsys):
    assert tasks_cli.main(["list", "--filter", "mini_xp3"]) == 0
    out = capsys.readouterr().out
    assert "mixture mini_xp3:" in out and "mixture mini_xp3_heldout:" in out
    assert re.search(r"task mini_xp3_sw: splits train,validation; train examples \d+", out)
    assert tasks_cli.main(["show", "mini_xp3_sw", "-n", "2"]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(shown) == 2 and shown[0]["language"] == "sw" and shown[0]["input_tokens"] > 0
    args = ["lengths", "mini_xp3_heldout_ta", "--inputs", "8", "--targets", "4"]
    assert tasks_cli.main(args) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[0])
    assert report["examples"] > 0 and report["truncated_inputs"] > 0
    assert tasks_cli.main(["show", "nope"]) == 1
    assert "error: no task or mixture named 'nope'" in capsys.readouterr().err


@pytest.mark.slow
def test_readme_add_your_own_task_as_written(tmp_path):
    """The README's 'Add your own task', followed literally in a copy of the repository:
    its files written where it says, `capitals` added to tasks/__init__.py's import line as
    ruff sorts it (ruff must pass), its commands run from another directory, offline and
    without MTF_VOCABULARY."""
    import shutil
    import subprocess
    import sys

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Add your own task"):
                     readme.index("## How the code is laid out")]
    blocks = dict(re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", section, re.S))
    assert set(blocks) == {"tasks/capitals.yaml", "tasks/capitals_sw.jsonl",
                           "tasks/capitals.py"}
    commands = re.search(r"<!-- commands -->\n```bash\n(.*?)```", section, re.S)[1]
    repo = tmp_path / "repo"
    for part in ("mtf", "tasks", "gin"):
        shutil.copytree(ROOT / part, repo / part,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", repo / "pyproject.toml")
    for name, text in blocks.items():
        (repo / name).write_text(text, encoding="utf-8")
    init = repo / "tasks" / "__init__.py"
    line = "from tasks import crosslingual, heldout, mini_xp3, xp3  # noqa: F401"
    assert line in init.read_text()
    init.write_text(init.read_text().replace(line, line.replace("import ", "import capitals, ")))
    lint = subprocess.run([str(Path(sys.executable).parent / "ruff"), "check", "tasks"],
                          cwd=repo, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MTF_VOCABULARY", "XP3_DIR")}
    env.update(PYTHONPATH=str(repo), TF_CPP_MIN_LOG_LEVEL="3")
    outputs = []
    for command in commands.strip().splitlines():
        command = command.replace("python ", f"{sys.executable} ", 1).replace(
            "/tmp/mtf/my_mixture", str(tmp_path / "run"))
        if "mtf.launch" in command:
            command += (" --gin.TRAIN_STEPS=2 --gin.BATCH_SIZE=4 --gin.EVAL_PERIOD=None"
                        " \"--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 16}\"")
        result = subprocess.run(command, shell=True, cwd=elsewhere, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs.append(result.stdout)
    shown = [json.loads(line) for line in outputs[0].splitlines() if line.startswith("{")]
    inputs = {e["inputs"] for e in shown}
    assert any("What is the capital of" in i for i in inputs)
    assert any("Mji mkuu wa" in i for i in inputs)
    assert "done: step 2" in outputs[1]
