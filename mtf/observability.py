"""Training metrics to stdout (a progress line on a terminal), TensorBoard and metrics.jsonl.

`MODEL_DIR/metrics.jsonl` holds one JSON object per logged step with `step`, `loss`,
`learning_rate`, `tokens_per_second`, `loss/<language>`, `loss/task/<task>` and the rest.
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
from mtf.data import languages, seqio_tasks


def grouped_loss(token_loss: np.ndarray, ids: np.ndarray, weights: np.ndarray,
                 name_of) -> dict[str, float]:
    """Mean token loss per id (0 = padding, left out): {name_of(id): loss}."""
    out = {}
    for value in np.unique(ids):
        if value <= 0:
            continue
        mask = ids == value
        count = float(weights[mask].sum())
        if count > 0:
            out[name_of(int(value))] = float(token_loss[mask].sum()) / count
    return out


def language_losses(token_loss: np.ndarray, batch: Mapping[str, np.ndarray]) -> dict[str, float]:
    """`loss/<language>` and `loss/task/<task>` from the per-token ids the batch carries."""
    out: dict[str, float] = {}
    weights = batch.get("decoder_loss_weights", batch["decoder_target_tokens"] > 0)
    weights = np.asarray(weights, np.float32)
    if "decoder_language" in batch:
        for k, v in grouped_loss(token_loss, batch["decoder_language"], weights,
                                 languages.language_from_id).items():
            out[f"loss/{k}"] = v
    if "decoder_task" in batch:
        for k, v in grouped_loss(token_loss, batch["decoder_task"], weights,
                                 lambda i: seqio_tasks.TASK_NAMES.get(i, str(i))).items():
            out[f"loss/task/{k}"] = v
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

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
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
