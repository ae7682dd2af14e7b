"""What a launch runs, chosen by the run config (`runs.run.mode`)."""

from __future__ import annotations

from typing import Any

import gin

from mtf import run_config, train
from mtf.errors import SettingError
from mtf.eval import runner

MODES = ("train", "eval", "infer")


def run(mode: str = "train") -> Any:
    """Dispatches to the configured loop: gin/runs/finetune.gin, eval.gin or infer.gin."""
    if mode not in MODES:
        raise SettingError(f"runs.run.mode={mode!r}: choose one of {MODES}")
    if mode == "train":
        return train.train(run_config.from_gin())
    return gin.get_configurable(runner.evaluate if mode == "eval" else runner.infer)()
