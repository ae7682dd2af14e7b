"""Validation loss of the training mixture, every EVAL_PERIOD steps (T5X's train-eval).

The first EVAL_STEPS batches of the mixture's validation split (unshuffled, so every
evaluation sees the same examples) are read once when training starts, which also fails a
mixture without a validation split before the first step. The loss is the train step's
(same normalisation, z-loss, microbatches), without dropout, averaged over the batches,
per language and per task as training logs them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mtf import partitioning, program, step
from mtf.data import batches, seqio_tasks
from mtf.errors import SettingError
from mtf.model import ModelConfig
from mtf.observability import LogWindow

PREFIX = "validation/"


class ValidationLoss:
    def __init__(self, model_config: ModelConfig, mesh: Any, params_sharding: Any,
                 data: batches.DataConfig, batch_size: int, loss: step.LossConfig,
                 num_microbatches: int, steps: int, process_index: int = 0,
                 process_count: int = 1) -> None:
        if steps <= 0:
            raise SettingError(f"EVAL_STEPS={steps} must be positive (or None to skip the "
                               "validation loss)")
        source = dataclasses.replace(data, split="validation", shuffle=False, seekable=False)
        try:
            stream = batches.batches(source, batch_size, 0, process_index, process_count)
            self.local = [next(stream) for _ in range(steps)]
        except StopIteration:
            raise SettingError(f"the validation split of {data.mixture_or_task_name!r} has "
                               f"fewer than EVAL_STEPS={steps} batches of {batch_size}") from None
        except ValueError as e:
            if "split" not in str(e).lower():
                raise
            raise SettingError(f"{data.mixture_or_task_name!r} has no validation split for "
                               f"the validation loss ({e}); set EVAL_STEPS=None to skip it"
                               ) from None
        self.sharding = partitioning.batch_sharding(mesh)
        self.spec = model_config.batch_spec
        self.task_names = seqio_tasks.task_names(batches.provider(data))
        self.keys = tuple(k for k in self.spec.step_inputs(data.pack) if k in self.local[0])
        self.run = program.eval_program(model_config.without_dropout, mesh,
                                        params_sharding, loss, num_microbatches)

    def __call__(self, params: Any) -> dict[str, float]:
        """validation/loss, validation/z_loss, validation/loss/<language>, ... ."""
        window = LogWindow(partitioning.gather, self.spec, self.task_names)
        for local in self.local:
            batch = partitioning.global_batch(local, self.sharding, self.keys)
            window.add(self.run(params, batch), local)
        return {PREFIX + k: v for k, v in window.summary().items()}
