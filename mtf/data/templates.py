"""Prompt templates as data files (YAML or JSON), in the spirit of promptsource.

A template is Jinja text rendering `inputs ||| targets` from a record's fields. It has an
id, is written in English, and may carry translations keyed by language code (the xP3mt
idea), so users add a prompt language by editing a file, not Python. Classification
templates also render their answer choices (`choice ||| choice ||| ...`).

File format:
    templates:
      - id: term_from_english
        jinja: 'Translate "{{ english }}" into {{ language_name(language) }}. ||| {{ native }}'
        answer_choices: null          # or Jinja rendering 'a ||| b ||| c'
        translations:
          fr: 'Traduis « {{ english }} » en {{ language_name(language) }}. ||| {{ native }}'
Inside a template, `language_name(code)` gives a language's name in the prompt's language.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import yaml

from mtf.data import languages
from mtf.errors import MissingFileError, UserError

SEPARATOR = "|||"
PROMPT_LANGUAGES = ("english", "native", "both")


class TemplateError(UserError, ValueError):
    """A template that cannot render; the message names its id and the field."""


class NotApplicable(TemplateError):
    """The template renders nothing for this record (promptsource's conditional prompts,
    e.g. COPA's effect-only ones on a cause question); the record is skipped for it."""


_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False,
                          autoescape=False)


@dataclasses.dataclass(frozen=True)
class Template:
    id: str
    jinja: str
    language: str = "en"
    answer_choices: str | None = None
    source: str = "<code>"

    @functools.cached_property
    def _compiled(self) -> tuple[jinja2.Template, jinja2.Template | None]:
        try:
            main = _ENV.from_string(self.jinja)
            choices = _ENV.from_string(self.answer_choices) if self.answer_choices else None
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"template {self.id!r} ({self.source}, language "
                                f"{self.language}): Jinja syntax error: {e.message}") from None
        return main, choices

    @functools.cached_property
    def fields(self) -> frozenset[str]:
        """Record fields the template reads (Jinja globals excluded)."""
        names = set(jinja2.meta.find_undeclared_variables(_ENV.parse(self.jinja)))
        if self.answer_choices:
            names |= jinja2.meta.find_undeclared_variables(_ENV.parse(self.answer_choices))
        return frozenset(names - {"language_name", "answer_choices"})

    def _render(self, tmpl: jinja2.Template, record: Mapping[str, Any], **extra: Any) -> str:
        missing = sorted(f for f in self.fields if f not in record)
        if missing:
            raise TemplateError(f"template {self.id!r} ({self.source}, language {self.language})"
                                f" references field {missing[0]!r}, which the record lacks "
                                f"(record fields: {sorted(record)})")

        def language_name(code: str) -> str:
            return languages.display_name(code, self.language)

        try:
            return tmpl.render(**record, language_name=language_name, **extra)
        except jinja2.UndefinedError as e:
            raise TemplateError(f"template {self.id!r} ({self.source}): {e.message}") from None

    def answer_choices_for(self, record: Mapping[str, Any]) -> list[str] | None:
        if self._compiled[1] is None:
            return None
        text = self._render(self._compiled[1], record)
        return [c.strip() for c in text.split(SEPARATOR)]

    def apply(self, record: Mapping[str, Any]) -> tuple[str, str]:
        """(inputs, targets) for `record`."""
        choices = self.answer_choices_for(record)
        text = self._render(self._compiled[0], record, answer_choices=choices)
        if not text.strip():
            raise NotApplicable(f"template {self.id!r} renders nothing for this record")
        parts = text.split(SEPARATOR)
        if len(parts) != 2:
            raise TemplateError(f"template {self.id!r} ({self.source}) rendered {len(parts)} "
                                f"parts; it must render exactly 'inputs {SEPARATOR} targets'")
        return parts[0].strip(), parts[1].strip()


