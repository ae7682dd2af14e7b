"""Per-language curves of a score against the number of training examples, fitted to pilot
runs and checked by leaving one size out (x-LLaMA's data-allocation step, arXiv 2308.04948).

Two forms, each concave and rising where it is valid:
- `power`: f(X) = top - alpha * (gamma + X) ** beta (alpha > 0, beta < 0, gamma >= 0), the
  saturating power law reported for x-LLaMA's translation scores (`top`: the metric's
  ceiling, 100 for BLEU / chrF / accuracy in percent);
- `log`: f(X) = a + b * ln(X) (b > 0), the usual alternative.
scipy fits them; what is written here is the choice between them and the refusals.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import optimize

from mtf.errors import UserError

FORMS = ("power", "log")
PARAMETERS = {"power": ("alpha", "beta", "gamma"), "log": ("a", "b")}


class DegenerateFitError(UserError):
    """Pilots that cannot support a curve: too few sizes, or a score that falls with data."""


@dataclasses.dataclass(frozen=True)
class Curve:
    """One fitted form: the predicted score and its slope at a number of examples."""

    form: str
    params: Mapping[str, float]
    top: float = 100.0

    def __call__(self, examples: float) -> float:
        x = max(float(examples), 0.0)
        if self.form == "power":
            p = self.params
            return self.top - p["alpha"] * (p["gamma"] + x) ** p["beta"]
        return self.params["a"] + self.params["b"] * math.log(max(x, 1.0))

    def slope(self, examples: float) -> float:
        x = max(float(examples), 0.0)
        if self.form == "power":
            p = self.params
            return -p["alpha"] * p["beta"] * (p["gamma"] + x) ** (p["beta"] - 1.0)
        return self.params["b"] / max(x, 1.0)

    @property
    def least_examples(self) -> float:
        """Where the form is defined: ln needs one example, the power law none (gamma > 0)."""
        return 1.0 if self.form == "log" or self.params["gamma"] <= 0 else 0.0

    def to_json(self) -> dict:
        return {"form": self.form, "params": dict(self.params), "top": self.top}

    @classmethod
    def from_json(cls, data: Mapping) -> Curve:
        return cls(data["form"], dict(data["params"]), float(data.get("top", 100.0)))


def fit(form: str, sizes: Sequence[float], scores: Sequence[float], top: float = 100.0
        ) -> Curve:
    """Least squares of `form` through the points (sizes may repeat: one point per seed)."""
    x, y = np.asarray(sizes, float), np.asarray(scores, float)
    if form == "log":
        b, a = np.polyfit(np.log(x), y, 1)
        return Curve("log", {"a": float(a), "b": float(b)}, top)
    if form != "power":
        raise ValueError(f"curve form {form!r}; choose one of {FORMS}")
    gap = top - y
    if np.any(gap <= 0):
        raise DegenerateFitError(f"a score reaches the ceiling {top:g}: the power law "
                                 "saturates below it (set --top to the metric's maximum)")
    scale = float(np.max(x))

    def residuals(theta: np.ndarray) -> np.ndarray:
        log_alpha, beta, gamma = theta
        return top - np.exp(log_alpha) * ((gamma + x) / scale) ** beta - y

    best = None
    for beta0 in (-0.1, -0.3, -0.6, -1.0, -2.0):  # several starts: the loss is not convex
        for gamma0 in (0.0, float(np.min(x)) / scale, 1.0):
            z = (gamma0 + x / scale) ** beta0
            alpha0 = max(float(np.dot(z, gap) / np.dot(z, z)), 1e-9)  # exact given the rest
            try:
                result = optimize.least_squares(
                    lambda t: residuals(np.array([t[0], t[1], t[2] * scale])),
                    [math.log(alpha0), beta0, gamma0], bounds=([-50, -10, 0], [50, -1e-6, 100]),
                    x_scale="jac", xtol=1e-14, ftol=1e-14, gtol=1e-14, max_nfev=5000)
            except ValueError:
                continue
            if best is None or result.cost < best.cost:
                best = result
    log_alpha, beta, gamma = best.x[0], best.x[1], best.x[2] * scale
    # alpha * ((gamma + X) / scale) ** beta == (alpha * scale ** -beta) * (gamma + X) ** beta
    alpha = math.exp(log_alpha) * scale ** (-beta)
    return Curve("power", {"alpha": alpha, "beta": float(beta), "gamma": float(gamma)}, top)


def leave_one_size_out(form: str, sizes: Sequence[float], scores: Sequence[float],
                       top: float = 100.0) -> float | None:
    """Root mean square of each size's mean score predicted by a fit to the other sizes;
    None when leaving one out leaves fewer sizes than the form has parameters."""
    x, y = np.asarray(sizes, float), np.asarray(scores, float)
    distinct = np.unique(x)
    if len(distinct) - 1 < len(PARAMETERS[form]):
        return None
    errors = []
    for held in distinct:
        kept = x != held
        curve = fit(form, x[kept], y[kept], top)
        errors.append(curve(held) - float(np.mean(y[~kept])))
    return float(np.sqrt(np.mean(np.square(errors))))


def fit_language(language: str, sizes: Sequence[float], scores: Sequence[float],
                 top: float = 100.0, tolerance: float = 0.0) -> dict:
    """Both forms with their parameters, training error and leave-one-size-out error; the
    chosen one has the lower held-out error. Refuses, naming the language, pilots whose mean
    score falls as data grows (by more than `tolerance`) or that have too few sizes to check
    any form."""
    x, y = np.asarray(sizes, float), np.asarray(scores, float)
    distinct = np.unique(x)
    means = [float(np.mean(y[x == s])) for s in distinct]
    for i in range(1, len(distinct)):
        (s0, m0), (s1, m1) = (distinct[i - 1], means[i - 1]), (distinct[i], means[i])
        if m1 < m0 - tolerance:
            raise DegenerateFitError(
                f"language {language!r}: the mean score falls from {m0:.4g} at {s0:g} "
                f"examples to {m1:.4g} at {s1:g}; no rising curve fits: rerun those pilots "
                "with more seeds or steps, or drop the language")
    needed = min(len(p) for p in PARAMETERS.values()) + 1
    if len(distinct) < needed:
        raise DegenerateFitError(
            f"language {language!r}: {len(distinct)} pilot size(s) "
            f"({', '.join(f'{s:g}' for s in distinct)}); a curve is checked by leaving one "
            f"size out, which needs at least {needed}: add pilot sizes")
    forms = {}
    for form in FORMS:
        if len(distinct) < len(PARAMETERS[form]):
            continue
        curve = fit(form, x, y, top)
        forms[form] = {**curve.to_json(),
                       "rmse": float(np.sqrt(np.mean((np.array([curve(s) for s in x]) - y)
                                                     ** 2))),
                       "held_out_rmse": leave_one_size_out(form, x, y, top)}
    checked = {f: v for f, v in forms.items() if v["held_out_rmse"] is not None}
    chosen = min(checked, key=lambda f: checked[f]["held_out_rmse"])
    seeds = [y[x == s] for s in distinct]
    noise = [float(np.std(v, ddof=1)) for v in seeds if len(v) > 1]
    return {"chosen": chosen, "forms": forms, "sizes": [float(s) for s in distinct],
            "means": means, "points": [[float(a), float(b)] for a, b in zip(x, y, strict=True)],
            "seed_std": float(np.mean(noise)) if noise else None}


def chosen_curve(entry: Mapping) -> Curve:
    return Curve.from_json(entry["forms"][entry["chosen"]])
