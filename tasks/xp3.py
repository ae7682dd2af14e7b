"""xP3 tasks over a local or gs:// tree (registered when XP3_DIR is set).

`xp3_<lang>` per language folder (and `xp3_<lang>_<file>` per dataset file of an xP3x
folder); mixtures `xp3` (xmtf's language weights, the default),
`xp3_proportional` (examples-proportional, capped) and `xp3_temperature` (size^(1/T)).
mT0 trains on `xp3`; the vocabulary is mT5's unless MTF_VOCABULARY says otherwise.
"""

from __future__ import annotations

import os

from mtf.data import languages, metrics, mixing, records, seqio_tasks, xp3
from tasks import vocabularies

MIXTURES = {"xp3": "xp3", "xp3_proportional": "proportional",
            "xp3_temperature": "temperature"}


def register(root: str, vocabulary_path: str | None = None,
             skip_bad_records: bool = False, validation_fraction: float = 0.01) -> list[str]:
    """Registers `xp3_<lang>` for every language folder of `root` and the xp3 mixtures."""
    vocabulary = vocabularies.mt5(vocabulary_path)

    def register_files(name: str, files: list[str], lang: str) -> None:
        def build(shard: seqio_tasks.Shard, bad_records: records.BadRecords):
            return seqio_tasks.prompted_examples(
                xp3.read(files, bad_records, shard=shard), name, None, lang, bad_records)

        seqio_tasks.register_task(name, build, vocabulary, validation_fraction,
                                  metric_fns=[metrics.exact_match], sharded_reader=True,
                                  files=files,
                                  size=lambda: sum(xp3.count_lines(f) for f in files),
                                  skip_bad_records=skip_bad_records)

    names = {}
    for lang, folder in xp3.language_dirs(root).items():
        files = xp3.language_files(folder, lang)
        register_files(f"xp3_{lang}", files, lang)
        names[f"xp3_{lang}"] = lang
        if len(files) > 1:  # xP3x: one file per dataset; also a task per dataset
            for path in files:
                stem = os.path.basename(path).removesuffix(".jsonl")
                register_files(f"xp3_{lang}_{stem}", [path], lang)
    for mixture, strategy in MIXTURES.items():
        known = {n: lang for n, lang in names.items()
                 if strategy != "xp3" or mixing.has_xp3_weight(lang)}

        def same_base(lang: str, known=known) -> list[str]:
            base = languages.base_language(lang)
            return [o for o in known.values() if o != lang and languages.base_language(o) == base]

        seqio_tasks.register_mixture(mixture, [(n, mixing.rate_fn(strategy, lang, same_base(lang)))
                                               for n, lang in known.items()])
    return sorted(names)


if os.environ.get("XP3_DIR"):
    register(os.environ["XP3_DIR"])