@dataclasses.dataclass(frozen=True)
class TemplateSet:
    """Templates of one dataset, each with its translations."""

    templates: tuple[Template, ...]  # English originals
    translations: Mapping[str, Mapping[str, Template]]  # id -> language -> template

    def ids(self) -> list[str]:
        return [t.id for t in self.templates]

    def subset(self, ids: Sequence[str]) -> TemplateSet:
        missing = sorted(set(ids) - set(self.ids()))
        if missing:
            raise TemplateError(f"no templates with ids {missing}; known: {self.ids()}")
        keep = tuple(t for t in self.templates if t.id in ids)
        return TemplateSet(keep, {t.id: self.translations.get(t.id, {}) for t in keep})

    def for_language(self, data_language: str, prompts: str = "english") -> list[Template]:
        """Templates to use for data in `data_language`.

        prompts: 'english' (xP3), 'native' (prompts in the data's language where a
        translation exists, xP3mt), or 'both'.
        """
        if prompts not in PROMPT_LANGUAGES:
            raise TemplateError(f"prompts={prompts!r}; choose one of {PROMPT_LANGUAGES}")
        lang = languages.base_language(data_language)  # 'fra_Latn' data, 'fr' translations
        native = [self.translations.get(t.id, {}).get(lang) for t in self.templates]
        native = [t for t in native if t is not None]
        if prompts == "english" or lang == "en":
            return list(self.templates)
        if prompts == "native":
            return native
        return list(self.templates) + native

    def languages(self) -> list[str]:
        return sorted({lang for per_id in self.translations.values() for lang in per_id})


def load_templates(paths: str | Path | Iterable[str | Path]) -> TemplateSet:
    """Reads one or more YAML/JSON template files into a TemplateSet."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    originals: list[Template] = []
    translations: dict[str, dict[str, Template]] = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise MissingFileError(f"template file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise TemplateError(f"template file {path}: cannot parse: {e}") from None
        entries = (data or {}).get("templates") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise TemplateError(f"template file {path}: expected a top-level 'templates' list")
        for n, entry in enumerate(entries):
            originals.append(_parse_entry(entry, f"{path} entry {n}", translations))
    ids = [t.id for t in originals]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise TemplateError(f"template ids {dupes} are defined more than once")
    return TemplateSet(tuple(originals), translations)


def _parse_entry(entry: Any, where: str, translations: dict[str, dict[str, Template]]
                 ) -> Template:
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
        raise TemplateError(f"{where}: each template needs a string 'id'")
    tid = entry["id"]
    for key in ("jinja",):
        if not isinstance(entry.get(key), str):
            raise TemplateError(f"{where} (template {tid!r}): needs a string {key!r}")
    unknown = set(entry) - {"id", "jinja", "answer_choices", "translations", "language"}
    if unknown:
        raise TemplateError(f"{where} (template {tid!r}): unknown keys {sorted(unknown)}")
    choices = entry.get("answer_choices")
    original = Template(tid, entry["jinja"], languages.normalize(entry.get("language", "en")),
                        choices, where)
    check(original)
    per_lang: dict[str, Template] = {}
    for lang, spec in (entry.get("translations") or {}).items():
        code = languages.normalize(lang)
        if isinstance(spec, str):
            spec = {"jinja": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("jinja"), str):
            raise TemplateError(f"{where} (template {tid!r}): translation {lang!r} must be a "
                                "Jinja string or {jinja: ..., answer_choices: ...}")
        t = Template(tid, spec["jinja"], code, spec.get("answer_choices", choices), where)
        check(t)
        if not t.fields <= original.fields:
            raise TemplateError(f"{where} (template {tid!r}): translation {lang!r} reads fields "
                                f"{sorted(t.fields - original.fields)} that the original does "
                                f"not ({sorted(original.fields)})")
        per_lang[code] = t
    translations[tid] = per_lang
    return original


def check(t: Template) -> None:
    """Compiles `t` and checks its separator, so a broken template fails at load time."""
    t._compiled  # noqa: B018 -- compiles now so syntax errors surface at load time
    if t.jinja.count(SEPARATOR) != 1:
        raise TemplateError(f"template {t.id!r} ({t.source}, language {t.language}): must "
                            f"contain '{SEPARATOR}' once, between inputs and targets")


def render_all(templates: Sequence[Template], record: Mapping[str, Any]
               ) -> list[tuple[Template, str, str]]:
    return [(t, *t.apply(record)) for t in templates]
