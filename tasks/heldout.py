"""Held-out evaluation tasks (rank classification): XNLI, XCOPA, XStoryCloze, XWinograd.

Registered from local copies of the published files when their folder is set:
  XNLI_DIR        XNLI-1.0/ with xnli.test.tsv          -> xnli_<lang>
  XCOPA_DIR       data/ with <lang>/test.<lang>.jsonl    -> xcopa_<lang>
  XSTORYCLOZE_DIR spring2016.val.<lang>.tsv.split_20_80_eval.tsv files -> xstorycloze_<lang>
  XWINOGRAD_DIR   <lang>/test.jsonl                      -> xwinograd_<lang>
Prompts are the ones mT0's evaluation applied: promptsource's templates (vendored in
templates/promptsource, Apache-2.0) for XNLI, COPA, story_cloze and winogrande, English
originals marked `original_task`. Where promptsource has machine- or human-translated
variants of them, `<family>_mt_<lang>` / `<family>_ht_<lang>` use those instead. Each
family (and each variant) also gets a mixture of its languages, and `mt0_heldout` gathers
the English-prompt tasks of every family registered (the mt0 recipes evaluate it).
`register_multiple_choice` adds any jsonl multiple-choice set ({inputs, answer_choices,
label, language}).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from mtf import storage
from mtf.data import evalsets, promptsource, records, seqio_tasks, templates
from tasks import vocabularies

PROMPTSOURCE = Path(__file__).resolve().parent / "templates" / "promptsource"
XNLI_LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr",
                  "ur", "vi", "zh")
MIXTURE = "mt0_heldout"  # every family registered here, English prompts: the paper's table
# family -> (English templates, folder of translated variants), as mT0's evaluation used them
FAMILIES = {
    "xnli": ("xnli/en/templates.yaml", "xnli"),
    "xcopa": ("super_glue/copa/templates.yaml", "xcopa"),
    "xstorycloze": ("story_cloze/2016/templates.yaml", "Muennighoff/xstory_cloze"),
    "xwinograd": ("winogrande/winogrande_xl/templates.yaml", "Muennighoff/xwinograd"),
}


@functools.cache
def prompts(family: str) -> promptsource.Prompts:
    english, translated = FAMILIES[family]
    return promptsource.family(PROMPTSOURCE / english, PROMPTSOURCE / translated)


def register_choice_task(name: str, raw: Callable[..., Iterator[dict]], language: str,
                         chosen: Sequence[templates.Template] | None,
                         skip_bad_records: bool = False) -> str:
    """A rank-classification task: `raw(bad_records)` records through `chosen` templates
    (None: the records are already prompted)."""

    def build(bad_records: records.BadRecords):
        return seqio_tasks.choice_examples(
            evalsets.choice_examples(raw(bad_records), chosen, name), name)

    seqio_tasks.register_task(name, build, vocabularies.mt5(), validation_fraction=1.0,
                              choices=True, skip_bad_records=skip_bad_records)
    return name


def register_family(family: str, raw_by_language: dict[str, Callable[..., Iterator[dict]]]
                    ) -> list[str]:
    """`<family>_<lang>` with English prompts for every language, `<family>_{mt,ht}_<lang>`
    where translated prompts exist, and a mixture per prompt kind."""
    found = prompts(family)
    names = []
    for kind in promptsource.KINDS:
        prefix = family if kind == "en" else f"{family}_{kind}"
        kind_names = [register_choice_task(f"{prefix}_{lang}", raw, lang,
                                           found.for_language(lang, kind))
                      for lang, raw in raw_by_language.items()
                      if found.for_language(lang, kind)]
        if kind_names:
            seqio_tasks.register_mixture(prefix, [(n, 1.0) for n in kind_names])
        names += kind_names
    return names


def register_multiple_choice(name: str, path: str, language: str | None = None,
                             skip_bad_records: bool = False) -> str:
    """Any jsonl multiple-choice set, already prompted."""
    return register_choice_task(
        name, functools.partial(evalsets.multiple_choice, path, language), language or "en",
        None, skip_bad_records)


def register_all(env: dict[str, str] | None = None) -> list[str]:
    env = dict(os.environ if env is None else env)
    names: list[str] = []
    if env.get("XNLI_DIR"):
        path = storage.join(env["XNLI_DIR"], "xnli.test.tsv")
        names += register_family("xnli", {
            c: functools.partial(evalsets.xnli, path, c) for c in XNLI_LANGUAGES})
    if env.get("XCOPA_DIR"):
        root = env["XCOPA_DIR"]
        names += register_family("xcopa", {
            c: functools.partial(evalsets.xcopa, storage.join(root, c, f"test.{c}.jsonl"), c)
            for c in _subdirs(root)})
    if env.get("XSTORYCLOZE_DIR"):
        root = env["XSTORYCLOZE_DIR"]
        pattern = re.compile(r"spring2016\.val\.([a-z_]+)\.tsv\.split_20_80_eval\.tsv$")
        names += register_family("xstorycloze", {
            m.group(1): functools.partial(evalsets.xstorycloze, storage.join(root, f),
                                          m.group(1))
            for f in sorted(storage.listdir(root)) if (m := pattern.match(f))})
    if env.get("XWINOGRAD_DIR"):
        root = env["XWINOGRAD_DIR"]
        names += register_family("xwinograd", {
            _language(c): functools.partial(evalsets.xwinograd,
                                            storage.join(root, c, "test.jsonl"), _language(c))
            for c in _subdirs(root)})
    english = [n for n in names if not any(f"_{k}_" in n for k in ("mt", "ht"))]
    if english:
        seqio_tasks.register_mixture(MIXTURE, [(n, 1.0) for n in english])
    return sorted(names)


def _language(folder: str) -> str:
    """XWinograd's folders use 'jp' for Japanese."""
    return promptsource.FOLDER_LANGUAGES.get(folder, folder)


def _subdirs(root: str) -> list[str]:
    return [d for d in storage.listdir(root) if storage.isdir(storage.join(root, d))]


register_all()
