"""`python -m mtf.allocate fit|solve`: curves recovered from pilots, the budget split that
they predict is best, exact budgets and caps, and refusals of pilots no curve fits."""

import itertools
import json

import numpy as np
import pytest
import seqio

import tasks  # noqa: F401  the registry the mixture's tasks come from
from mtf import allocate
from mtf.allocation import curves, solver
from mtf.data import seqio_tasks

SIZES = (250, 1000, 4000, 16000, 64000)
TRUE = {"sw": {"alpha": 300.0, "beta": -0.35, "gamma": 500.0},
        "yo": {"alpha": 150.0, "beta": -0.25, "gamma": 200.0},
        "hi": {"alpha": 400.0, "beta": -0.4, "gamma": 1000.0}}


def test_a_fit_recovers_known_parameters_and_leaving_a_size_out_picks_the_true_form():
    for params in TRUE.values():
        truth = curves.Curve("power", params)
        entry = curves.fit_language("xx", SIZES, [truth(s) for s in SIZES])
        assert entry["chosen"] == "power"
        fitted = entry["forms"]["power"]["params"]
        for name, value in params.items():
            assert fitted[name] == pytest.approx(value, rel=0.05), name
        assert entry["forms"]["power"]["held_out_rmse"] < entry["forms"]["log"]["held_out_rmse"]
    # log-shaped data: the log curve predicts held-out sizes better, and is chosen
    log = curves.Curve("log", {"a": 12.0, "b": 4.5})
    entry = curves.fit_language("xx", SIZES, [log(s) for s in SIZES])
    assert entry["chosen"] == "log"
    assert entry["forms"]["log"]["params"] == pytest.approx({"a": 12.0, "b": 4.5}, rel=1e-6)


def test_seeds_are_averaged_and_their_spread_reported():
    truth = curves.Curve("power", TRUE["sw"])
    rng = np.random.default_rng(0)
    sizes = [s for s in SIZES for _ in range(3)]
    entry = curves.fit_language("sw", sizes, [truth(s) + rng.normal(0, 0.2) for s in sizes])
    assert entry["means"] == pytest.approx([truth(s) for s in SIZES], abs=0.5)
    assert 0.05 < entry["seed_std"] < 0.4


def test_degenerate_pilots_are_refused_naming_the_language():
    with pytest.raises(curves.DegenerateFitError, match="'yo'.*falls from"):
        curves.fit_language("yo", (1000, 4000, 16000), (30.0, 28.0, 35.0))
    with pytest.raises(curves.DegenerateFitError, match="'sw'.*2 pilot size"):
        curves.fit_language("sw", (1000, 4000), (30.0, 33.0))
    # three sizes: the log curve can be checked by leaving one out, the power law cannot
    entry = curves.fit_language("sw", (1000, 4000, 16000), (30.0, 33.0, 35.0))
    assert entry["chosen"] == "log" and entry["forms"]["power"]["held_out_rmse"] is None


CURVES = {k: curves.Curve("power", v) for k, v in TRUE.items()}


def test_the_sum_optimum_is_the_best_whole_split_and_respects_budget_caps_and_floor():
    budget, caps, floor = 300, {"yo": 60}, 20
    allocation = solver.allocate(CURVES, budget, caps, "sum", floor)
    assert sum(allocation.values()) == budget and allocation["yo"] <= 60
    assert min(allocation.values()) >= floor
    best = max(CURVES["sw"](a) + CURVES["yo"](b) + CURVES["hi"](budget - a - b)
               for a, b in itertools.product(range(floor, budget + 1), range(floor, 61))
               if budget - a - b >= floor)
    assert sum(solver.predicted(CURVES, allocation).values()) == pytest.approx(best, abs=1e-9)
    even = solver.uniform(list(CURVES), budget, caps)
    assert sum(even.values()) == budget and even["yo"] == 60
    assert (sum(solver.predicted(CURVES, allocation).values())
            > sum(solver.predicted(CURVES, even).values()))


