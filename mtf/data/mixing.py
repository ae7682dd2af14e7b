"""Mixture rates: xP3's published language weights, capped proportional, temperature.

seqio accepts a callable rate per task, evaluated when the mixture is first sampled, so
sizes are counted lazily (counting a large xP3 tree at import would be slow): each task's
source counts its training examples (`register_task(size=...)`), once.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gin

from mtf.data import languages
from mtf.errors import SettingError

STRATEGIES = ("xp3", "proportional", "temperature")


def size(task: Any) -> int:
    """A registered task's number of training examples (its source counts them once)."""
    return task.source.train_size()


def proportional_rates(sizes: Mapping[str, int], cap: int | None) -> dict[str, float]:
    """Examples-proportional mixing with T5's cap: rate = min(size, cap)."""
    return {k: float(min(n, cap) if cap else n) for k, n in sizes.items()}


def temperature_rates(sizes: Mapping[str, int], temperature: float,
                      cap: int | None = None) -> dict[str, float]:
    """rate ~ size^(1/T): T=1 is proportional, large T tends to uniform."""
    if temperature <= 0:
        raise SettingError(f"temperature must be > 0, got {temperature}")
    capped = proportional_rates(sizes, cap)
    return {k: n ** (1.0 / temperature) for k, n in capped.items()}


def has_xp3_weight(code: str) -> bool:
    return languages.base_language(code) in languages.XP3_WEIGHTS


def xp3_rates(langs: list[str]) -> dict[str, float]:
    """xmtf's weights for the languages present (renormalised by seqio when sampling).

    Codes are matched by base language ('swh_Latn' has no weight, 'zho_Hant' has zh's);
    codes sharing a base language (two scripts of one language) share its weight."""
    unknown = [c for c in langs if not has_xp3_weight(c)]
    if unknown:
        raise SettingError(f"languages {unknown} have no xP3 weight; use the 'proportional' or "
                           "'temperature' strategy for them")
    bases = collections.Counter(languages.base_language(c) for c in langs)
    return {c: languages.XP3_WEIGHTS[languages.base_language(c)]
            / bases[languages.base_language(c)] for c in langs}


def normalized(rates: Mapping[str, float]) -> dict[str, float]:
    total = sum(rates.values())
    return {k: v / total for k, v in rates.items()}


@gin.configurable(module="mtf.data.mixing")
def mixing_options(cap: int | None = 100_000, temperature: float = 2.0) -> tuple[int | None,
                                                                                  float]:
    """Gin knobs for the proportional cap and the sampling temperature."""
    return cap, temperature


def rate_fn(strategy: str, language: str | None = None,
            same_base: Sequence[str] = ()) -> Callable[[object], float]:
    """A seqio rate callable for one task under `strategy` (see STRATEGIES); `same_base`:
    the other languages of the mixture that share `language`'s xP3 weight."""
    if strategy not in STRATEGIES:
        raise SettingError(f"mixing strategy {strategy!r}; choose one of {STRATEGIES}")

    def rate(task) -> float:
        cap, temperature = mixing_options()
        if strategy == "xp3":
            return xp3_rates([language, *same_base])[language]
        n = size(task)
        if strategy == "proportional":
            return proportional_rates({task.name: n}, cap)[task.name]
        return temperature_rates({task.name: n}, temperature, cap)[task.name]

    return rate
