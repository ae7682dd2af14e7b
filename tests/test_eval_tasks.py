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


def test_registers_every_family_with_choices(eval_dirs):
    names = heldout.register_all(eval_dirs)
    assert {"xnli_sw", "xcopa_sw", "xstorycloze_hi", "xwinograd_pt"} <= set(names)
    for family in ("xnli", "xcopa", "xstorycloze", "xwinograd"):
        assert family in seqio.MixtureRegistry.names()
    sw = first("xnli_sw")
    # two English templates plus none in Swahili ('both' adds translations where they exist)
    assert len(sw) == 2
    assert [c.decode() for c in sw[0]["answer_choices"]] == ["True", "Neither", "False"]
    assert sw[0]["label"] == 2 and sw[0]["targets_pretokenized"].decode() == "False"
    assert "Mtu analala." in sw[0]["inputs_pretokenized"].decode()
    fr = first("xnli_fr")
    assert len(fr) == 3 and any("Peut-on" in e["inputs_pretokenized"].decode() for e in fr)
    copa = first("xcopa_sw")[0]
    assert [c.decode() for c in copa["answer_choices"]] == ["Alianguka.", "Alicheka."]
    story = first("xstorycloze_hi")[0]
    assert story["label"] == 0 and b"S1. S2. S3. S4." in story["inputs_pretokenized"]
    wino = first("xwinograd_pt")[0]
    assert wino["targets_pretokenized"].decode() == "o troféu"


def test_generic_multiple_choice(tmp_path):
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps({"inputs": "2+2?", "answer_choices": ["3", "4"], "label": 1,
                                "language": "en"}) + "\n"
                    + json.dumps({"inputs": "x", "answer_choices": ["a"], "label": 0}) + "\n")
    with pytest.raises(records.RecordError, match="mc.jsonl:2: answer_choices must be"):
        list(evalsets.multiple_choice(str(path)))
    report = records.SkipReport()
    kept = list(records.guarded(iter([]), lambda w, r: r, True, "x", report))
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
