"""Held-out evaluation sets from their published formats; Flores and x-LLaMA tasks."""

import json

import pytest
import seqio

from mtf.data import crosslingual, evalsets, records
from tasks import crosslingual as crosslingual_tasks
from tasks import heldout

XNLI_HEADER = ("language\tgold_label\tsentence1_binary_parse\tsentence2_binary_parse\t"
               "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tpromptID\tpairID\t"
               "genre\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tsentence1_tokenized\t"
               "sentence2_tokenized\tmatch")


def xnli_row(lang, label, premise, hypothesis):
    cells = [lang, label, "", "", "", "", premise, hypothesis, "1", "1", "fiction",
             label, label, label, label, label, premise, hypothesis, "True"]
    return "\t".join(cells)


@pytest.fixture
def eval_dirs(tmp_path):
    xnli = tmp_path / "XNLI-1.0"
    xnli.mkdir()
    (xnli / "xnli.test.tsv").write_text("\n".join([
        XNLI_HEADER,
        xnli_row("en", "entailment", "A man sleeps.", "A person rests."),
        xnli_row("sw", "contradiction", "Mtu analala.", "Mtu anakimbia."),
        xnli_row("fr", "neutral", "Il pleut.", "Il fait froid."),
    ]) + "\n", encoding="utf-8")
    xcopa = tmp_path / "xcopa"
    (xcopa / "sw").mkdir(parents=True)
    (xcopa / "sw" / "test.sw.jsonl").write_text(json.dumps({
        "premise": "Mtoto alilia.", "choice1": "Alianguka.", "choice2": "Alicheka.",
        "question": "cause", "label": 0, "idx": 0}) + "\n", encoding="utf-8")
    story = tmp_path / "xstorycloze"
    story.mkdir()
    header = ["InputStoryid"] + [f"InputSentence{i}" for i in range(1, 5)] + [
        "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding"]
    row = ["id1", "S1.", "S2.", "S3.", "S4.", "Good end.", "Bad end.", "1"]
    (story / "spring2016.val.hi.tsv.split_20_80_eval.tsv").write_text(
        "\t".join(header) + "\n" + "\t".join(row) + "\n", encoding="utf-8")
    wino = tmp_path / "xwinograd"
    (wino / "pt").mkdir(parents=True)
    (wino / "pt" / "test.jsonl").write_text(json.dumps({
        "sentence": "O troféu não cabe na mala porque _ é grande.", "option1": "o troféu",
        "option2": "a mala", "answer": "1"}) + "\n", encoding="utf-8")
    return {"XNLI_DIR": str(xnli), "XCOPA_DIR": str(xcopa), "XSTORYCLOZE_DIR": str(story),
            "XWINOGRAD_DIR": str(wino)}


def first(name):
    task = seqio.get_mixture_or_task(name)
    return list(task.get_dataset(None, "validation", shuffle=False).as_numpy_iterator())


def by_template(name):
    return {e["template"].decode(): e for e in first(name)}


def choices(example):
    return [c.decode() for c in example["answer_choices"]]


