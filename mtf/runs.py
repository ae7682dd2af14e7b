"""What a launch runs, chosen by the run config (`runs.run.mode`)."""

from __future__ import annotations

from typing import Any

import gin

from mtf import train
from mtf.errors import SettingError
from mtf.eval import runner

MODES = ("train", "eval", "infer")


def run(mode: str = "train") -> Any:
    """Dispatches to the configured loop: gin/runs/finetune.gin, eval.gin or infer.gin."""
    loops = {"train": train.train, "eval": runner.evaluate, "infer": runner.infer}
    if mode not in loops:
        raise SettingError(f"runs.run.mode={mode!r}: choose one of {MODES}")
    return gin.get_configurable(loops[mode])()