def test_the_min_objective_lifts_the_worst_language_and_spends_the_whole_budget():
    budget = 50_000
    worst = solver.allocate(CURVES, budget, objective="min")
    summed = solver.allocate(CURVES, budget, objective="sum")
    assert sum(worst.values()) == sum(summed.values()) == budget
    assert (min(solver.predicted(CURVES, worst).values())
            > min(solver.predicted(CURVES, summed).values()))
    scores = solver.predicted(CURVES, worst)  # equalised: within one example's gain
    assert max(scores.values()) - min(scores.values()) < 1e-2
    # data smaller than the budget: every language gets all it has
    assert solver.allocate(CURVES, budget, {"sw": 10, "yo": 20, "hi": 30}) == {
        "sw": 10, "yo": 20, "hi": 30}
    with pytest.raises(solver.UserError, match="below the 300 examples the floors need"):
        solver.allocate(CURVES, 200, floor=100)


def _pilots(path, languages=TRUE, noise=0.0):
    rng = np.random.default_rng(1)
    rows = [{"language": k, "size": s, "metric": "chrf", "seed": seed,
             "value": curves.Curve("power", p)(s) + rng.normal(0, noise)}
            for k, p in languages.items() for s in SIZES for seed in range(2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_fit_then_solve_writes_the_allocation_its_mixture_and_the_predictions(tmp_path,
                                                                                capsys):
    _pilots(tmp_path / "pilots.jsonl", noise=0.2)
    assert allocate.main(["fit", "--pilots", str(tmp_path / "pilots.jsonl"),
                          "--output", str(tmp_path / "fits.json")]) == 0
    fits = json.loads((tmp_path / "fits.json").read_text())
    assert fits["metric"] == "chrf" and set(fits["languages"]) == set(TRUE)
    assert (tmp_path / "fits.png").stat().st_size > 10_000
    assert allocate.main(["solve", "--fits", str(tmp_path / "fits.json"), "--budget", "30000",
                          "--caps", "sw=20000,yo=8000,hi=50000", "--task",
                          "mini_xp3_{language}", "--output", str(tmp_path / "out")]) == 0
    allocation = json.loads((tmp_path / "out" / "allocation.json").read_text())
    assert sum(allocation.values()) == 30000 and allocation["yo"] <= 8000
    table = (tmp_path / "out" / "predictions.md").read_text()
    assert "| allocated |" in table and "| uniform |" in table and "| size-proportional |" in table
    gin_text = (tmp_path / "out" / "allocation.gin").read_text()
    assert "MIXTURE_OR_TASK_NAME = @seqio_tasks.cut_mixture()" in gin_text
    assert f"'mini_xp3_sw': {allocation['sw']}," in gin_text and "mixture = None" in gin_text
    even = (tmp_path / "out" / "uniform.gin").read_text()
    assert "'mini_xp3_sw': 11000," in even and "'mini_xp3_yo': 8000," in even
    capsys.readouterr()


def test_a_cut_task_keeps_its_first_examples_and_a_cut_mixture_the_other_rates():
    """What pilots and allocations train on: the task's first N training examples (its
    validation split whole); in the recipe's mixture the cut task's rate shrinks with its
    data, the others' stay."""
    whole = seqio.get_mixture_or_task("mini_xp3_sw")
    cut = seqio.get_mixture_or_task(seqio_tasks.first_examples("mini_xp3_sw", 40))
    assert list(cut.source.examples("train")) == list(whole.source.examples("train"))[:40]
    assert list(cut.source.examples("validation")) == list(whole.source.examples("validation"))
    assert cut.source.train_size() == 40
    # sharded: the second of two hosts reads its half of the same 40
    assert list(cut.source.examples("train", (1, 2))) == list(
        whole.source.examples("train"))[1:40:2]
    name = seqio_tasks.cut_mixture({"mini_xp3_sw": 40}, "mini_xp3_smoke")
    mixed, smoke = seqio.get_mixture_or_task(name), seqio.get_mixture_or_task("mini_xp3_smoke")
    rates = {t.name: mixed.get_rate(t) for t in mixed.tasks}
    before = {t.name: smoke.get_rate(t) for t in smoke.tasks}
    assert rates.pop("mini_xp3_sw_first40") == pytest.approx(
        before.pop("mini_xp3_sw") * 40 / whole.source.train_size())
    assert rates == pytest.approx(before)
    alone = seqio.get_mixture_or_task(seqio_tasks.cut_mixture({"mini_xp3_sw": 40,
                                                               "mini_xp3_yo": 100}))
    assert {t.name: alone.get_rate(t) for t in alone.tasks} == {
        "mini_xp3_sw_first40": 40.0, "mini_xp3_yo_first100": 100.0}
    with pytest.raises(seqio_tasks.SettingError, match="not registered: \\['mini_xp3_zz'\\]"):
        seqio_tasks.cut_mixture({"mini_xp3_zz": 1})
    with pytest.raises(seqio_tasks.SettingError, match="does not contain \\['mini_xp3_ca'\\]"):
        seqio_tasks.cut_mixture({"mini_xp3_ca": 10}, "mini_xp3_smoke")


def test_user_mistakes_are_one_line(tmp_path, capsys):
    bad = tmp_path / "pilots.jsonl"
    _pilots(bad, {"sw": TRUE["sw"]})
    with bad.open("a") as f:
        f.write('{"language": "yo", "size": 1000, "metric": "chrf", "value": 30}\n'
                '{"language": "yo", "size": 4000, "metric": "chrf", "value": 25}\n'
                '{"language": "yo", "size": 16000, "metric": "chrf", "value": 35}\n')
    assert allocate.main(["fit", "--pilots", str(bad), "--output", str(tmp_path / "f.json")]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: language 'yo': the mean score falls from 30 at 1000 examples to 25 at 4000; "
        "no rising curve fits: rerun those pilots with more seeds or steps, or drop the "
        "language"]
    bad.write_text('{"language": "sw", "size": "many"}\n')
    assert allocate.main(["fit", "--pilots", str(bad), "--output", str(tmp_path / "f.json")]) == 1
    assert "line 1: not a pilot row" in capsys.readouterr().err


PILOT = ["--gin_file=gin/mt0_tiny.gin", "--languages", "sw,yo", "--sizes", "8,32,128",
         "--task", "mini_xp3_{language}", "--eval", "mini_xp3_heldout_currency_{language}",
         "--validate", "mini_xp3_{language}", "--metric", "validation/loss/{language}",
         "--lower_is_better",
         "--gin.MIXTURE_OR_TASK_NAME='mini_xp3_smoke'", "--gin.BATCH_SIZE=8",
         "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 16}", "--gin.TRAIN_STEPS=3",
         "--gin.EVAL_PERIOD=3", "--gin.EVAL_STEPS=1", "--gin.EVAL_MAX_EXAMPLES=4",
         "--gin.LOG_PERIOD=1", "--gin.CHECKPOINT_PERIOD=3"]


@pytest.mark.slow
def test_pilots_resume_after_kill_9_then_fit_solve_and_train_the_allocation(tmp_path):
    """Six pilots (2 languages x 3 sizes), each an ordinary run on the first N examples of
    its language's task in the recipe's mixture, with its own language's evaluation and
    validation loss (which the cut task's small share of the mixture would leave without
    a single example of it); killed after the first row, the sweep run again keeps that
    row and runs the other five. Then the whole path: fit, solve, and a run of the
    recipe with the allocation's gin file on the cut tasks. (How well allocation does at
    this scale: bench/allocation_check.py, in the README.)"""
    import signal
    import subprocess
    import sys
    import time

    from tests.train_helpers import REPO, env

    command = [sys.executable, "-m", "mtf.allocate", "pilot", *PILOT, "--output",
               str(tmp_path / "sweep")]
    rows = tmp_path / "sweep" / "pilots.jsonl"
    first = subprocess.Popen(command, cwd=REPO, env=env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while not (rows.exists() and rows.read_text().strip()) and time.time() < deadline:
        assert first.poll() is None, first.communicate()
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    (kept,) = [json.loads(line) for line in rows.read_text().splitlines()]
    again = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"pilot {kept['language']}_{kept['size']}_seed0: done before, kept" in again.stdout
    assert again.stdout.count(" examples, in ") == 5
    table = [json.loads(line) for line in rows.read_text().splitlines()]
    assert table[0] == kept and [(r["language"], r["size"]) for r in table[1:]] == [
        ("yo", 8), ("sw", 32), ("yo", 32), ("sw", 128), ("yo", 128)]
    for row in table:  # each its own run, trained to the end
        assert row["metric"] == "-validation/loss/{language}"
        assert row["task"] == f"mini_xp3_{row['language']}" and row["step"] == 3
        assert row["mixture"] == "mini_xp3_smoke" and -20 < row["value"] < 0
        run_dir = tmp_path / "sweep" / "runs" / f"{row['language']}_{row['size']}_seed0"
        logged = (run_dir / "metrics.jsonl").read_text()
        assert f"eval/currency_from_english/{row['language']}/chrf" in logged
        other = "yo" if row["language"] == "sw" else "sw"  # validated on its own task alone
        assert f"validation/loss/{other}" not in logged
        config_gin = (run_dir / "config.gin").read_text()
        assert f"{{'mini_xp3_{row['language']}': {row['size']}}}" in config_gin
    # 3-step pilots are noise: the tolerance lets any shape through to the rest of the path
    assert allocate.main(["fit", "--pilots", str(rows), "--output", str(tmp_path / "f.json"),
                          "--top", "0", "--tolerance", "100"]) == 0
    assert allocate.main(["solve", "--fits", str(tmp_path / "f.json"), "--budget", "150",
                          "--caps", "sw=128,yo=128", "--output", str(tmp_path / "a")]) == 0
    allocation = json.loads((tmp_path / "a" / "allocation.json").read_text())
    assert sum(allocation.values()) == 150 and max(allocation.values()) <= 128
    final = subprocess.run(
        [sys.executable, "-m", "mtf.launch", "--gin_file=gin/mt0_tiny.gin",
         f"--gin_file={tmp_path / 'a' / 'allocation.gin'}", "--gin.BATCH_SIZE=8",
         "--gin.TASK_FEATURE_LENGTHS={'inputs': 32, 'targets': 16}", "--gin.TRAIN_STEPS=2",
         "--gin.EVAL_PERIOD=None", f"--gin.MODEL_DIR='{tmp_path / 'final'}'"],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    config_gin = (tmp_path / "final" / "config.gin").read_text()
    assert "cut_mixture.mixture = 'mini_xp3_smoke'" in config_gin
    assert f"'mini_xp3_sw': {allocation['sw']}" in config_gin


def test_pilots_run_smallest_sizes_first_and_refuse_a_pattern_without_the_language():
    sweep = allocate.pilots.plan(["sw", "yo"], [64, 8], 2, "mini_xp3_{language}")
    assert [(p.size, p.language, p.seed) for p in sweep] == [
        (8, "sw", 0), (8, "sw", 1), (8, "yo", 0), (8, "yo", 1),
        (64, "sw", 0), (64, "sw", 1), (64, "yo", 0), (64, "yo", 1)]
    assert sweep[0].task == "mini_xp3_sw" and sweep[0].name == "sw_8_seed0"
    with pytest.raises(allocate.UserError, match="must contain {language}"):
        allocate.pilots.plan(["sw"], [8], 1, "mini_xp3_sw")