def test_registers_every_family_with_promptsource_prompts(eval_dirs):
    names = heldout.register_all(eval_dirs)
    assert {"xnli_sw", "xnli_mt_sw", "xnli_ht_sw", "xcopa_sw", "xcopa_mt_sw",
            "xstorycloze_hi", "xstorycloze_mt_hi", "xwinograd_pt", "xwinograd_mt_pt"} <= set(names)
    assert "xnli_mt_en" not in names and "xwinograd_ht_pt" not in names
    # mt0_heldout (the mt0 recipes' EVAL_MIXTURE): every family, English prompts only
    mt0 = {t.name for t in seqio.get_mixture_or_task(heldout.MIXTURE).tasks}
    assert {"xnli_sw", "xcopa_sw", "xstorycloze_hi", "xwinograd_pt"} <= mt0
    assert not any("_mt_" in n or "_ht_" in n for n in mt0)
    for family in ("xnli", "xnli_mt", "xnli_ht", "xcopa", "xcopa_mt", "xstorycloze",
                   "xwinograd", "xwinograd_mt"):
        assert family in seqio.MixtureRegistry.names()
    # XNLI: promptsource's 15 English prompts, each example rendered as promptsource does
    sw = by_template("xnli_sw")
    assert len(sw) == 15
    gpt3 = sw["GPT-3 style"]
    assert gpt3["inputs_pretokenized"].decode() == (
        "Mtu analala.\nQuestion: Mtu anakimbia. True, False, or Neither?")
    assert choices(gpt3) == ["True", "Neither", "False"] and gpt3["label"] == 2
    assert gpt3["targets_pretokenized"] == b"False"
    assert choices(sw["MNLI crowdsource"]) == ["Correct", "Inconclusive", "Incorrect"]
    # machine- and human-translated variants of the same prompts, under the English names
    mt_sw, ht_fr = by_template("xnli_mt_sw"), by_template("xnli_ht_fr")
    assert len(mt_sw) == 5 and set(mt_sw) <= set(sw)
    assert ht_fr["can we infer"]["inputs_pretokenized"].decode() == (
        "Supposons « Il pleut. », peut-on inférer « Il fait froid. » ? Oui, non, ou peut-être ?")
    assert ht_fr["can we infer"]["label"] == 1
    assert choices(ht_fr["can we infer"]) == ["Oui", "Peut-être", "Non"]
    # XCOPA: COPA's prompts; the effect-only ones skip this cause question
    copa = by_template("xcopa_sw")
    assert len(copa) == 10 and "…As a result, C1 or C2?" not in copa
    best = copa["best_option"]
    assert best["inputs_pretokenized"].decode() == (
        "Mtoto alilia. \n\nWhat's the best option?\n- Alianguka.\n- Alicheka.\n\n"
        "We are looking for  a cause")
    assert choices(best) == ["Alianguka.", "Alicheka."] and best["label"] == 0
    assert len(by_template("xcopa_mt_sw")) == 5  # 'C1 or C2? premise' names its English one
    assert "C1 or C2? premise, so/because…" in by_template("xcopa_mt_sw")
    # XStoryCloze: story_cloze's original-task prompts; the right ending from the file
    story = by_template("xstorycloze_hi")
    assert len(story) == 5 and "Generate Ending" not in story
    assert all(e["label"] == 0 and e["targets_pretokenized"] == b"Good end."
               for e in story.values())
    assert b"S1. S2. S3. S4." in story["Answer Given options"]["inputs_pretokenized"]
    # XWinograd: winogrande's prompts; the target comes from `answer`, as in promptsource
    wino = by_template("xwinograd_pt")
    assert len(wino) == 5 and "True or False" not in wino
    replace = wino["Replace"]
    assert replace["inputs_pretokenized"].decode() == (
        "O troféu não cabe na mala porque _ é grande.\nReplace the _ in the above sentence "
        "with the correct option: \n- o troféu\n- a mala")
    assert replace["targets_pretokenized"].decode() == "o troféu" and replace["label"] == 0


def test_promptsource_files_render_every_prompt():
    """Every vendored prompt renders a record of its dataset, its target among its choices."""
    records = {
        "xnli": {"premise": "P.", "hypothesis": "H.", "label": 1},
        "xcopa": {"premise": "P.", "choice1": "A.", "choice2": "B.", "question": "effect",
                  "label": 1},
        "xstorycloze": {**{f"input_sentence_{i}": f"S{i}." for i in range(1, 5)},
                        "sentence_quiz1": "E1.", "sentence_quiz2": "E2.",
                        "answer_right_ending": 2, "label": 1},
        "xwinograd": {"sentence": "A _ B.", "option1": "x", "option2": "y", "answer": "2",
                      "label": 1},
    }
    for family, record in records.items():
        found = heldout.prompts(family)
        prompts = list(found.english) + [t for kind in ("mt", "ht")
                                         for ts in found.translated[kind].values() for t in ts]
        rendered = list(evalsets.choice_examples(iter([{**record, "language": "en"}]),
                                                 prompts, family))
        assert all(e["label"] == 1 and e["inputs"] for e in rendered), family
        skipped = len(prompts) - len(rendered)
        assert skipped == (2 if family == "xcopa" else 0), family  # COPA's cause-only two


def test_promptsource_reader_errors(tmp_path):
    from mtf.data import promptsource, templates
    with pytest.raises(templates.TemplateError, match="templates' mapping"):
        (tmp_path / "bad.yaml").write_text("dataset: x\ntemplates: []\n")
        promptsource.read(tmp_path / "bad.yaml", "en")
    wrong = tmp_path / "templates.yaml"
    wrong.write_text("dataset: x\ntemplates:\n  a: !Template\n    name: n\n"
                     "    jinja: '{{ x }} ||| {{ y }} ||| z'\n")
    with pytest.raises(templates.TemplateError, match="must contain '|||' once"):
        promptsource.read(wrong, "en")
    record = {"premise": "p", "hypothesis": "h", "label": 0, "language": "en"}
    (gpt3,) = [t for t in heldout.prompts("xnli").english if t.id == "GPT-3 style"]
    with pytest.raises(records.RecordError, match="label is 1"):
        list(evalsets.choice_examples(iter([{**record, "label": 1}]), [
            templates.Template("t", "{{premise}} ||| {{ answer_choices[0] }}",
                               answer_choices="a ||| b")], "x"))
    with pytest.raises(records.RecordError, match="not one of its answer choices"):
        list(evalsets.choice_examples(iter([record]), [
            templates.Template("t", "{{premise}} ||| c", answer_choices="a ||| b")], "x"))
    assert list(evalsets.choice_examples(iter([record]), [gpt3], "x"))[0]["label"] == 0


