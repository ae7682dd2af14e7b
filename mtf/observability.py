"""Training metrics to stdout (a progress line on a terminal), TensorBoard and metrics.jsonl.

`MODEL_DIR/metrics.jsonl` holds one JSON object per logged step with `step`, `loss`,
`learning_rate`, `tokens_per_second`, `loss/<language>`, `loss/task/<task>` and the rest,
each averaged over the steps since the previous log step (`LogWindow`).
Only process 0 writes. On gs:// both are written in a local mirror and uploaded at each
log step (`storage.Mirror`: GCS objects cannot be appended to).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping

import numpy as np

from mtf import storage
from mtf.data import languages
from mtf.model import ENCODER_DECODER, BatchSpec


def _group_sums(token_loss: np.ndarray, ids: np.ndarray, weights: np.ndarray,
                into: dict[int, list[float]]) -> None:
    """Adds (loss sum, weight) per id (0 = padding, left out) into `into`."""
    for value in np.unique(ids):
        if value <= 0:
            continue
        mask = ids == value
        totals = into.setdefault(int(value), [0.0, 0.0])
        totals[0] += float((token_loss[mask] * weights[mask]).sum())
        totals[1] += float(weights[mask].sum())


class LogWindow:
    """Everything between two log steps, averaged over the whole window.

    Steps keep their device values (no host sync per step); at the log step they are
    fetched once and per-language / per-task loss is summed over every token of the
    window (one batch of 39 languages would be noise).
    """

    def __init__(self, gather, spec: BatchSpec = ENCODER_DECODER,
                 task_names: Mapping[int, str] | None = None) -> None:
        self.gather = gather  # device array -> the global array on the host
        self.spec = spec
        self.task_names = dict(task_names or {})  # seqio_tasks.task_names of the mixture
        self.steps: list[tuple[Mapping, Mapping[str, np.ndarray]]] = []

    def add(self, metrics: Mapping, batch: Mapping[str, np.ndarray]) -> None:
        spec = self.spec
        ids = {k: batch[k] for k in (*spec.ids, spec.loss_weights, spec.targets) if k in batch}
        self.steps.append((metrics, ids))

    def summary(self) -> dict[str, float]:
        """Window means of loss, z_loss and grad_norm, the last learning rate, and
        `loss/<language>`, `loss/task/<task>`; then the window starts again."""
        import jax

        keys = [k for k in ("loss", "z_loss", "grad_norm", "learning_rate")
                if k in self.steps[0][0]]  # validation steps have no gradient or rate
        scalars = jax.device_get([{k: m[k] for k in keys} for m, _ in self.steps])
        out = {k: float(np.mean([s[k] for s in scalars])) for k in keys if k != "learning_rate"}
        if "learning_rate" in keys:
            out["learning_rate"] = float(scalars[-1]["learning_rate"])
        by_language: dict[int, list[float]] = {}
        by_task: dict[int, list[float]] = {}
        for metrics, ids in self.steps:
            token_loss = self.gather(metrics["token_loss"])
            local = {k: self.gather(v) for k, v in ids.items()}
            weights = np.asarray(local.get(self.spec.loss_weights,
                                           local[self.spec.targets] > 0), np.float32)
            if self.spec.language in local:
                _group_sums(token_loss, local[self.spec.language], weights, by_language)
            if self.spec.task in local:
                _group_sums(token_loss, local[self.spec.task], weights, by_task)
        for value, (total, count) in sorted(by_language.items()):
            if count > 0:
                out[f"loss/{languages.language_from_id(value)}"] = total / count
        for value, (total, count) in sorted(by_task.items()):
            if count > 0:
                out[f"loss/task/{self.task_names.get(value, str(value))}"] = total / count
        self.steps = []
        return out


class MetricsWriter:
    """Writes one logged step everywhere; a no-op on processes other than 0."""

    def __init__(self, model_dir: str, total_steps: int, enabled: bool = True):
        self.enabled = enabled
        self.total_steps = total_steps
        self.tty = sys.stdout.isatty()
        if not enabled:
            return
        self.mirror = storage.Mirror(model_dir, resume=("metrics.jsonl",))
        self.jsonl = open(os.path.join(self.mirror.local, "metrics.jsonl"), "a",
                          encoding="utf-8")
        import tensorflow as tf

        self.tf = tf
        self.tensorboard = tf.summary.create_file_writer(
            os.path.join(self.mirror.local, "tensorboard", "train"))

    def write(self, step: int, scalars: Mapping[str, float], progress: bool = True) -> None:
        """Appends to metrics.jsonl and TensorBoard; `progress` also prints the step line."""
        if not self.enabled:
            return
        record = {"step": step, **{k: float(v) for k, v in scalars.items()}}
        self.jsonl.write(json.dumps(record, allow_nan=True) + "\n")
        self.jsonl.flush()
        with self.tensorboard.as_default(step=step):
            for key, value in scalars.items():
                if math.isfinite(value):
                    self.tf.summary.scalar(key, value)
        self.tensorboard.flush()
        self.mirror.sync()
        if progress:
            self._print(step, scalars)

    def _print(self, step: int, scalars: Mapping[str, float]) -> None:
        width = 30
        done = int(width * step / max(self.total_steps, 1))
        bar = "#" * done + "." * (width - done)
        loss = scalars.get("loss", float("nan"))
        main = (f"step {step}/{self.total_steps} [{bar}] loss {loss:.4f}"
                f" lr {scalars.get('learning_rate', 0.0):.2e}"
                f" |g| {scalars.get('grad_norm', 0.0):.3f}"
                f" tok/s {scalars.get('tokens_per_second', 0.0):.0f}")
        if "mfu" in scalars:
            main += f" mfu {scalars['mfu']:.1%}"
        end = "\r" if self.tty and step < self.total_steps else "\n"
        print(main, end=end, flush=True)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tensorboard.close()
            self.mirror.close()
