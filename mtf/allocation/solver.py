"""Splitting a budget of training examples across languages by their fitted curves.

Written here because it is a few lines on top of the curves' shape: every curve is concave
and rising, so the summed score is maximised where every language's marginal gain is equal
(a bisection on that gain), and the worst language's score where every language reaches the
same score (a bisection on it). Both end in whole examples that add up to the budget exactly.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping

from mtf.allocation.curves import Curve
from mtf.errors import UserError

OBJECTIVES = ("sum", "min")


def _bisect(lo: float, hi: float, above: Callable[[float], bool], steps: int = 200
            ) -> tuple[float, float]:
    """The two sides, `above` False and True, of where it turns (it is monotone)."""
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if above(mid) else (mid, hi)
    return lo, hi


def _examples_at_gain(curve: Curve, gain: float, lo: float, hi: float) -> float:
    """Where the curve's slope falls to `gain`, within [lo, hi] (the slope falls with data)."""
    if curve.slope(lo) <= gain:
        return lo
    if curve.slope(hi) >= gain:
        return hi
    return _bisect(lo, hi, lambda x: curve.slope(x) <= gain)[1]


def _examples_for_score(curve: Curve, score: float, lo: float, hi: float) -> float | None:
    """The fewest examples in [lo, hi] that reach `score`; None when even `hi` does not."""
    if curve(lo) >= score:
        return lo
    if curve(hi) < score:
        return None
    return _bisect(lo, hi, lambda x: curve(x) >= score)[1]


def _whole(curves: Mapping[str, Curve], amounts: Mapping[str, float],
           bounds: Mapping[str, tuple[float, float]], budget: int) -> dict[str, int]:
    """Whole examples, within bounds, adding up to `budget` (or to every cap): round down,
    then hand out what is left one example at a time to the largest marginal gain."""
    whole = {k: max(int(bounds[k][0]), min(int(v), int(bounds[k][1])))
             for k, v in amounts.items()}
    left = budget - sum(whole.values())
    gains = [(-(curves[k](n + 1) - curves[k](n)), k) for k, n in whole.items()
             if n < bounds[k][1]]
    heapq.heapify(gains)
    while left > 0 and gains:
        _, k = heapq.heappop(gains)
        whole[k] += 1
        left -= 1
        if whole[k] < bounds[k][1]:
            n = whole[k]
            heapq.heappush(gains, (-(curves[k](n + 1) - curves[k](n)), k))
    return whole


def _bounds(curves: Mapping[str, Curve], budget: int, caps: Mapping[str, int],
            floor: int) -> dict[str, tuple[float, float]]:
    unknown = sorted(set(caps) - set(curves))
    if unknown:
        raise UserError(f"--caps names {unknown}, which have no fitted curve (languages: "
                        f"{sorted(curves)})")
    bounds = {}
    for language, curve in curves.items():
        lo = max(float(floor), curve.least_examples)
        hi = float(caps.get(language, budget))
        if hi < lo:
            raise UserError(f"language {language!r}: its cap {hi:g} is below the floor "
                            f"{lo:g} examples (--floor, or one example for a log curve)")
        bounds[language] = (lo, hi)
    least = sum(lo for lo, _ in bounds.values())
    if least > budget:
        raise UserError(f"--budget {budget} is below the {least:g} examples the floors need "
                        f"({len(curves)} languages): raise the budget or lower --floor")
    return bounds


def allocate(curves: Mapping[str, Curve], budget: int, caps: Mapping[str, int] | None = None,
             objective: str = "sum", floor: int = 0) -> dict[str, int]:
    """Examples per language: at least `floor` each, at most its cap (the data it has), in
    all `budget` (or every cap, when the data is smaller than the budget), maximising the
    summed predicted score or (`min`) the lowest one, then the sum with what is left."""
    if objective not in OBJECTIVES:
        raise UserError(f"--objective {objective!r}; choose one of {OBJECTIVES}")
    bounds = _bounds(curves, budget, caps or {}, floor)
    if sum(hi for _, hi in bounds.values()) <= budget:
        return {k: int(hi) for k, (_, hi) in bounds.items()}
    if objective == "min":
        def reach(score: float) -> dict[str, float] | None:
            needed = {k: _examples_for_score(c, score, *bounds[k]) for k, c in curves.items()}
            if any(v is None for v in needed.values()) or sum(needed.values()) > budget:
                return None
            return needed
        low = min(c(bounds[k][0]) for k, c in curves.items())
        high = max(c(bounds[k][1]) for k, c in curves.items())
        reached = reach(_bisect(low, high, lambda s: reach(s) is None)[0])
        bounds = {k: (v, bounds[k][1]) for k, v in reached.items()}
    top = max(c.slope(lo) for c, (lo, _) in zip(curves.values(), bounds.values(), strict=True))

    def spent(gain: float) -> float:
        return sum(_examples_at_gain(c, gain, *bounds[k]) for k, c in curves.items())

    gain = _bisect(0.0, top * 2 + 1.0, lambda g: spent(g) <= budget)[1]
    amounts = {k: _examples_at_gain(c, gain, *bounds[k]) for k, c in curves.items()}
    return _whole(curves, amounts, bounds, budget)


def uniform(languages: list[str], budget: int, caps: Mapping[str, int] | None = None
            ) -> dict[str, int]:
    """An equal share each; a language capped below its share gives the rest to the others."""
    caps = caps or {}
    out, left, open_ = {}, budget, sorted(languages, key=lambda k: caps.get(k, budget))
    for i, language in enumerate(open_):
        share = left // (len(open_) - i)
        out[language] = min(share, caps.get(language, budget))
        left -= out[language]
    return {k: out[k] for k in languages}


def proportional(languages: list[str], budget: int, caps: Mapping[str, int]
                 ) -> dict[str, int] | None:
    """Shares in proportion to the data each language has (its cap); None without caps."""
    if any(k not in caps for k in languages):
        return None
    total = sum(caps[k] for k in languages)
    if total <= budget:
        return {k: int(caps[k]) for k in languages}
    out = {k: int(budget * caps[k] / total) for k in languages}
    for k in sorted(languages, key=lambda k: -(budget * caps[k] / total - out[k])):
        if sum(out.values()) == budget:
            break
        out[k] += 1
    return out


def predicted(curves: Mapping[str, Curve], allocation: Mapping[str, int]) -> dict[str, float]:
    return {k: float(curves[k](n)) for k, n in allocation.items()}
