"""Language codes: validation against CLDR and mtf's table, xP3's weights, integer ids.

Codes are xP3's ('sw', 'code') and xP3x's FLORES-200 style ones ('ace_Arab', 'zho_Hant'):
the script, when written, stays part of the code, so two scripts of one language are two
languages in ids, task names and per-language losses.

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

# mC4's 101 languages, mT5's pretraining (mT5 paper, Table 6; TFDS c4/multilingual), in
# CLDR's spelling (`iw` -> `he`); the report marks languages outside it as unseen.
MT5_LANGUAGES = frozenset((
    "af am ar az be bg bn ca ceb co cs cy da de el en eo es et eu fa fi fil fr fy ga gd gl "
    "gu ha haw he hi hmn ht hu hy id ig is it ja jv ka kk km kn ko ku ky la lb lo lt lv mg "
    "mi mk ml mn mr ms mt my ne nl no ny pa pl ps pt ro ru sd si sk sl sm sn so sq sr st su "
    "sv sw ta te tg th tr uk ur uz vi xh yi yo zh zu").split())


def in_mt5_pretraining(code: str) -> bool:
    """Whether mT5 saw the code's base language in pretraining (mC4)."""
    return base_language(code) in MT5_LANGUAGES

# Languages CLDR has no English name for, with their usual script: xP3's extra codes and
# the xP3x / FLORES-200 ones (names from ISO 639-3, scripts from FLORES-200's codes).
LANGUAGE_TABLE: dict[str, tuple[str, str]] = {
    "code": ("Programming code", "Zyyy"), "acm": ("Mesopotamian Arabic", "Arab"),
    "acq": ("Ta'izzi-Adeni Arabic", "Arab"), "ajp": ("South Levantine Arabic", "Arab"),
    "apc": ("North Levantine Arabic", "Arab"), "ayr": ("Central Aymara", "Latn"),
    "azb": ("South Azerbaijani", "Arab"), "ber": ("Berber", "Latn"),
    "cbk": ("Chavacano", "Latn"), "cha": ("Chamorro", "Latn"), "cjk": ("Chokwe", "Latn"),
    "dik": ("Southwestern Dinka", "Latn"), "fij": ("Fijian", "Latn"),
    "fkv": ("Kven Finnish", "Latn"), "fuv": ("Nigerian Fulfulde", "Latn"),
    "gcf": ("Guadeloupean Creole French", "Latn"), "gos": ("Gronings", "Latn"),
    "hbs": ("Serbo-Croatian", "Latn"), "hne": ("Chhattisgarhi", "Deva"),
    "hoc": ("Ho", "Wara"), "hrx": ("Hunsrik", "Latn"), "kbp": ("Kabiye", "Latn"),
    "knc": ("Central Kanuri", "Latn"), "kon": ("Kongo", "Latn"),
    "kzj": ("Coastal Kadazan", "Latn"), "lim": ("Limburgish", "Latn"),
    "nst": ("Tangshang Naga", "Latn"), "orv": ("Old Russian", "Cyrl"),
    "pbt": ("Southern Pashto", "Arab"), "prs": ("Dari", "Arab"),
    "quy": ("Ayacucho Quechua", "Latn"), "smo": ("Samoan", "Latn"),
    "swg": ("Swabian", "Latn"), "taq": ("Tamasheq", "Latn"), "tzl": ("Talossan", "Latn"),
    "tum": ("Tumbuka", "Latn"), "fon": ("Fon", "Latn"),
}
# ISO 15924 script codes (CLDR's list, frozen here: an id's script part is its index, so
# new scripts are only ever appended).
SCRIPTS: tuple[str, ...] = (
    "Adlm", "Afak", "Aghb", "Ahom", "Arab", "Aran", "Armi", "Armn", "Avst", "Bali", "Bamu",
    "Bass", "Batk", "Beng", "Bhks", "Blis", "Bopo", "Brah", "Brai", "Bugi", "Buhd", "Cakm",
    "Cans", "Cari", "Cham", "Cher", "Chrs", "Cirt", "Copt", "Cpmn", "Cprt", "Cyrl", "Cyrs",
    "Deva", "Diak", "Dogr", "Dsrt", "Dupl", "Egyd", "Egyh", "Egyp", "Elba", "Elym", "Ethi",
    "Gara", "Geok", "Geor", "Glag", "Gong", "Gonm", "Goth", "Gran", "Grek", "Gujr", "Gukh",
    "Guru", "Hanb", "Hang", "Hani", "Hano", "Hans", "Hant", "Hatr", "Hebr", "Hira", "Hluw",
    "Hmng", "Hmnp", "Hrkt", "Hung", "Inds", "Ital", "Jamo", "Java", "Jpan", "Jurc", "Kali",
    "Kana", "Kawi", "Khar", "Khmr", "Khoj", "Kits", "Knda", "Kore", "Kpel", "Krai", "Kthi",
    "Lana", "Laoo", "Latf", "Latg", "Latn", "Lepc", "Limb", "Lina", "Linb", "Lisu", "Loma",
    "Lyci", "Lydi", "Mahj", "Maka", "Mand", "Mani", "Marc", "Maya", "Medf", "Mend", "Merc",
    "Mero", "Mlym", "Modi", "Mong", "Moon", "Mroo", "Mtei", "Mult", "Mymr", "Nagm", "Nand",
    "Narb", "Nbat", "Newa", "Nkgb", "Nkoo", "Nshu", "Ogam", "Olck", "Onao", "Orkh", "Orya",
    "Osge", "Osma", "Ougr", "Palm", "Pauc", "Perm", "Phag", "Phli", "Phlp", "Phlv", "Phnx",
    "Plrd", "Prti", "Qaag", "Rjng", "Rohg", "Roro", "Runr", "Samr", "Sara", "Sarb", "Saur",
    "Sgnw", "Shaw", "Shrd", "Sidd", "Sind", "Sinh", "Sogd", "Sogo", "Sora", "Soyo", "Sund",
    "Sunu", "Sylo", "Syrc", "Syre", "Syrj", "Syrn", "Tagb", "Takr", "Tale", "Talu", "Taml",
    "Tang", "Tavt", "Telu", "Teng", "Tfng", "Tglg", "Thaa", "Thai", "Tibt", "Tirh", "Tnsa",
    "Todr", "Toto", "Tutg", "Ugar", "Vaii", "Visp", "Vith", "Wara", "Wcho", "Wole", "Xpeo",
    "Xsux", "Yezi", "Yiii", "Zanb", "Zinh", "Zmth", "Zsye", "Zsym", "Zxxx", "Zyyy", "Zzzz",
)
_ALPHABET = "abcdefghijklmnopqrstuvwxyz"
_SCRIPT_STRIDE = 27 ** 4  # language parts are 2-4 letters ('code'): base 27 stays below


