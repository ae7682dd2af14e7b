"""Optimizers and learning-rate schedules, built on optax.

Adafactor uses T5X's finetuning settings: factored second moments (dims >= 128), decay
rate 0.8, parameter-scale multiplication, update clipping 1.0, no momentum, eps 1e-30.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from mtf.errors import SettingError

SCHEDULES = ("constant", "linear_warmup", "rsqrt", "cosine")
OPTIMIZERS = ("adafactor", "adamw")


def make_schedule(kind: str = "constant", base_learning_rate: float = 1e-3,
                  warmup_steps: int = 0, decay_steps: int = 0,
                  end_learning_rate: float = 0.0) -> optax.Schedule:
    """`constant` (the mT0 recipe: 1e-3), `linear_warmup` then constant, T5's `rsqrt`
    (base * sqrt(warmup / max(step, warmup))), or linear warmup then `cosine` decay."""
    if kind == "constant":
        return optax.constant_schedule(base_learning_rate)
    if kind == "linear_warmup":
        warmup = max(warmup_steps, 1)
        return optax.join_schedules([optax.linear_schedule(0.0, base_learning_rate, warmup),
                                     optax.constant_schedule(base_learning_rate)], [warmup])
    if kind == "rsqrt":
        if warmup_steps <= 0:
            raise SettingError("rsqrt schedule needs warmup_steps > 0 (T5 used 10000)")
        return lambda step: base_learning_rate * jnp.sqrt(
            warmup_steps / jnp.maximum(step, warmup_steps))
    if kind == "cosine":
        if decay_steps <= warmup_steps:
            raise SettingError(f"cosine schedule needs decay_steps ({decay_steps}) > "
                               f"warmup_steps ({warmup_steps})")
        return optax.warmup_cosine_decay_schedule(0.0, base_learning_rate, warmup_steps,
                                                  decay_steps, end_learning_rate)
    raise SettingError(f"learning-rate schedule {kind!r}: use one of {SCHEDULES}")


def make_optimizer(name: str = "adafactor", schedule: optax.Schedule | None = None,
                   grad_clip_norm: float | None = None, weight_decay: float = 0.0,
                   b1: float = 0.9, b2: float = 0.999) -> optax.GradientTransformation:
    """The optax chain: optional global-norm clipping, then Adafactor or AdamW."""
    schedule = schedule if schedule is not None else make_schedule()
    if name == "adafactor":
        core = optax.adafactor(learning_rate=schedule, min_dim_size_to_factor=128,
                               decay_rate=0.8, multiply_by_parameter_scale=True,
                               clipping_threshold=1.0, momentum=None, eps=1e-30,
                               factored=True,
                               weight_decay_rate=weight_decay or None)
    elif name == "adamw":
        core = optax.adamw(learning_rate=schedule, b1=b1, b2=b2, weight_decay=weight_decay)
    else:
        raise SettingError(f"optimizer {name!r}: use one of {OPTIMIZERS}")
    if grad_clip_norm:
        return optax.chain(optax.clip_by_global_norm(grad_clip_norm), core)
    return core
