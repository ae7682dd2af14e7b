"""What a launch runs, chosen by the run config (`runs.run.mode`)."""

from __future__ import annotations

import gin

from mtf import train
from mtf.errors import SettingError

MODES = ("train", "eval", "infer")


def run(mode: str = "train") -> train.TrainResult:
    """Dispatches to the configured loop: `train` today; eval and infer land with their issue."""
    if mode == "train":
        return gin.get_configurable(train.train)()
    if mode in MODES:
        raise SettingError(f"run mode {mode!r} is not available yet; it lands with the "
                           "evaluation/inference issue. Use runs.run.mode = 'train'")
    raise SettingError(f"runs.run.mode={mode!r}: choose one of {MODES}")
