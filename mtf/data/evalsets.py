"""Held-out evaluation sets in their published file formats, as rank-classification records.

Each reader yields raw records (dataset fields + `language`, `_where`); templates turn a
record into `inputs` and `answer_choices`, and `label` indexes the right choice. The
paper's protocol scores every choice by the summed log-probability of its tokens.
Nothing is downloaded: point the readers at local copies.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from mtf.data import languages, records, templates

XNLI_LABELS = {"entailment": 0, "neutral": 1, "contradiction": 2}


def xnli(path: str, language: str | None = None,
         bad_records: records.BadRecords | None = None) -> Iterator[dict]:
    """XNLI-1.0's `xnli.{dev,test}.tsv` (all languages, a `language` column) or a
    per-language tsv with premise/hypothesis/label columns (XNLI's HF export)."""

    def convert(where: str, row: dict[str, str]) -> dict | None:
        lang = row.get("language") or language
        if language and lang != language:
            return None
        premise = row.get("sentence1", row.get("premise"))
        hypothesis = row.get("sentence2", row.get("hypothesis"))
        label = row.get("gold_label", row.get("label"))
        if premise is None or hypothesis is None or label is None:
            raise records.RecordError(f"{where}: needs sentence1/sentence2/gold_label columns "
                                      f"(or premise/hypothesis/label); got {sorted(row)}")
        label_id = XNLI_LABELS.get(label, int(label) if label.isdigit() else -1)
        if label_id not in (0, 1, 2):
            raise records.RecordError(f"{where}: label {label!r} is not one of "
                                      f"{list(XNLI_LABELS)} or 0/1/2")
        return {"premise": premise, "hypothesis": hypothesis, "label": label_id,
                "language": _lang(lang, where), "_where": where}

    return records.guarded(records.iter_tsv(path), convert, bad_records, path)


def xcopa(path: str, language: str, bad_records: records.BadRecords | None = None
          ) -> Iterator[dict]:
    """XCOPA's `{lang}/test.{lang}.jsonl`: premise, choice1, choice2, question, label."""

    def convert(where: str, record: dict) -> dict:
        if record["question"] not in ("cause", "effect"):
            raise records.RecordError(f"{where}: question must be 'cause' or 'effect'")
        return {**record, "label": _int_label(record.get("label"), 2, where),
                "language": _lang(language, where), "_where": where}

    return records.jsonl_records(path, ("premise", "choice1", "choice2", "question"),
                                 bad_records, convert=convert)


def xstorycloze(path: str, language: str, bad_records: records.BadRecords | None = None
                ) -> Iterator[dict]:
    """XStoryCloze's `spring2016.val.{lang}.tsv.split_20_80_{train,eval}.tsv` (or .csv), as
    the fields of HF's story_cloze that promptsource's templates read."""
    delimiter = "," if path.endswith(".csv") else "\t"
    needed = [f"InputSentence{i}" for i in range(1, 5)] + [
        "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding"]

    def rows() -> Iterator[tuple[str, dict[str, str]]]:
        with records.open_text(path) as f:
            text = records.decode_utf8(f.read(), path)
        reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
        if missing:
            raise records.RecordError(f"{path}: missing columns {missing}")
        for row in reader:
            yield f"{path}:{reader.line_num}", row

    def convert(where: str, row: dict[str, str]) -> dict:
        label = _int_label(row["AnswerRightEnding"], 2, where, one_based=True)
        return {**{f"input_sentence_{i}": row[f"InputSentence{i}"].strip() for i in range(1, 5)},
                "sentence_quiz1": row["RandomFifthSentenceQuiz1"],
                "sentence_quiz2": row["RandomFifthSentenceQuiz2"],
                "answer_right_ending": label + 1, "label": label,
                "language": _lang(language, where), "_where": where}

    return records.guarded(rows(), convert, bad_records, path)


def xwinograd(path: str, language: str, bad_records: records.BadRecords | None = None
              ) -> Iterator[dict]:
    """XWinograd jsonl: sentence with one `_`, option1, option2, answer ('1' or '2'), as
    winogrande's fields (promptsource's templates read them)."""

    def convert(where: str, record: dict) -> dict:
        if record["sentence"].count("_") != 1:
            raise records.RecordError(f"{where}: sentence must contain exactly one '_'")
        label = _int_label(record["answer"], 2, where, one_based=True)
        return {"sentence": record["sentence"], "option1": record["option1"],
                "option2": record["option2"], "answer": str(label + 1), "label": label,
                "language": _lang(language, where), "_where": where}

    return records.jsonl_records(path, ("sentence", "option1", "option2"), bad_records,
                                 convert=convert)


def multiple_choice(path: str, language: str | None = None,
                    bad_records: records.BadRecords | None = None) -> Iterator[dict]:
    """Any multiple-choice set as jsonl: {inputs, answer_choices: [str], label: int,
    language?}; already prompted, so no template is needed."""

    def convert(where: str, record: dict) -> dict:
        choices = record.get("answer_choices")
        if (not isinstance(choices, list) or len(choices) < 2
                or not all(isinstance(c, str) and c.strip() for c in choices)):
            raise records.RecordError(f"{where}: answer_choices must be a list of at least "
                                      "two non-empty strings")
        lang = record.get("language") or language
        if lang is None:
            raise records.RecordError(f"{where}: no 'language' field and no language given")
        return {**record, "label": _int_label(record.get("label"), len(choices), where),
                "language": _lang(lang, where), "_where": where}

    return records.jsonl_records(path, ("inputs",), bad_records, nonempty=("inputs",),
                                 convert=convert)


def _lang(code: str | None, where: str) -> str:
    try:
        return languages.normalize(code or "")
    except languages.LanguageError as e:
        raise records.RecordError(f"{where}: {e}") from None


def _int_label(value: Any, n: int, where: str, one_based: bool = False) -> int:
    try:
        label = int(value) - (1 if one_based else 0)
    except (TypeError, ValueError):
        label = -1
    if not 0 <= label < n:
        shown = f"1..{n}" if one_based else f"0..{n - 1}"
        raise records.RecordError(f"{where}: label {value!r} is not an integer in {shown}")
    return label


def choice_examples(raw: Iterator[Mapping[str, Any]], prompts: Sequence[templates.Template]
                    | None, dataset: str) -> Iterator[dict]:
    """Rank-classification examples: inputs, answer_choices, label, language, template.

    With templates, the label is the rendered target's place among the rendered choices (as
    t-zero's evaluation finds it), checked against the record's own label; a template that
    renders nothing for a record (a conditional prompt) skips it.
    """
    for record in raw:
        where = record.get("_where", dataset)
        if prompts is None:
            yield {"inputs": record["inputs"], "answer_choices": list(record["answer_choices"]),
                   "label": record["label"], "language": record["language"], "template": ""}
            continue
        for t in prompts:
            try:
                inputs, target = t.apply(record)
                choices = t.answer_choices_for(record)
            except templates.NotApplicable:
                continue
            except templates.TemplateError as e:
                raise records.RecordError(f"{where}: {e}") from None
            if not choices or target not in choices:
                raise records.RecordError(f"{where}: template {t.id!r} renders the target "
                                          f"{target!r}, which is not one of its answer choices "
                                          f"{choices!r}")
            label = choices.index(target)
            expected = record["label"]
            if label != expected and (expected >= len(choices) or choices[expected] != target):
                raise records.RecordError(f"{where}: template {t.id!r} makes choice {label} "
                                          f"right; the record's label is {expected}")
            yield {"inputs": inputs, "answer_choices": choices, "label": label,
                   "language": record["language"], "template": t.id}
