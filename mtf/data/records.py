"""Reading record files (jsonl, json, tsv) with errors that name the file and line.

A bad record either stops the run with a `RecordError` (the default) or, when the reader's
`BadRecords` policy says skip, is skipped and counted in the policy's `SkipReport`, which
logs the count: skipping is never silent. A run makes one policy and hands it to the tasks
it reads (`seqio_tasks.handle_bad_records`), so the count it reports is its own.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

from mtf import storage
from mtf.errors import MissingFileError, UserError

Record = dict[str, Any]


class RecordError(UserError, ValueError):
    """A record that cannot be used; the message names file, line and the fix."""


@dataclasses.dataclass
class SkipReport:
    """Counts skipped records per file, each bad record once however often it is read
    (thread-safe: tf.data may read in parallel)."""

    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    first_reason: dict[str, str] = dataclasses.field(default_factory=dict)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)
    _seen: set[str] = dataclasses.field(default_factory=set, repr=False)

    def skip(self, source: str, reason: str) -> None:
        with self._lock:
            if reason in self._seen:  # the same record met again (another epoch, a re-read)
                return
            self._seen.add(reason)
            self.counts[source] += 1
            self.first_reason.setdefault(source, reason)
            count = self.counts[source]
        if count == 1 or count % 1000 == 0:
            logging.warning("skipped %d bad record(s) in %s; first: %s", count, source,
                            self.first_reason[source])

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.total:
            return "no records skipped"
        parts = [f"{n} in {src} (first: {self.first_reason[src]})"
                 for src, n in sorted(self.counts.items())]
        return f"skipped {self.total} bad record(s): " + "; ".join(parts)


@dataclasses.dataclass
class BadRecords:
    """What a reader does with a bad record: stop with its `RecordError` (skip=False), or
    skip it and count it in `report` (gin SKIP_BAD_RECORDS, `--skip_bad_records`)."""

    skip: bool = False
    report: SkipReport = dataclasses.field(default_factory=SkipReport)


STOP = BadRecords()  # readers' default: the first bad record stops (nothing is counted)


def open_text(path: str) -> IO[bytes]:
    if not storage.exists(path):
        raise MissingFileError(f"data file {path} does not exist; check the data directory "
                               "(a gin macro or environment variable names it)")
    return storage.open_read(path)


def decode_utf8(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecordError(f"{where}: invalid UTF-8 at byte {e.start}; re-encode the file "
                          "as UTF-8 (or pass skip_bad_records=True)") from None


def check_fields(record: Any, required: Sequence[str], where: str,
                 optional: Sequence[str] = (), nonempty: Sequence[str] = ()) -> Record:
    """`record` must be an object whose `required` fields are strings (`nonempty`: not blank)."""
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name in required:
        if name not in record:
            raise RecordError(f"{where}: missing field {name!r} (fields: {sorted(record)}); "
                              f"every record needs {list(required)}")
    for name in list(required) + [n for n in optional if n in record]:
        if not isinstance(record[name], str):
            raise RecordError(f"{where}: field {name!r} must be a string, got "
                              f"{type(record[name]).__name__} {record[name]!r:.60}")
    for name in nonempty:
        if not record[name].strip():
            raise RecordError(f"{where}: field {name!r} is empty; drop the record or fill it")
    return record


def iter_json_array(path: str) -> Iterator[tuple[str, Any]]:
    """Yields (`path[index]`, object) for a file holding one JSON array (Alpaca's format)."""
    with open_text(path) as f:
        text = decode_utf8(f.read(), path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}:{e.lineno}: malformed JSON ({e.msg}, column {e.colno})"
                          ) from None
    if not isinstance(data, list):
        raise RecordError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
    for index, item in enumerate(data):
        yield f"{path}[{index}]", item


def iter_tsv(path: str, quoting: int = csv.QUOTE_NONE) -> Iterator[tuple[str, dict[str, str]]]:
    """Yields (`path:line`, row as a dict keyed by the header)."""
    with open_text(path) as f:
        text = decode_utf8(f.read(), path)
    reader = csv.reader(io.StringIO(text), delimiter="\t", quoting=quoting)
    header = next(reader, None)
    if header is None:
        raise RecordError(f"{path}: empty file; expected a header row")
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if not row:
            continue
        if len(row) != len(header):
            raise RecordError(f"{where}: {len(row)} columns, the header has {len(header)}")
        yield where, dict(zip(header, row, strict=True))


def guarded(items: Iterator[tuple[str, Any]], convert: Callable[[str, Any], Record | None],
            bad_records: BadRecords | None, source: str) -> Iterator[Record]:
    """Applies `convert(where, item)` to each item; a RecordError stops or is counted."""
    policy = bad_records or STOP
    while True:
        try:
            where, item = next(items)
        except StopIteration:
            return
        except RecordError as e:  # unreadable line: the iterator cannot resume past it
            if not policy.skip:
                raise
            policy.report.skip(source, str(e))
            return
        try:
            record = convert(where, item)
        except RecordError as e:
            if not policy.skip:
                raise
            policy.report.skip(source, str(e))
            continue
        if record is not None:
            yield record


def jsonl_records(path: str, required: Sequence[str], bad_records: BadRecords | None = None,
                  optional: Sequence[str] = (), nonempty: Sequence[str] = (),
                  convert: Callable[[str, Record], Record] | None = None,
                  shard: tuple[int, int] = (0, 1)) -> Iterator[Record]:
    """Validated records of a jsonl file; malformed lines stop the run or are skipped.

    shard (index, count): only lines `index`, `index + count`, ... are decoded and parsed
    (the others are read as bytes and passed over), so each of `count` processes parses
    its own share of the file."""
    index, count = shard

    def lines() -> Iterator[tuple[str, Any]]:
        # Parse line by line here so that one malformed line can be skipped and reading goes on.
        with open_text(path) as f:
            for number, raw in enumerate(f, start=1):
                if (number - 1) % count == index:
                    yield f"{path}:{number}", raw

    def parse(where: str, raw: bytes) -> Record | None:
        text = decode_utf8(raw, where).strip()
        if not text:
            return None
        try:
            item = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecordError(f"{where}: malformed JSON ({e.msg} at column {e.colno}); "
                              "each line must be one JSON object") from None
        record = check_fields(item, required, where, optional, nonempty)
        return convert(where, record) if convert else record

    return guarded(lines(), parse, bad_records, path)
