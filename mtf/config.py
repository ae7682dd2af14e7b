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
    for binding in bindings:
        text = normalize_binding(binding)
        try:
            gin.parse_config(text)
        except Exception as e:
            raise ConfigError(f"in gin binding --gin.{binding}: {e}") from e
    try:
        gin.finalize()
    except Exception as e:
        raise ConfigError(f"gin configuration does not finalize: {e}") from e
