"""Raw multilingual records from CLDR (shipped inside `babel`): the mini-xP3's data.

CLDR holds, for each language and in its own script, month and weekday names, country,
language and currency names. Real multilingual text with nothing to download, so the
embedded default trains on the same code path as xP3.
"""

from __future__ import annotations

import functools
import random

import babel

from mtf.data import languages

KINDS = ("month", "weekday", "country", "language", "currency")


@functools.cache
def _locale(code: str) -> babel.Locale:
    return babel.Locale.parse(code)


# The 'format' context only: babel 2.18 resolves the 'stand-alone' alias into shared data,
# so after loading zh, other locales' stand-alone months come back in Chinese.
def _months(loc: babel.Locale) -> dict[int, str]:
    return dict(loc.months["format"]["wide"])


def _weekdays(loc: babel.Locale) -> dict[int, str]:
    return dict(loc.days["format"]["wide"])


def term_records(language: str, kinds: tuple[str, ...] = KINDS) -> list[dict[str, str]]:
    """{kind, english, native, language} for every CLDR term of `kinds` in `language`.

    Terms whose native form equals the English one (untranslated CLDR entries) are left
    out: they would teach copying, not the language.
    """
    en, loc = _locale("en"), _locale(language)
    pairs: list[tuple[str, str, str]] = []
    if "month" in kinds:
        pairs += [("month", _months(en)[k], v) for k, v in _months(loc).items()]
    if "weekday" in kinds:
        pairs += [("weekday", _weekdays(en)[k], v) for k, v in _weekdays(loc).items()]
    if "country" in kinds:
        pairs += [("country", en.territories[k], v) for k, v in sorted(loc.territories.items())
                  if len(k) == 2 and k.isalpha() and k in en.territories]
    if "language" in kinds:
        pairs += [("language", languages.english_name(c), loc.languages[c])
                  for c in languages.XP3_LANGUAGES
                  if c in loc.languages and c in en.languages]
    if "currency" in kinds:
        pairs += [("currency", en.currencies[k], v) for k, v in sorted(loc.currencies.items())
                  if k in en.currencies and len(k) == 3]
    return [{"kind": kind, "english": e, "native": n, "language": language}
            for kind, e, n in pairs if n and n.strip() and n != e]


def identification_records(language: str, count: int = 24, seed: int = 0
                           ) -> list[dict[str, str]]:
    """{text, language}: a few of the language's month/weekday names, to name the language."""
    loc = _locale(language)
    words = list(_months(loc).values()) + list(_weekdays(loc).values())
    rng = random.Random(f"{seed}:{language}")
    return [{"text": ", ".join(rng.sample(words, 3)), "language": language}
            for _ in range(count)]


def autonym_records(language: str) -> list[dict[str, str]]:
    """{language, autonym}: the language's name for itself."""
    return [{"language": language, "autonym": languages.display_name(language, language)}]


def available(language: str) -> bool:
    try:
        loc = _locale(language)
    except (ValueError, babel.UnknownLocaleError):
        return False
    return len(_months(loc)) == 12 and len(_weekdays(loc)) == 7


def corpus(language: str) -> list[str]:
    """Every name CLDR gives in `language`'s own words (languages, countries and regions,
    scripts, currencies, months, weekdays), each once: text in the language's script to
    measure and extend a vocabulary with (`mtf.vocab`)."""
    loc = _locale(language)
    names = set(_months(loc).values()) | set(_weekdays(loc).values())
    for table in (loc.languages, loc.territories, loc.scripts, loc.currencies):
        names.update(v.strip() for v in table.values() if v and v.strip())
    return sorted(names)
