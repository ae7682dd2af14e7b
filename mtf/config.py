"""Gin configuration: file search paths, command-line bindings, errors that name the culprit."""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import gin

from mtf.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
SEARCH_PATHS = (REPO_ROOT / "gin", Path.cwd(), REPO_ROOT)
_BINDING = re.compile(r"^\s*([A-Za-z_][\w./:]*)\s*=\s*(.*)$", re.S)


class ConfigError(UserError, ValueError):
    """A gin file or binding that cannot be used; the message names it."""


def normalize_binding(binding: str) -> str:
    """`NAME=value`, quoting a bare string value (`MODEL_DIR=/tmp/run` -> '/tmp/run').

    A value that is a Python literal, a gin reference (@fn, %MACRO) or a container is kept
    as written; anything else is taken as a string, which is what users mean by it.
    """
    match = _BINDING.match(binding)
    if not match:
        raise ConfigError(f"gin binding {binding!r} is not of the form NAME=VALUE "
                          "(e.g. --gin.TRAIN_STEPS=1000 or --gin.MODEL_DIR=/tmp/run)")
    name, value = match.group(1), match.group(2).strip()
    if value[:1] in "@%([{'\"" or value in ("True", "False", "None"):
        return f"{name} = {value}"
    try:
        ast.literal_eval(value)
        return f"{name} = {value}"
    except (ValueError, SyntaxError):
        return f"{name} = {value!r}"


