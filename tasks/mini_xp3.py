"""The embedded mini-xP3: prompted multilingual tasks built from CLDR (no download).

Training mixture `mini_xp3`: one task per language (`mini_xp3_<lang>`), four task types,
English and in-language prompts; `mini_xp3_smoke`, six of its languages, starts a run in
a few seconds less (each task's input pipeline is built at start-up), for smoke tests and
CI. Held out (`mini_xp3_heldout`): the task type
`currency_from_english` in every training language, and every task type in the held-out
languages, to measure zero-shot task and language generalisation. Held-out examples are
also rank-classification ones, as the paper's held-out sets: the target among up to three
other targets of the same prompt and language (chance is 25%), beside generation metrics.
"""

from __future__ import annotations

import functools
import os
import random
import zlib
from collections.abc import Callable
from pathlib import Path

import seqio

from mtf.data import cldr, languages, metrics, mixing, seqio_tasks, templates
from tasks import vocabularies

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates" / "mini_xp3.yaml"
VOCABULARY_PATH = HERE / "vocab" / "mini_xp3.model"

HELDOUT_LANGUAGES = ("ig", "ta", "eu")
SMOKE_LANGUAGES = ("sw", "yo", "hi", "ar", "zh", "bm")  # low- and high-resource, four scripts
HELDOUT_TASK_TYPE = "currency_from_english"
# tw is Akan in CLDR, the same data as ak; fon and tum are not in CLDR.
LANGUAGES = tuple(c for c in languages.XP3_LANGUAGES
                  if cldr.available(c) and c != "tw" and c not in HELDOUT_LANGUAGES)

_TERMS = ("month", "weekday", "country", "language")
TASK_TYPES: dict[str, tuple[Callable[[str], list[dict]], tuple[str, ...]]] = {
    "term_from_english": (lambda c: cldr.term_records(c, _TERMS),
                          ("translate_into", "kind_called")),
    "term_to_english": (lambda c: cldr.term_records(c, _TERMS),
                        ("translate_to_english", "word_means")),
    "language_identification": (cldr.identification_records,
                                ("which_language", "text_language")),
    "autonym": (cldr.autonym_records, ("own_name", "native_name")),
    HELDOUT_TASK_TYPE: (lambda c: cldr.term_records(c, ("currency",)),
                        ("currency_called", "currency_translate")),
}
TRAINING_TASK_TYPES = tuple(t for t in TASK_TYPES if t != HELDOUT_TASK_TYPE)


@functools.cache
def template_set() -> templates.TemplateSet:
    return templates.load_templates(TEMPLATES)


@functools.cache
def vocabulary() -> seqio.Vocabulary:
    """The embedded SentencePiece model, or $MTF_VOCABULARY's (e.g. one `mtf.vocab extend`
    wrote for a language this one splits into many pieces)."""
    return vocabularies.mt5(os.environ.get("MTF_VOCABULARY") or str(VOCABULARY_PATH))


@functools.cache
def examples(language: str, task_types: tuple[str, ...], prompts: str = "both"
             ) -> tuple[dict, ...]:
    """Every prompted example of `task_types` in `language` (metadata task = task type).

    Cached: the task's dataset and its size for mixing rates read the same examples.
    """
    out: list[dict] = []
    for task_type in task_types:
        records_fn, ids = TASK_TYPES[task_type]
        chosen = template_set().subset(ids).for_language(language, prompts)
        out += seqio_tasks.prompted_examples(records_fn(language), task_type, chosen, language)
    return tuple(out)


@functools.cache
def choice_examples(language: str, task_types: tuple[str, ...]) -> tuple[dict, ...]:
    """`examples` with answer choices: the target and up to 3 other targets of the same
    task type, template and language, in an order fixed by the prompt's hash. A prompt
    whose group has a single distinct target is left out (nothing to choose between)."""
    plain = examples(language, task_types)
    pools: dict[tuple[int, str], list[str]] = {}
    for e in plain:
        pool = pools.setdefault((e["task_id"], e["template"]), [])
        if e["targets"] not in pool:
            pool.append(e["targets"])
    out = []
    for e in plain:
        others = [t for t in pools[(e["task_id"], e["template"])] if t != e["targets"]]
        if not others:
            continue
        rnd = random.Random(zlib.crc32(e["inputs"].encode("utf-8")))
        choices = rnd.sample(others, min(3, len(others))) + [e["targets"]]
        rnd.shuffle(choices)
        out.append({**e, "answer_choices": choices, "label": choices.index(e["targets"])})
    return tuple(out)


def _register(name: str, language: str, task_types: tuple[str, ...],
              validation_fraction: float, choices: bool = False) -> str:
    build = functools.partial(choice_examples if choices else examples, language, task_types)
    seqio_tasks.register_task(
        name, lambda _bad_records: build(),  # generated in code: no record can be bad
        vocabulary(), validation_fraction,
        metric_fns=[metrics.exact_match, metrics.chrf], in_memory=not choices, choices=choices,
        task_names=task_types,  # the examples carry their task type's id
        size=lambda: sum(seqio_tasks.split_of(e, validation_fraction) == "train"
                         for e in build()))
    return name


def register() -> None:
    train = [_register(f"mini_xp3_{c}", c, TRAINING_TASK_TYPES, 0.05) for c in LANGUAGES]
    seqio_tasks.register_mixture(
        "mini_xp3", [(name, mixing.rate_fn("temperature")) for name in train])
    seqio_tasks.register_mixture("mini_xp3_smoke", [
        (f"mini_xp3_{c}", mixing.rate_fn("temperature")) for c in SMOKE_LANGUAGES])
    heldout = [_register(f"mini_xp3_heldout_currency_{c}", c, (HELDOUT_TASK_TYPE,), 1.0, True)
               for c in LANGUAGES if cldr.term_records(c, ("currency",))]
    heldout += [_register(f"mini_xp3_heldout_{c}", c, tuple(TASK_TYPES), 1.0, True)
                for c in HELDOUT_LANGUAGES]
    seqio_tasks.register_mixture("mini_xp3_heldout", [(name, 1.0) for name in heldout])


register()
