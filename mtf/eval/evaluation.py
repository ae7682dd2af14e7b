"""Evaluation of parameters on a seqio task or mixture: the mT0 paper's numbers.

Rank-classification tasks (examples with `answer_choices` and `label`) get accuracy;
tasks with metric functions (their own, or EVAL_METRICS) get those on greedy (or beam)
decodes. Every number is kept per dataset, language and prompt template, with the median
and max over templates. Prompts and choices longer than TASK_FEATURE_LENGTHS are cut and
counted, never silently. Used by `runs.run.mode = 'eval'`, by training every EVAL_PERIOD
steps, and (`predict`) by `runs.run.mode = 'infer'`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import seqio

from mtf.data import batches, metrics, records, seqio_tasks
from mtf.errors import SettingError
from mtf.eval import decoding, scoring
from mtf.model import ModelConfig
from mtf.run_config import EvalConfig  # gin binds it here: evaluation.EvalConfig


@dataclasses.dataclass
class Example:
    dataset: str
    language: str
    template: str
    inputs: list[int]
    input_text: str
    target_text: str
    choices: list[list[int]] | None = None
    choice_texts: list[str] | None = None
    label: int | None = None


@dataclasses.dataclass
class Truncation:
    prompts: int = 0
    choices: int = 0
    examples: int = 0


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def cut_to_length(tokens: Sequence[int], length: int, eos_id: int) -> tuple[list[int], bool]:
    """Tokens ending in EOS, cut to `length` keeping EOS last (as seqio's trim + EOS)."""
    tokens = [int(t) for t in tokens]
    if len(tokens) <= length:
        return tokens, False
    return tokens[:length - 1] + [eos_id], True


def encode_with_eos(vocab: Any, text: str, length: int) -> tuple[list[int], bool]:
    """`text` as the tasks' features hold it: its ids and the vocabulary's EOS, cut to
    `length` keeping EOS last; and whether it was cut."""
    return cut_to_length(list(vocab.encode(text)) + [vocab.eos_id], length, vocab.eos_id)


def dataset_name(example_task_id: int, task_name: str, language: str,
                 names: Mapping[int, str]) -> str:
    """The dataset an example reports under: its task id's name (`names`: the task's
    `seqio_tasks.task_names`; the task type for the mini-xP3) without a trailing
    `_<language>` (xnli_fr -> xnli)."""
    name = names.get(int(example_task_id), task_name)
    suffix = f"_{language}"
    return name[:-len(suffix)] if name.endswith(suffix) and len(name) > len(suffix) else name


class Evaluator:
    """Reads a task or mixture's examples once and scores parameters on them; the scorer
    and decoder compile once for the run (same mesh and rules as training)."""

    def __init__(self, model_config: ModelConfig, mesh: Any, config: EvalConfig) -> None:
        if not config.mixture_or_task_name:
            raise SettingError("no evaluation task: set EVAL_MIXTURE (a task or mixture "
                               "registered by `import tasks`, e.g. 'mini_xp3_heldout')")
        if not config.task_feature_lengths:
            raise SettingError("EVAL_TASK_FEATURE_LENGTHS (or TASK_FEATURE_LENGTHS) is needed")
        data_shards = mesh.shape["data"] * mesh.shape["fsdp"]
        if config.batch_size % data_shards:
            raise SettingError(f"EVAL_BATCH_SIZE={config.batch_size} must be a multiple of the "
                               f"{data_shards} data-parallel devices")
        self.model_config, self.mesh, self.config = model_config, mesh, config
        self.metric_fns = metrics.by_name(config.metrics) if config.metrics else None
        try:
            provider = seqio.get_mixture_or_task(config.mixture_or_task_name)
        except ValueError:
            raise SettingError(f"evaluation task {config.mixture_or_task_name!r} is not "
                               "registered; list them with `python -m mtf.tasks list`") from None
        self.tasks = seqio_tasks.tasks_of(provider)
        self.input_length = int(config.task_feature_lengths["inputs"])
        self.target_length = int(config.task_feature_lengths["targets"])
        self.truncation = Truncation()
        self._examples: dict[str, list[Example]] | None = None
        self._scorer: scoring.Scorer | None = None
        self._decoder: decoding.Decoder | None = None

    # -- examples -------------------------------------------------------------------------
    def examples(self) -> dict[str, list[Example]]:
        if self._examples is None:
            self._examples = {t.name: self._read(t) for t in self.tasks}
        return self._examples

    def _read(self, task: seqio.Task) -> list[Example]:
        if self.config.split not in task.splits:
            raise SettingError(f"task {task.name} has no {self.config.split!r} split (it has "
                               f"{list(task.splits)})")
        vocab = task.output_features["targets"].vocabulary
        dataset = task.get_dataset(sequence_length=None, split=self.config.split,
                                   shuffle=False, num_epochs=1, use_cached=False)
        out: list[Example] = []
        limit = self.config.max_examples_per_task
        seen: dict[tuple[str, str, str], int] = {}
        names = seqio_tasks.task_names(task)
        for raw in batches.record_errors_unwrapped(dataset.as_numpy_iterator()):
            if limit is not None:
                key = (int(raw.get("task_id", 0)), _text(raw.get("language", b"")),
                       _text(raw.get("template", b"")))
                seen[key] = seen.get(key, 0) + 1
                if seen[key] > limit:
                    continue
            out.append(self._example(task, raw, vocab, names))
        if not out:
            raise SettingError(f"task {task.name} has no examples in its "
                               f"{self.config.split!r} split")
        return out

    def _example(self, task: seqio.Task, raw: Mapping[str, Any], vocab,
                 names: Mapping[int, str]) -> Example:
        language = _text(raw.get("language", b""))
        inputs, cut = cut_to_length(raw["inputs"], self.input_length, vocab.eos_id)
        self.truncation.prompts += cut
        example = Example(dataset_name(raw.get("task_id", 0), task.name, language, names),
                          language,
                          _text(raw.get("template", b"")), inputs,
                          _text(raw.get("inputs_pretokenized", b"")),
                          _text(raw.get("targets_pretokenized", b"")))
        if "answer_choices" in raw:
            texts = [_text(c) for c in raw["answer_choices"]]
            label = int(raw["label"])
            if not texts or not 0 <= label < len(texts):
                raise records.RecordError(
                    f"task {task.name}: an example ({example.input_text[:60]!r}) has label "
                    f"{label} but {len(texts)} answer choices")
            choices = []
            for text in texts:
                tokens, cut = encode_with_eos(vocab, text, self.target_length)
                self.truncation.choices += cut
                choices.append(tokens)
            example.choices, example.choice_texts, example.label = choices, texts, label
        self.truncation.examples += 1
        return example

    # -- scoring --------------------------------------------------------------------------
    def _scorer_for(self, rows: int) -> scoring.Scorer:
        if self._scorer is None or self._scorer.rows < rows:
            self._scorer = scoring.Scorer(self.model_config, self.mesh, self.config.batch_size,
                                        self.input_length, self.target_length, rows)
        return self._scorer

    def _decoder_for(self) -> decoding.Decoder:
        if self._decoder is None:
            self._decoder = decoding.Decoder(self.model_config, decoding.DecodeConfig(
                max_decode_length=self.config.max_decode_length or self.target_length,
                beam_size=self.config.beam_size, alpha=self.config.alpha), self.mesh)
        return self._decoder

    def rank(self, params: Any, examples: Sequence[Example]) -> scoring.Scored:
        most = max(len(e.choices or ()) for e in examples)
        scorer = self._scorer_for(self.config.batch_size * most)
        return scorer.score(params, [e.inputs for e in examples],
                            [e.choices for e in examples], self.config.length_normalized)

    def generate(self, params: Any, examples: Sequence[Example], vocab) -> list[str]:
        decoder = self._decoder_for()
        size, texts = self.config.batch_size, []
        for start in range(0, len(examples), size):
            chunk = examples[start:start + size]
            enc = np.zeros((size, self.input_length), np.int32)
            for i, e in enumerate(chunk):
                enc[i, :len(e.inputs)] = e.inputs
            tokens = decoder(params, enc).tokens[:len(chunk), 0]
            texts += [vocab.decode(decoding.until_eos(row, vocab.eos_id)) for row in tokens]
        return texts

    def run(self, params: Any, keep_predictions: bool = False) -> dict[str, Any]:
        """{'results': dataset -> language -> {'templates': {id: metrics}, 'median', 'max',
        'chance' (rank classification: the accuracy of guessing, 1 / choices, in percent)},
        'truncated': counts, 'examples': n} (+ 'predictions' per task when asked)."""
        groups: dict[tuple[str, str, str], dict[str, float]] = {}
        chances: dict[tuple[str, str], list[float]] = {}  # 1 / choices, per example
        predictions: dict[str, list[dict]] = {}
        for task in self.tasks:
            examples = self.examples()[task.name]
            fns = self.metric_fns if self.metric_fns is not None else list(task.metric_fns)
            has_choices = examples[0].choices is not None
            grouped = _grouped(examples)
            if not has_choices and not fns:
                raise SettingError(f"task {task.name} has no answer choices (rank "
                                   "classification) and no metric functions; give it "
                                   "metric_fns or set EVAL_METRICS, e.g. ['exact_match']")
            rows = [{"inputs": e.input_text, "targets": e.target_text, "language": e.language,
                     "template": e.template, "dataset": e.dataset} for e in examples]
            if has_choices:
                scored = self.rank(params, examples)
                for row, e, s, p in zip(rows, examples, scored.scores, scored.predictions,
                                        strict=True):
                    row.update(answer_choices=e.choice_texts, label=e.label, scores=s,
                               prediction=p)
                for key, idx in grouped.items():
                    groups.setdefault(key, {}).update(metrics.accuracy(
                        [examples[i].label for i in idx], [scored.predictions[i] for i in idx]))
                    chances.setdefault(key[:2], []).extend(
                        1.0 / len(examples[i].choices) for i in idx)
            if fns:
                vocab = task.output_features["targets"].vocabulary
                texts = self.generate(params, examples, vocab)
                for row, text in zip(rows, texts, strict=True):
                    row["generated"] = text
                for key, idx in grouped.items():
                    for fn in fns:
                        groups.setdefault(key, {}).update(fn(
                            [examples[i].target_text for i in idx], [texts[i] for i in idx]))
            for key, idx in grouped.items():
                groups[key]["examples"] = groups[key].get("examples", 0) + len(idx)
            if keep_predictions:
                predictions[task.name] = rows
        results: dict[str, Any] = {}
        for (dataset, language, template), values in sorted(groups.items()):
            results.setdefault(dataset, {}).setdefault(language, {"templates": {}})[
                "templates"][template or "-"] = values
        for dataset, languages in results.items():
            for language, entry in languages.items():
                entry.update(metrics.over_templates(
                    {t: {k: v for k, v in m.items() if k != "examples"}
                     for t, m in entry["templates"].items()}))
                if (dataset, language) in chances:  # accuracy's floor: guessing a choice
                    values = chances[dataset, language]
                    entry["chance"] = 100.0 * sum(values) / len(values)
        truncated = dataclasses.asdict(self.truncation)
        if truncated["prompts"] or truncated["choices"]:
            logging.warning("evaluation cut %d of %d prompts to %d tokens and %d answer "
                            "choices to %d tokens (raise EVAL_TASK_FEATURE_LENGTHS to avoid)",
                            truncated["prompts"], truncated["examples"], self.input_length,
                            truncated["choices"], self.target_length)
        out = {"mixture": self.config.mixture_or_task_name, "results": results,
               "truncated": {"prompts": truncated["prompts"], "choices": truncated["choices"],
                             "input_length": self.input_length,
                             "target_length": self.target_length},
               "examples": sum(len(v) for v in self.examples().values())}
        if keep_predictions:
            out["predictions"] = predictions
        return out


def _grouped(examples: Sequence[Example]) -> dict[tuple[str, str, str], list[int]]:
    out: dict[tuple[str, str, str], list[int]] = {}
    for i, e in enumerate(examples):
        out.setdefault((e.dataset, e.language, e.template), []).append(i)
    return out


