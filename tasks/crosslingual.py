"""Translation and x-LLaMA cross-lingual instruction tasks (generation).

  FLORES_DIR   a Flores split folder (e.g. flores101_dataset/devtest) holding
               <code>.<split> files, English among them -> flores_en_<lang>, flores_<lang>_en
  XLLAMA_DIR   alpaca/<lang>.json (English: alpaca/en.json) and parallel/en-<lang>.en,
               parallel/en-<lang>.<lang> -> xllama_alpaca_<lang>, xllama_translation_<lang>;
               mixtures xllama_<lang> (CoIT: English + target-language instructions +
               translation) and xllama (MuIT: every language together)
Translation prompts are drawn from a pool of paraphrased instructions (templates).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from mtf import storage
from mtf.data import crosslingual, languages, metrics, seqio_tasks, templates
from mtf.errors import MissingFileError
from tasks import vocabularies

TEMPLATES = Path(__file__).resolve().parent / "templates" / "crosslingual.yaml"


@functools.cache
def template_set() -> templates.TemplateSet:
    return templates.load_templates(TEMPLATES)


def _translation_templates() -> list[templates.Template]:
    return [t for t in template_set().templates if t.id.startswith("translate_")]


def _register(name: str, records_fn, prompts, validation_fraction: float) -> str:
    seqio_tasks.register_task(
        name, lambda bad_records: seqio_tasks.prompted_examples(
            records_fn(bad_records), name, prompts, None, bad_records),
        vocabularies.mt5(), validation_fraction, metric_fns=[metrics.bleu, metrics.chrf])
    return name


def register_flores(root: str) -> list[str]:
    split = os.path.basename(os.path.normpath(root))
    files = {f.rsplit(".", 1)[0]: storage.join(root, f) for f in storage.listdir(root)
             if f.endswith(f".{split}")}
    english = next((c for c in files if languages.base_language(c) == "en"), None)
    if english is None:
        raise MissingFileError(f"FLORES_DIR={root} has no English file (eng.{split} or "
                               f"eng_Latn.{split})")
    names = []
    for code, path in sorted(files.items()):
        lang = languages.normalize(code)
        if code == english:
            continue
        names.append(_register(f"flores_en_{lang}", functools.partial(
            crosslingual.parallel, files[english], path, "en", lang),
            _translation_templates(), 1.0))
        names.append(_register(f"flores_{lang}_en", functools.partial(
            crosslingual.parallel, path, files[english], lang, "en"),
            _translation_templates(), 1.0))
    seqio_tasks.register_mixture("flores", [(n, 1.0) for n in names])
    return names


def register_xllama(root: str) -> list[str]:
    alpaca_dir = storage.join(root, "alpaca")
    langs = sorted(f[:-len(".json")] for f in storage.listdir(alpaca_dir)
                   if f.endswith(".json"))
    if "en" not in langs:
        raise MissingFileError(f"{alpaca_dir} needs en.json beside the target languages")
    alpaca_prompt = template_set().subset(["alpaca"]).templates
    alpaca = {c: _register(f"xllama_alpaca_{c}", functools.partial(
        crosslingual.alpaca, storage.join(alpaca_dir, f"{c}.json"), c), alpaca_prompt, 0.02)
        for c in langs}
    per_language = []
    for c in langs:
        if c == "en":
            continue
        parts = [alpaca["en"], alpaca[c]]
        src = storage.join(root, "parallel", f"en-{c}.en")
        if storage.exists(src):
            parts.append(_register(f"xllama_translation_{c}", functools.partial(
                crosslingual.parallel, src, storage.join(root, "parallel", f"en-{c}.{c}"),
                "en", c), _translation_templates(), 0.02))
        seqio_tasks.register_mixture(f"xllama_{c}", [(n, 1.0) for n in parts])
        per_language += parts[1:]
    seqio_tasks.register_mixture("xllama", [(n, 1.0) for n in [alpaca["en"]] + per_language])
    return sorted(set(alpaca.values()) | set(per_language))


if os.environ.get("FLORES_DIR"):
    register_flores(os.environ["FLORES_DIR"])
if os.environ.get("XLLAMA_DIR"):
    register_xllama(os.environ["XLLAMA_DIR"])