def split_gin_flags(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """(`--gin.NAME=VALUE` bindings as `NAME=VALUE`, the other arguments): T5X's flag syntax."""
    bindings, other = [], []
    for arg in args:
        if arg.startswith("--gin."):
            bindings.append(arg[len("--gin."):])
        else:
            other.append(arg)
    return bindings, other


def find_gin_file(name: str) -> str:
    if os.path.isabs(name):
        if os.path.exists(name):
            return name
    else:
        for base in SEARCH_PATHS:
            if (base / name).exists():
                return str(base / name)
    raise ConfigError(f"gin file {name!r} not found; searched {[str(p) for p in SEARCH_PATHS]}")


class _QuietSearch(logging.Filter):
    """gin logs an ERROR for every search path that lacks an included file; not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Path not found:")


@contextlib.contextmanager
def _quiet_gin_search():
    quiet = _QuietSearch()
    logging.getLogger().addFilter(quiet)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(quiet)


def parse(gin_files: Sequence[str], bindings: Sequence[str] = ()) -> None:
    """Parses files then bindings (later ones win), naming the file or binding that fails."""
    for path in SEARCH_PATHS:
        gin.add_config_file_search_path(str(path))
    with _quiet_gin_search():
        _parse(gin_files, bindings)


def _parse(gin_files: Sequence[str], bindings: Sequence[str]) -> None:
    for name in gin_files:
        path = find_gin_file(name)
        try:
            gin.parse_config_file(path)
        except Exception as e:  # gin raises several types; all mean this file is wrong
            raise ConfigError(f"in gin file {path}: {e}") from e
    known = _macros()
    for binding in bindings:
        text = normalize_binding(binding)
        name = _BINDING.match(text).group(1)
        if "." not in name and "/" not in name and name not in known:
            raise ConfigError(_unknown_macro(binding, name, known))
        try:
            gin.parse_config(text)
        except Exception as e:
            raise ConfigError(f"in gin binding --gin.{binding}: {e}") from e
        _check_types(binding, name)
    try:
        gin.finalize()
    except Exception as e:
        raise ConfigError(f"gin configuration does not finalize: {e}") from e


# ---- Checks of command-line bindings: gin accepts any new macro name and any value type.

def _config() -> dict:
    from gin import config as gin_config  # gin's parsed bindings; no public accessor

    return gin_config._CONFIG


def _references(value) -> list:
    """The configurable references (including %MACROs) inside a bound value."""
    from gin import config as gin_config

    if isinstance(value, gin_config.ConfigurableReference):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [r for v in value for r in _references(v)]
    return []


def _macros() -> set[str]:
    """Macros the loaded gin files define or reference."""
    names = set()
    for (scope, selector), params in _config().items():
        if selector == "gin.macro":
            names.add(scope)
        for value in params.values():
            for ref in _references(value):
                if ref.configurable.name == "macro":
                    names.add(ref.scoped_selector.split("/")[0])
    return names


def _unknown_macro(binding: str, name: str, known: set[str]) -> str:
    import difflib

    by_upper = {k.upper(): k for k in known}
    close = difflib.get_close_matches(name.upper(), list(by_upper), n=3, cutoff=0.6)
    hint = (f"did you mean {', '.join(by_upper[c] for c in close)}? " if close else "")
    return (f"--gin.{binding}: {name} is not a macro of the loaded gin files, so it would "
            f"change nothing; {hint}(known: {', '.join(sorted(known))}; configurable "
            "parameters are written module.function.parameter)")


def _consumers(name: str) -> list[tuple[str, str]]:
    """(configurable selector, parameter) pairs whose bound value is %name."""
    out = []
    for (_, selector), params in _config().items():
        for param, value in params.items():
            if any(r.configurable.name == "macro" and r.scoped_selector.split("/")[0] == name
                   for r in _references(value)):
                out.append((selector, param))
    return out


def _expected(selector: str, param: str) -> tuple[str, ...] | None:
    """The kinds a configurable's parameter takes ('int', 'float', 'bool', 'tuple', 'str',
    'None') from its annotation, else its default; None when unknown."""
    import inspect

    from gin import config as gin_config

    try:
        fn = gin_config._REGISTRY.get_match(selector).wrapped
        parameter = inspect.signature(fn).parameters[param]
    except (AttributeError, KeyError, TypeError, ValueError):
        return None
    annotation = parameter.annotation
    if isinstance(annotation, str):
        outer = re.sub(r"\[[^\[\]]*\]", "", annotation)  # tuple[int, int] -> tuple
        kinds = tuple(k for k in ("int", "float", "bool", "tuple", "str", "dict", "None")
                      if re.search(rf"\b{k}\b", outer))
        if any(k in annotation for k in ("Any", "Sequence", "Mapping", "[", "|")) and not kinds:
            return None
        return kinds or None
    default = parameter.default
    if default is inspect.Parameter.empty or default is None:
        return None
    return (type(default).__name__,)


def _fits(value, kinds: tuple[str, ...]) -> bool:
    from gin import config as gin_config

    if isinstance(value, gin_config.ConfigurableReference):
        return True  # another configurable or macro: checked where it is bound
    if value is None:
        return "None" in kinds
    if isinstance(value, bool):
        return "bool" in kinds
    if isinstance(value, int):
        return bool({"int", "float"} & set(kinds))
    if isinstance(value, float):
        return "float" in kinds
    if isinstance(value, list | tuple):
        return "tuple" in kinds
    if isinstance(value, dict):
        return "dict" in kinds
    if isinstance(value, str):
        return "str" in kinds
    return True


def _check_types(binding: str, name: str) -> None:
    """A command-line value of the wrong type for what consumes it is named here, not deep
    inside the run as a TypeError."""
    if "." in name or "/" in name:
        scope, _, rest = name.rpartition("/")
        selector, _, param = rest.rpartition(".")
        try:
            from gin import config as gin_config

            key = (scope, gin_config._REGISTRY.get_match(selector).selector)
            targets = [(key[1], param, _config()[key][param])]
        except (AttributeError, KeyError, TypeError):
            return
    else:
        value = _config().get((name, "gin.macro"), {}).get("value")
        targets = [(selector, param, value) for selector, param in _consumers(name)]
    for selector, param, value in targets:
        kinds = _expected(selector, param)
        if kinds and not _fits(value, kinds):
            wanted = " or ".join(kinds)
            raise ConfigError(f"--gin.{binding}: {selector}.{param} takes {wanted}, got "
                              f"{value!r} ({type(value).__name__})")


def register_xp3_from_gin() -> None:
    """`XP3_DIR` may be a gin macro as well as an environment variable (parse first)."""
    try:
        root = gin.query_parameter("%XP3_DIR")
    except ValueError:
        return
    if root and root != os.environ.get("XP3_DIR"):
        from tasks import xp3  # the task registry: imports seqio and TensorFlow

        xp3.register(root)
