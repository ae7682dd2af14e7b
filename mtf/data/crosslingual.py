"""x-LLaMA-style data: parallel text (Flores-style, line-aligned files) and Alpaca records.

Flores keeps one file per language and split (`devtest/eng_Latn.devtest`), line i of each
file being a translation of line i of the others; Alpaca is a JSON array of
`{instruction, input, output}`, with the target-language version in a file beside it.
"""

from __future__ import annotations

from collections.abc import Iterator

from mtf.data import languages, records


def parallel(source_path: str, target_path: str, source_language: str,
             target_language: str, bad_records: records.BadRecords | None = None
             ) -> Iterator[dict]:
    """{source, target, source_language, target_language} for each aligned line pair."""
    src_lang, tgt_lang = languages.normalize(source_language), languages.normalize(
        target_language)

    def lines(path: str) -> list[str]:
        with records.open_text(path) as f:
            return records.decode_utf8(f.read(), path).splitlines()

    src, tgt = lines(source_path), lines(target_path)
    if len(src) != len(tgt):
        raise records.RecordError(f"{source_path} has {len(src)} lines but {target_path} has "
                                  f"{len(tgt)}; parallel files must be line-aligned")

    def convert(where: str, pair: tuple[str, str]) -> dict:
        if not pair[0].strip() or not pair[1].strip():
            raise records.RecordError(f"{where}: empty line in a parallel pair")
        return {"source": pair[0].strip(), "target": pair[1].strip(),
                "source_language": src_lang, "target_language": tgt_lang,
                "language": tgt_lang, "_where": where}

    items = ((f"{target_path}:{i + 1}", pair) for i, pair in enumerate(zip(src, tgt,
                                                                          strict=True)))
    return records.guarded(items, convert, bad_records, target_path)


def both_directions(source_path: str, target_path: str, source_language: str,
                    target_language: str, bad_records: records.BadRecords | None = None
                    ) -> Iterator[dict]:
    yield from parallel(source_path, target_path, source_language, target_language,
                        bad_records)
    yield from parallel(target_path, source_path, target_language, source_language,
                        bad_records)


def alpaca(path: str, language: str, bad_records: records.BadRecords | None = None
           ) -> Iterator[dict]:
    """Alpaca records (`input` may be empty; `output` may not)."""
    lang = languages.normalize(language)

    def convert(where: str, item: dict) -> dict:
        record = records.check_fields(item, ("instruction", "input", "output"), where,
                                      nonempty=("instruction", "output"))
        return {**record, "language": lang, "_where": where}

    return records.guarded(records.iter_json_array(path), convert, bad_records, path)