def test_generic_multiple_choice(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps({"inputs": "2+2?", "answer_choices": ["3", "4"], "label": 1,
                                "language": "en"}) + "\n"
                    + json.dumps({"inputs": "x", "answer_choices": ["a"], "label": 0}) + "\n")
    with pytest.raises(records.RecordError, match="mc.jsonl:2: answer_choices must be"):
        list(evalsets.multiple_choice(str(path)))
    kept = list(records.guarded(iter([]), lambda w, r: r, records.BadRecords(skip=True), "x"))
    assert kept == []
    heldout.register_multiple_choice("my_mc", str(path), skip_bad_records=True)
    (example,) = first("my_mc")
    assert example["targets_pretokenized"] == b"4" and example["label"] == 1


def test_bad_labels_name_the_line(tmp_path):
    path = tmp_path / "test.sw.jsonl"
    path.write_text(json.dumps({"premise": "p", "choice1": "a", "choice2": "b",
                                "question": "cause", "label": 5}) + "\n")
    with pytest.raises(records.RecordError, match="test.sw.jsonl:1: label 5 is not an integer"):
        list(evalsets.xcopa(str(path), "sw"))


def test_flores_both_directions_and_template_pool(tmp_path):
    devtest = tmp_path / "flores101_dataset" / "devtest"
    devtest.mkdir(parents=True)
    (devtest / "eng.devtest").write_text("Hello.\nThank you.\n")
    (devtest / "swh.devtest").write_text("Habari.\nAsante.\n")
    names = crosslingual_tasks.register_flores(str(devtest))
    assert names == ["flores_en_sw", "flores_sw_en"]
    to_sw = first("flores_en_sw")
    assert len(to_sw) == 2 * 4  # two sentences x four instruction paraphrases
    assert {e["targets_pretokenized"] for e in to_sw} == {b"Habari.", b"Asante."}
    assert any(b"from English to Swahili" in e["inputs_pretokenized"] for e in to_sw)
    assert {e["targets_pretokenized"] for e in first("flores_sw_en")} == {b"Hello.",
                                                                          b"Thank you."}
    (devtest / "swh.devtest").write_text("Habari.\n")
    with pytest.raises(records.RecordError, match="line-aligned"):
        list(crosslingual.parallel(str(devtest / "eng.devtest"), str(devtest / "swh.devtest"),
                                   "en", "sw"))


def test_xllama_alpaca_and_translation(tmp_path):
    (tmp_path / "alpaca").mkdir()
    (tmp_path / "parallel").mkdir()
    (tmp_path / "alpaca" / "en.json").write_text(json.dumps(
        [{"instruction": "Name a colour.", "input": "", "output": "Blue."}] * 60))
    (tmp_path / "alpaca" / "sw.json").write_text(json.dumps(
        [{"instruction": "Taja rangi.", "input": "", "output": "Bluu."},
         {"instruction": "Tafsiri.", "input": "Hello", "output": "Habari"}] * 30))
    (tmp_path / "parallel" / "en-sw.en").write_text("Good morning.\n" * 50)
    (tmp_path / "parallel" / "en-sw.sw").write_text("Habari za asubuhi.\n" * 50)
    names = crosslingual_tasks.register_xllama(str(tmp_path))
    assert names == ["xllama_alpaca_en", "xllama_alpaca_sw", "xllama_translation_sw"]
    mixture = seqio.get_mixture_or_task("xllama_sw")
    assert sorted(t.name for t in mixture.tasks) == names
    task = seqio.get_mixture_or_task("xllama_alpaca_sw")
    examples = list(task.get_dataset(None, "train", shuffle=False).as_numpy_iterator())
    assert {e["inputs_pretokenized"] for e in examples} == {b"Taja rangi.", b"Tafsiri.\n\nHello"}
    (tmp_path / "alpaca" / "sw.json").write_text(json.dumps([{"instruction": "x", "input": ""}]))
    with pytest.raises(records.RecordError, match=r"sw.json\[0\]: missing field 'output'"):
        list(crosslingual.alpaca(str(tmp_path / "alpaca" / "sw.json"), "sw"))
