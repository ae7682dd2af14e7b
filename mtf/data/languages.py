"""Language codes: validation against CLDR, xP3's languages and weights, integer ids.

Ids encode the code's letters in base 27 so that they are stable across runs, hosts and
mixtures without a table (a table would have to travel with every checkpoint).
"""

from __future__ import annotations

import functools

import babel

from mtf.errors import UserError

# xmtf's xp3capmixnewcodelong_train.txt: the language sampling weights BLOOMZ/mT0 used.
XP3_WEIGHTS: dict[str, float] = {
    "en": 0.3924620202, "es": 0.0797519865, "pt": 0.0645613968, "code": 0.0592991658,
    "fr": 0.0584218969, "ar": 0.0492644683, "id": 0.0485168956, "zh": 0.048344327,
    "hi": 0.0462777165, "vi": 0.0326663657, "ur": 0.0202046859, "te": 0.0140392334,
    "ta": 0.0097374884, "bn": 0.0087708344, "mr": 0.0070173416, "sw": 0.0059077793,
    "gu": 0.0059055884, "pa": 0.0055112422, "ne": 0.0041465344, "yo": 0.0037157869,
    "ig": 0.0034255885, "ny": 0.0028662571, "zu": 0.0027776135, "xh": 0.0026823974,
    "sn": 0.0026594781, "ts": 0.0026358847, "rw": 0.0026264474, "lg": 0.0024850557,
    "tn": 0.0024808426, "nso": 0.0024194999, "rn": 0.0020327371, "ml": 0.0018436532,
    "kn": 0.0017427072, "or": 0.0017007448, "as": 0.0016458059, "ln": 0.0013303289,
    "wo": 0.0012908943, "tum": 0.0012221364, "ki": 0.001211688, "st": 0.0012015765,
    "fon": 0.0011909595, "ca": 0.0011650068, "eu": 0.001138717, "ak": 0.0011385485,
    "bm": 0.0011275944, "tw": 0.0011195053,
}
XP3_LANGUAGES: tuple[str, ...] = tuple(XP3_WEIGHTS)

AFRICAN = ("sw", "yo", "ig", "ny", "zu", "xh", "sn", "ts", "rw", "lg", "tn", "nso", "rn",
           "ln", "wo", "tum", "ki", "st", "fon", "ak", "bm", "tw")
INDIC = ("hi", "ur", "te", "ta", "bn", "mr", "gu", "pa", "ne", "ml", "kn", "or", "as")
# xP3's low-resource African and Indic languages: under 1% of the mixture each.
LOW_RESOURCE = tuple(c for c in AFRICAN + INDIC if XP3_WEIGHTS[c] < 0.01)

# Codes CLDR lacks but xP3 uses: programming languages, Tumbuka, Fon.
_EXTRA_NAMES = {"code": "Programming code", "tum": "Tumbuka", "fon": "Fon"}
_ALPHABET = "abcdefghijklmnopqrstuvwxyz"


class LanguageError(UserError, ValueError):
    """A language code that is not a known ISO 639 / CLDR code."""


@functools.cache
def normalize(code: str) -> str:
    """The base language of a code ('pt_BR', 'fra_Latn', 'zh-Hans' -> 'pt', 'fr', 'zh')."""
    if not isinstance(code, str) or not code:
        raise LanguageError(f"language code {code!r} is not a non-empty string")
    if code in _EXTRA_NAMES:
        return code
    try:
        return babel.Locale.parse(code.replace("-", "_")).language
    except (ValueError, babel.UnknownLocaleError):
        pass
    try:  # xP3x's ISO 639-3 + script codes ('fra_Latn')
        return babel.Locale.parse(code.split("_")[0]).language
    except (ValueError, babel.UnknownLocaleError):
        raise LanguageError(
            f"unknown language code {code!r}: use an ISO 639 code that CLDR knows "
            f"(e.g. 'sw', 'yo', 'pt_BR'), or one of {sorted(_EXTRA_NAMES)}") from None


def english_name(code: str) -> str:
    return display_name(code, "en")


def display_name(code: str, in_language: str) -> str:
    """`code`'s name written in `in_language` (CLDR), falling back to English."""
    code = normalize(code)
    if code in _EXTRA_NAMES:
        return _EXTRA_NAMES[code]
    for lang in (in_language, "en"):
        try:
            name = babel.Locale.parse(normalize(lang)).languages.get(code)
        except (LanguageError, babel.UnknownLocaleError):
            name = None
        if name:
            return name
    return code


def language_id(code: str) -> int:
    """A positive int32 that encodes the base code ('en' -> 149); 0 is padding."""
    code = normalize(code)
    value = 0
    for ch in code:
        value = value * 27 + _ALPHABET.index(ch) + 1
    return value


def language_from_id(value: int) -> str:
    letters = []
    while value > 0:
        value, digit = divmod(value, 27)
        letters.append(_ALPHABET[digit - 1])
    return "".join(reversed(letters))
