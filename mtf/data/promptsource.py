"""promptsource's `templates.yaml` files, read as mtf templates.

mT0's held-out evaluation applied promptsource's prompts (bigscience-workshop/promptsource,
English originals plus machine- and human-translated variants named `<name>_<lang>mt` /
`<name>_<lang>ht`). The files are vendored verbatim; the promptsource package itself
cannot be installed here (it pins Python < 3.8), so this reads its YAML tags by hand.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from mtf.data import languages
from mtf.data.templates import Template, TemplateError, check
from mtf.errors import MissingFileError

KINDS = ("en", "mt", "ht")  # English originals, machine-translated, human-translated
# promptsource's folder names that are not language codes (XWinograd's Japanese is 'jp').
FOLDER_LANGUAGES = {"jp": "ja"}


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads promptsource's `!Template` / `!TemplateMetadata` as mappings."""


def _mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[str, Any]:
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor("!Template", _mapping)
_Loader.add_constructor("!TemplateMetadata", _mapping)


@dataclasses.dataclass(frozen=True)
class PromptFile:
    """One promptsource file: its templates by kind ('en', 'mt', 'ht'), each named by its
    English name (the translation suffix dropped) so one prompt is one column in reports."""

    templates: dict[str, tuple[Template, ...]]
    original_task: frozenset[str]  # English names promptsource marks as the dataset's task


def read(path: str | Path, language: str) -> PromptFile:
    """Reads `path`, whose translated prompts are in `language`; their names end in
    `_<folder>mt` / `_<folder>ht` after the file's folder."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"promptsource template file {path} does not exist")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506
    except yaml.YAMLError as e:
        raise TemplateError(f"promptsource file {path}: cannot parse: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("templates"), dict):
        raise TemplateError(f"promptsource file {path}: expected 'dataset' and a 'templates' "
                            "mapping of !Template entries")
    by_kind: dict[str, list[Template]] = {k: [] for k in KINDS}
    original: set[str] = set()
    suffix = re.compile(rf"_{re.escape(path.parent.name)}(mt|ht)$")
    for key, entry in data["templates"].items():
        where = f"{path} template {key}"
        if not isinstance(entry, dict) or not isinstance(entry.get("jinja"), str) \
                or not isinstance(entry.get("name"), str):
            raise TemplateError(f"{where}: needs a string 'name' and 'jinja'")
        match = suffix.search(entry["name"])
        kind = match.group(1) if match else "en"
        name = entry["name"][:match.start()] if match else entry["name"]
        template = Template(name, entry["jinja"], "en" if kind == "en" else language,
                            entry.get("answer_choices"), where)
        check(template)
        by_kind[kind].append(template)
        if kind == "en" and (entry.get("metadata") or {}).get("original_task"):
            original.add(name)
    return PromptFile({k: tuple(v) for k, v in by_kind.items()}, frozenset(original))


def folder_language(folder: str) -> str | None:
    """The language a promptsource folder names ('jp' -> 'ja'), or None (e.g. 'copa')."""
    try:
        return languages.normalize(FOLDER_LANGUAGES.get(folder, folder))
    except languages.LanguageError:
        return None


@dataclasses.dataclass(frozen=True)
class Prompts:
    """A dataset family's evaluation prompts: English originals (promptsource's
    `original_task` ones, as the T0/mT0 evaluations used) and, per language, the
    translations of those same prompts."""

    english: tuple[Template, ...]
    translated: dict[str, dict[str, tuple[Template, ...]]]  # kind -> language -> templates

    def for_language(self, language: str, kind: str = "en") -> tuple[Template, ...]:
        if kind not in KINDS:
            raise TemplateError(f"prompt kind {kind!r}; choose one of {KINDS}")
        if kind == "en":
            return self.english
        return self.translated[kind].get(languages.base_language(language), ())


def family(english: str | Path, translations: str | Path | None = None) -> Prompts:
    """English templates from the file `english`; translated ones from every
    `<translations>/<lang>/templates.yaml`, kept where they translate an English one."""
    base = read(english, "en")
    keep = base.original_task
    chosen = tuple(t for t in base.templates["en"] if t.id in keep)
    translated: dict[str, dict[str, tuple[Template, ...]]] = {"mt": {}, "ht": {}}
    if translations is not None:
        for path in sorted(Path(translations).glob("*/templates.yaml")):
            code = folder_language(path.parent.name)
            if code is None or code == "en":
                continue
            found = read(path, code)
            for kind in ("mt", "ht"):
                kept = tuple(renamed for t in found.templates[kind]
                             if (renamed := _english_name(t, keep)) is not None)
                if kept:
                    translated[kind][languages.base_language(code)] = kept
    return Prompts(chosen, translated)


def _english_name(t: Template, english: frozenset[str]) -> Template | None:
    """`t` under the English name it translates, or None. Some translated files shorten
    it (XCOPA's 'C1 or C2? premise' for 'C1 or C2? premise, so/because…'): a name that
    begins exactly one English name stands for it."""
    if t.id in english:
        return t
    longer = [name for name in english if name.startswith(t.id)]
    return dataclasses.replace(t, id=longer[0]) if len(longer) == 1 else None
