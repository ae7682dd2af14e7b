"""Bad input: every case names file and line (or template and field); skipping is counted."""

import json

import pytest

from mtf.data import records, seqio_tasks, templates, xp3


def read_all(path, skip=False):
    policy = records.BadRecords(skip)
    return list(xp3.read([str(path)], policy)), policy.report


GOOD = json.dumps({"inputs": "a", "targets": "b"})
CASES = {
    "malformed json": (b'{"inputs": "a", "targets": }', "malformed JSON"),
    "missing field": (b'{"inputs": "a"}', "missing field 'targets'"),
    "non-string field": (b'{"inputs": "a", "targets": 3}', "field 'targets' must be a string"),
    "empty targets": (b'{"inputs": "a", "targets": "  "}', "field 'targets' is empty"),
    "invalid utf-8": (b'{"inputs": "\xff\xfe", "targets": "b"}', "invalid UTF-8"),
    "unknown language": (b'{"inputs": "a", "targets": "b", "language": "xx"}',
                         "unknown language code 'xx'"),
    "not an object": (b'["a", "b"]', "expected a JSON object"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_line_names_file_and_line(tmp_path, case):
    bad, message = CASES[case]
    path = tmp_path / "merged_en.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + bad + b"\n" + GOOD.encode() + b"\n")
    with pytest.raises(records.RecordError) as e:
        read_all(path)
    assert f"{path}:2" in str(e.value) and message in str(e.value)


@pytest.mark.parametrize("case", sorted(CASES))
def test_skip_option_skips_and_counts(tmp_path, case):
    bad, _ = CASES[case]
    path = tmp_path / "merged_en.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + bad + b"\n" + bad + b"\n" + GOOD.encode() + b"\n")
    kept, report = read_all(path, skip=True)
    assert len(kept) == 2
    assert report.total == 2 and f"{path}:2" in report.summary()


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl does not exist"):
        read_all(tmp_path / "nowhere.jsonl")
    with pytest.raises(FileNotFoundError, match="XP3_DIR=.* is not a directory"):
        xp3.language_dirs(str(tmp_path / "absent"))


def test_template_referencing_a_missing_field(tmp_path):
    t = templates.Template("ask", "Q: {{ question }} ||| {{ answer }}", source="f.yaml")
    with pytest.raises(templates.TemplateError, match="template 'ask'.*field 'answer'"):
        t.apply({"question": "why?"})
    records_ = [{"question": "why?", "_where": "data.jsonl:7"}, {"question": "a", "answer": "b"}]
    with pytest.raises(records.RecordError, match="data.jsonl:7: template 'ask'"):
        list(seqio_tasks.prompted_examples(records_, "qa", [t], "en"))
    policy = records.BadRecords(skip=True)
    kept = list(seqio_tasks.prompted_examples(records_, "qa", [t], "en", policy))
    assert len(kept) == 1 and policy.report.total == 1


def test_bad_template_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("templates:\n  - id: x\n    jinja: 'no separator'\n")
    with pytest.raises(templates.TemplateError, match="'x'.*must contain '|||' once"):
        templates.load_templates(bad)
    bad.write_text("templates:\n  - id: x\n    jinja: '{{ a ||| b'\n")
    with pytest.raises(templates.TemplateError, match="'x'.*syntax error"):
        templates.load_templates(bad)
    bad.write_text("templates:\n  - id: x\n    jinja: '{{ a }} ||| b'\n"
                   "    translations:\n      fr: '{{ c }} ||| b'\n")
    with pytest.raises(templates.TemplateError, match="translation 'fr' reads fields \\['c'\\]"):
        templates.load_templates(bad)
    bad.write_text("templates:\n  - id: x\n    jinja: '{{ a }} ||| b'\n"
                   "    translations:\n      qqq: '{{ a }} ||| b'\n")
    with pytest.raises(Exception, match="unknown language code 'qqq'"):
        templates.load_templates(bad)


def test_errors_surface_through_tf_data_with_their_location(tmp_path):
    """Reading happens inside tf.data; the message must still reach the user."""
    from tasks import mini_xp3
    from tasks import xp3 as xp3_tasks

    root = tmp_path / "xp3"
    (root / "en").mkdir(parents=True)
    (root / "en" / "merged_en.jsonl").write_text(GOOD + "\n{broken\n")
    xp3_tasks.register(str(root), vocabulary_path=str(mini_xp3.VOCABULARY_PATH))
    import seqio

    ds = seqio.get_mixture_or_task("xp3_en").get_dataset(None, "train", shuffle=False)
    with pytest.raises(Exception, match="merged_en.jsonl:2: malformed JSON"):
        list(ds.as_numpy_iterator())