class LanguageError(UserError, ValueError):
    """A language code that is not a known ISO 639 / CLDR code."""


@functools.cache
def _english_names() -> dict[str, str]:
    return dict(babel.Locale("en").languages)


@functools.cache
def _cldr_language(language: str) -> str | None:
    """CLDR's code for an ISO 639 code it knows ('fra' -> 'fr', 'ace' -> 'ace'), or None."""
    try:
        return babel.Locale.parse(language).language
    except (ValueError, babel.UnknownLocaleError):
        pass
    return language if language in _english_names() else None


@functools.cache
def split(code: str) -> tuple[str, str | None]:
    """(language, script or None) of a code such as 'sw', 'pt_BR', 'zh-Hant', 'ace_Arab'
    (a region is dropped); LanguageError for anything that is not one."""
    if not isinstance(code, str) or not code:
        raise LanguageError(f"language code {code!r} is not a non-empty string")
    parts = code.replace("-", "_").split("_")
    language, script = parts[0].lower(), None
    rest = parts[1:]
    if rest and len(rest[0]) == 4 and rest[0].isalpha():
        script = rest.pop(0).title()
    known = language in LANGUAGE_TABLE or (
        language.isalpha() and 2 <= len(language) <= 3 and _cldr_language(language))
    if not known or (script and script not in SCRIPTS) or len(rest) > 1 or any(
            not (len(r) == 2 and r.isalpha() or len(r) == 3 and r.isdigit()) for r in rest):
        raise LanguageError(
            f"unknown language code {code!r}: use an ISO 639 code that CLDR or mtf's language "
            "table knows, optionally with an ISO 15924 script (e.g. 'sw', 'yo', 'pt_BR', "
            f"'ace_Arab', 'zho_Hant'), or one of {sorted(LANGUAGE_TABLE)[:3]}...")
    return language, script


@functools.cache
def normalize(code: str) -> str:
    """The code a language is known by in ids, metrics and task names. A code with a script
    is kept as written (xP3x / FLORES-200: 'zho_Hant' and 'zho_Hans' stay apart); one
    without is CLDR's spelling ('swh' -> 'sw', 'pt_BR' -> 'pt')."""
    language, script = split(code)
    return f"{language}_{script}" if script else base_language(code)


@functools.cache
def base_language(code: str) -> str:
    """The language without script, as CLDR spells it ('fra_Latn' -> 'fr', 'zho_Hant' ->
    'zh', 'ace_Arab' -> 'ace'): what xP3's weights and display names are keyed by."""
    language, _ = split(code)
    return _cldr_language(language) or language


def script_of(code: str) -> str:
    """The code's script, else the language's usual one (CLDR likely subtags, the table)."""
    language, script = split(code)
    if script:
        return script
    if language in LANGUAGE_TABLE:
        return LANGUAGE_TABLE[language][1]
    likely = babel.core.get_global("likely_subtags").get(base_language(code), "")
    parts = likely.split("_")
    return parts[1] if len(parts) > 1 and len(parts[1]) == 4 else "Zyyy"


def english_name(code: str) -> str:
    return display_name(code, "en")


def display_name(code: str, in_language: str) -> str:
    """`code`'s name written in `in_language` (CLDR), falling back to English, then to
    mtf's table; a written script is named too ('Chinese (Traditional Han)')."""
    language, script = split(code)
    base = base_language(code)
    name = None
    for lang in (in_language, "en"):
        try:
            name = babel.Locale.parse(base_language(lang)).languages.get(base)
        except (LanguageError, babel.UnknownLocaleError, ValueError):
            name = None
        if name:
            break
    name = name or LANGUAGE_TABLE.get(language, (code, ""))[0]
    if script:
        scripts = babel.Locale("en").scripts
        name = f"{name} ({scripts.get(script, script)})"
    return name


def language_id(code: str) -> int:
    """A positive int32 that encodes the code ('en' -> 149, 'zho_Hant' -> its language
    letters plus its script's index times 27^4); 0 is padding. Stable without a table."""
    language, script = split(code)
    value = 0
    for ch in language:
        value = value * 27 + _ALPHABET.index(ch) + 1
    if script:
        value += (SCRIPTS.index(script) + 1) * _SCRIPT_STRIDE
    return value


def language_from_id(value: int) -> str:
    script_index, value = divmod(value, _SCRIPT_STRIDE)
    letters = []
    while value > 0:
        value, digit = divmod(value, 27)
        letters.append(_ALPHABET[digit - 1])
    language = "".join(reversed(letters))
    return f"{language}_{SCRIPTS[script_index - 1]}" if script_index else language
