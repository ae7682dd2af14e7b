"""xP3-format trees: `{root}/{lang}/merged_{lang}.jsonl` (xP3) and per-dataset files (xP3x).

Records are `{"inputs", "targets"}`; xP3x adds `language`, `dataset`, `template`, `split`,
`config`. Roots may be local or gs:// (tf.io.gfile).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import tensorflow as tf

from mtf.data import languages, records

REQUIRED = ("inputs", "targets")
OPTIONAL = ("language", "dataset", "template", "split", "config")


def language_dirs(root: str) -> dict[str, str]:
    """{language code: folder} for every language folder under `root` (code checked)."""
    if not tf.io.gfile.isdir(root):
        raise FileNotFoundError(f"XP3_DIR={root} is not a directory; point it at the folder "
                                "that holds one sub-folder per language (en/, sw/, ...)")
    out = {}
    for entry in sorted(tf.io.gfile.listdir(root)):
        name = entry.rstrip("/")
        path = os.path.join(root, name)
        if not tf.io.gfile.isdir(path):
            continue
        try:
            languages.normalize(name)
        except languages.LanguageError as e:
            raise languages.LanguageError(f"{path}: folder name is not a language code: {e}"
                                          ) from None
        out[name] = path
    if not out:
        raise FileNotFoundError(f"XP3_DIR={root} has no language folders")
    return out


def language_files(folder: str, language: str) -> list[str]:
    """The merged file when present (xP3), else every jsonl file of the folder (xP3x)."""
    merged = os.path.join(folder, f"merged_{language}.jsonl")
    if tf.io.gfile.exists(merged):
        return [merged]
    files = sorted(os.path.join(folder, f) for f in tf.io.gfile.listdir(folder)
                   if f.endswith(".jsonl"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no merged_{language}.jsonl and no .jsonl files")
    return files


def read(files: list[str], skip_bad_records: bool = False,
         report: records.SkipReport = records.SKIPPED) -> Iterator[dict]:
    """Validated records of `files`, each tagged with `_where` (file:line) for later errors."""

    def tag(where: str, record: dict) -> dict:
        if "language" in record:
            try:
                languages.normalize(record["language"])
            except languages.LanguageError as e:
                raise records.RecordError(f"{where}: {e}") from None
        return {**record, "_where": where}

    for path in files:
        yield from records.jsonl_records(path, REQUIRED, skip_bad_records, OPTIONAL,
                                         nonempty=("targets",), convert=tag, report=report)


@functools.cache
def count_lines(path: str) -> int:
    """Cheap size estimate for mixing rates: non-blank lines, without parsing JSON."""
    with tf.io.gfile.GFile(path, "rb") as f:
        return sum(1 for line in f if line.strip())
