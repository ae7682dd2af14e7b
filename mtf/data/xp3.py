"""xP3-format trees: `{root}/{lang}/merged_{lang}.jsonl` (xP3) and per-dataset files (xP3x).

Records are `{"inputs", "targets"}`; xP3x adds `language`, `dataset`, `template`, `split`,
`config`. Roots may be local or gs:// (`mtf.storage`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator

from mtf import storage
from mtf.data import languages, records
from mtf.errors import MissingFileError

REQUIRED = ("inputs", "targets")
OPTIONAL = ("language", "dataset", "template", "split", "config")


def language_dirs(root: str) -> dict[str, str]:
    """{language code: folder} for every language folder under `root` (code checked)."""
    if not storage.isdir(root):
        raise MissingFileError(f"XP3_DIR={root} is not a directory; point it at the folder "
                               "that holds one sub-folder per language (en/, sw/, ...)")
    out = {}
    for name in storage.listdir(root):
        path = storage.join(root, name)
        if not storage.isdir(path):
            continue
        try:
            languages.normalize(name)
        except languages.LanguageError as e:
            logging.warning("skipping %s: the folder name is not a language code (%s)", path, e)
            continue
        out[name] = path
    if not out:
        raise MissingFileError(f"XP3_DIR={root} has no language folders")
    return out


def language_files(folder: str, language: str) -> list[str]:
    """The merged file when present (xP3), else every jsonl file of the folder (xP3x)."""
    merged = storage.join(folder, f"merged_{language}.jsonl")
    if storage.exists(merged):
        return [merged]
    files = [storage.join(folder, f) for f in storage.listdir(folder) if f.endswith(".jsonl")]
    if not files:
        raise MissingFileError(f"{folder} holds no merged_{language}.jsonl and no .jsonl files")
    return files


def read(files: list[str], bad_records: records.BadRecords | None = None,
         shard: tuple[int, int] = (0, 1)) -> Iterator[dict]:
    """Validated records of `files`, each tagged with `_where` (file:line) for later errors;
    with `shard` (index, count) only that share of each file's lines is parsed."""

    def tag(where: str, record: dict) -> dict:
        if "language" in record:
            try:
                languages.normalize(record["language"])
            except languages.LanguageError as e:
                raise records.RecordError(f"{where}: {e}") from None
        return {**record, "_where": where}

    for path in files:
        yield from records.jsonl_records(path, REQUIRED, bad_records, OPTIONAL,
                                         nonempty=("targets",), convert=tag, shard=shard)


@functools.cache
def count_lines(path: str) -> int:
    """Cheap size estimate for mixing rates: non-blank lines, without parsing JSON."""
    with storage.open_read(path) as f:
        return sum(1 for line in f if line.strip())
