"""The evaluation report: results.json, results.md (a table per dataset, languages as
rows) and results.png (per-language bars; languages mT5 never saw in pretraining hatched;
a rank-classification task's chance level, 1 / its number of choices, marked on both).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

from mtf import storage
from mtf.data import languages

MAIN_METRICS = ("accuracy", "exact_match", "chrf", "bleu", "f1", "rougeL")


def main_metric(language_entry: Mapping[str, Any]) -> str:
    present = language_entry["median"]
    return next((m for m in MAIN_METRICS if m in present), sorted(present)[0])


def _unseen(code: str) -> str:
    return "" if languages.in_mt5_pretraining(code) else " *"


def markdown(report: Mapping[str, Any]) -> str:
    """One table per dataset and metric: languages as rows, templates, median and max."""
    lines = [f"# Evaluation: {report.get('mixture')} at step {report.get('step')}", "",
             f"Checkpoint: `{report.get('checkpoint')}`. Values are percentages; `median` and "
             "`max` are over prompt templates (the mT0 paper reports the median). `*`: a "
             "language outside mT5's pretraining."]
    cut = report.get("truncated", {})
    if cut.get("prompts") or cut.get("choices"):
        lines.append(f"Cut to fit: {cut['prompts']} prompts (> {cut['input_length']} tokens), "
                     f"{cut['choices']} answer choices (> {cut['target_length']} tokens).")
    for dataset, by_language in report["results"].items():
        metric_names = sorted({m for e in by_language.values() for m in e["median"]})
        templates = sorted({t for e in by_language.values() for t in e["templates"]})
        for metric in metric_names:
            chance = metric == "accuracy" and any("chance" in e for e in by_language.values())
            lines += ["", f"## {dataset}: {metric}", "",
                      "| language | " + " | ".join(templates) + " | median | max |"
                      + (" chance |" if chance else ""),
                      "|---" * (len(templates) + 3 + chance) + "|"]
            for code, entry in sorted(by_language.items()):
                if metric not in entry["median"]:
                    continue
                cells = [f"{entry['templates'][t][metric]:.1f}" if t in entry["templates"]
                         and metric in entry["templates"][t] else "" for t in templates]
                lines.append(f"| {code}{_unseen(code)} | " + " | ".join(cells) +
                             f" | {entry['median'][metric]:.1f} | {entry['max'][metric]:.1f} |"
                             + (f" {entry['chance']:.1f} |" if chance and "chance" in entry
                                else " |" if chance else ""))
    return "\n".join(lines) + "\n"


def summary(report: Mapping[str, Any]) -> str:
    """The per-language table printed at the end of an evaluation: each dataset's main
    metric, median over templates."""
    lines = []
    for dataset, by_language in report["results"].items():
        metric = main_metric(next(iter(by_language.values())))
        lines.append(f"{dataset} ({metric}, median over templates; * = not in mT5 "
                     "pretraining):")
        for code, entry in sorted(by_language.items()):
            guess = (f"  (chance {entry['chance']:.1f})"
                     if metric == "accuracy" and "chance" in entry else "")
            lines.append(f"  {code + _unseen(code):<12} {entry['median'].get(metric, 0.0):6.1f}"
                         + guess)
    return "\n".join(lines)


def scalars(report: Mapping[str, Any]) -> dict[str, float]:
    """Flat metrics for metrics.jsonl / TensorBoard: eval/<dataset>/<language>/<metric>
    (median over templates) and eval/<dataset>/<metric> (mean over languages)."""
    out: dict[str, float] = {}
    for dataset, by_language in report["results"].items():
        sums: dict[str, list[float]] = {}
        for code, entry in by_language.items():
            for metric, value in entry["median"].items():
                out[f"eval/{dataset}/{code}/{metric}"] = value
                sums.setdefault(metric, []).append(value)
        for metric, values in sums.items():
            out[f"eval/{dataset}/{metric}"] = sum(values) / len(values)
    return out


def plot(report: Mapping[str, Any]) -> bytes:
    """A PNG: one panel per dataset, a bar per language (main metric, median over
    templates), languages outside mT5's pretraining hatched and grey."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    datasets = list(report["results"].items())
    fig, axes = plt.subplots(len(datasets), 1, figsize=(12, 3.2 * max(len(datasets), 1)),
                             squeeze=False)
    for ax, (dataset, by_language) in zip(axes[:, 0], datasets, strict=True):
        metric = main_metric(next(iter(by_language.values())))
        codes = sorted(by_language)
        values = [by_language[c]["median"].get(metric, 0.0) for c in codes]
        unseen = [not languages.in_mt5_pretraining(c) for c in codes]
        bars = ax.bar(range(len(codes)), values,
                      color=["#bbbbbb" if u else "#3b75af" for u in unseen])
        for bar, u in zip(bars, unseen, strict=True):
            if u:
                bar.set_hatch("//")
        chance = [by_language[c].get("chance") if metric == "accuracy" else None
                  for c in codes]
        if any(v is not None for v in chance):  # a tick across each bar at guessing's level
            ax.hlines([v for v in chance if v is not None],
                      [i - 0.4 for i, v in enumerate(chance) if v is not None],
                      [i + 0.4 for i, v in enumerate(chance) if v is not None],
                      colors="#d62728", linewidth=1.5, label="chance (1 / choices)")
            ax.legend(fontsize=7, loc="upper right")
        ax.set_xticks(range(len(codes)), codes, rotation=90, fontsize=7)
        ax.set_ylabel(metric)
        ax.set_title(f"{dataset}: {metric} (median over templates); hatched = not in mT5 "
                     "pretraining" + ("; red: chance" if any(v is not None for v in chance)
                                      else ""), fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def write(directory: str, report: Mapping[str, Any]) -> dict[str, str]:
    """Writes results.json, results.md and results.png under `directory` (local or gs://)."""
    paths = {name: storage.join(directory, f"results.{name}") for name in ("json", "md", "png")}
    storage.write_text(paths["json"], json.dumps(report, indent=1, ensure_ascii=False))
    storage.write_text(paths["md"], markdown(report))
    storage.write_bytes(paths["png"], plot(report))
    return paths
