"""Held-out evaluation tasks (rank classification): XNLI, XCOPA, XStoryCloze, XWinograd.

Registered from local copies of the published files when their folder is set:
  XNLI_DIR        XNLI-1.0/ with xnli.test.tsv          -> xnli_<lang>
  XCOPA_DIR       data/ with <lang>/test.<lang>.jsonl    -> xcopa_<lang>
  XSTORYCLOZE_DIR spring2016.val.<lang>.tsv.split_20_80_eval.tsv files -> xstorycloze_<lang>
  XWINOGRAD_DIR   <lang>/test.jsonl                      -> xwinograd_<lang>
Each family also gets a mixture of its languages. `register_multiple_choice` adds any
jsonl multiple-choice set ({inputs, answer_choices, label, language}).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from mtf import storage
from mtf.data import evalsets, seqio_tasks, templates
from tasks import vocabularies

TEMPLATES = Path(__file__).resolve().parent / "templates" / "heldout.yaml"
XNLI_LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr",
                  "ur", "vi", "zh")


@functools.cache
def template_set() -> templates.TemplateSet:
    return templates.load_templates(TEMPLATES)


def register_choice_task(name: str, raw: Callable[[], Iterator[dict]], language: str,
                         template_prefix: str | None, prompts: str = "english") -> str:
    """A rank-classification task: `raw()` records through the family's templates."""
    chosen = None
    if template_prefix is not None:
        ids = [i for i in template_set().ids() if i.startswith(template_prefix)]
        chosen = template_set().subset(ids).for_language(language, prompts)

    def build():
        return seqio_tasks.choice_examples(evalsets.choice_examples(raw(), chosen, name), name)

    seqio_tasks.register_task(name, build, vocabularies.mt5(), validation_fraction=1.0,
                              choices=True)
    return name


def register_multiple_choice(name: str, path: str, language: str | None = None,
                             skip_bad_records: bool = False) -> str:
    """Any jsonl multiple-choice set, already prompted."""
    return register_choice_task(
        name, lambda: evalsets.multiple_choice(path, language, skip_bad_records),
        language or "en", None)


def register_all(env: dict[str, str] | None = None) -> list[str]:
    env = dict(os.environ if env is None else env)
    families: dict[str, list[str]] = {}
    if env.get("XNLI_DIR"):
        path = storage.join(env["XNLI_DIR"], "xnli.test.tsv")
        families["xnli"] = [register_choice_task(
            f"xnli_{c}", functools.partial(evalsets.xnli, path, c), c, "xnli_", "both")
            for c in XNLI_LANGUAGES]
    if env.get("XCOPA_DIR"):
        root = env["XCOPA_DIR"]
        families["xcopa"] = [register_choice_task(
            f"xcopa_{c}", functools.partial(evalsets.xcopa,
                                            storage.join(root, c, f"test.{c}.jsonl"), c),
            c, "xcopa_") for c in _subdirs(root)]
    if env.get("XSTORYCLOZE_DIR"):
        root = env["XSTORYCLOZE_DIR"]
        pattern = re.compile(r"spring2016\.val\.([a-z_]+)\.tsv\.split_20_80_eval\.tsv$")
        found = {m.group(1): storage.join(root, f) for f in sorted(storage.listdir(root))
                 if (m := pattern.match(f))}
        families["xstorycloze"] = [register_choice_task(
            f"xstorycloze_{c}", functools.partial(evalsets.xstorycloze, p, c), c,
            "xstorycloze_") for c, p in found.items()]
    if env.get("XWINOGRAD_DIR"):
        root = env["XWINOGRAD_DIR"]
        families["xwinograd"] = [register_choice_task(
            f"xwinograd_{c}", functools.partial(evalsets.xwinograd,
                                                storage.join(root, c, "test.jsonl"), c),
            c, "xwinograd_") for c in _subdirs(root)]
    for family, names in families.items():
        seqio_tasks.register_mixture(family, [(n, 1.0) for n in names])
    return sorted(n for names in families.values() for n in names)


def _subdirs(root: str) -> list[str]:
    return [d for d in storage.listdir(root) if storage.isdir(storage.join(root, d))]


register_all()
