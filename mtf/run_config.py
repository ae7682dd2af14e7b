"""A training run's configuration, typed: what gin/runs/finetune.gin binds, checked once.

`RunConfig` gathers the small frozen configs of each concern (the model's config:
`T5Config`, `LlamaConfig` or `BloomConfig`; the data's `DataConfig`, the loss's
`LossConfig`, `OptimizerConfig`, `CheckpointConfig`, `EvalConfig`) with the run's own
settings. Train, plan and bench read the same object (`from_gin`), so what `mtf.plan`
compiles is what `mtf.launch` would train. The gin macros (T5X's names: TRAIN_STEPS,
BATCH_SIZE, LEARNING_RATE, ...) are bound to its fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import gin
import optax
import seqio

from mtf import checkpoint, optim, step
from mtf.data import batches
from mtf.errors import SettingError
from mtf.model import ModelConfig, family_of


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """T5X's optimizer settings (OPTIMIZER, LEARNING_RATE, LEARNING_RATE_SCHEDULE, ...)."""

    name: str = "adafactor"
    learning_rate: float = 1e-3
    schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int = 0
    grad_clip_norm: float | None = None
    weight_decay: float = 0.0

    def build(self) -> tuple[optax.Schedule, optax.GradientTransformation]:
        """(the learning-rate schedule, the optax optimizer that follows it)."""
        schedule = optim.make_schedule(self.schedule, self.learning_rate, self.warmup_steps,
                                       self.decay_steps)
        return schedule, optim.make_optimizer(self.name, schedule, self.grad_clip_norm,
                                              self.weight_decay)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What to evaluate on and how (gin: gin/runs/eval.gin and EVAL_* macros)."""

    mixture_or_task_name: str | None = None
    task_feature_lengths: Mapping[str, int] | None = None
    batch_size: int = 32
    max_examples_per_task: int | None = None  # first N per dataset/language/template
    length_normalized: bool = False  # rank by mean log-probability per token instead
    metrics: tuple[str, ...] | None = None  # None: each task's own metric functions
    max_decode_length: int | None = None  # None: the targets length
    beam_size: int = 1
    alpha: float = 0.6
    split: str = "validation"
    # In training: an EVAL_MIXTURE that is not registered (its data not set up) skips the
    # evaluation with a note instead of stopping the run (the mt0 recipes' mt0_heldout).
    optional: bool = False

    def registered(self) -> bool:
        name = self.mixture_or_task_name
        return bool(name) and name in (seqio.TaskRegistry.names()
                                       | seqio.MixtureRegistry.names())


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """One training run: the model trained on `data` until step `train_steps` (the same
    target when it resumes) in MODEL_DIR, on a `mesh_shape` (data, fsdp, model) mesh."""

    model_config: ModelConfig
    model_dir: str
    train_steps: int
    batch_size: int
    data: batches.DataConfig = batches.DataConfig()
    mesh_shape: tuple[int, int, int] = (-1, 1, 1)
    optimizer: OptimizerConfig = OptimizerConfig()
    loss: step.LossConfig = step.LossConfig()
    num_microbatches: int = 1
    initial_checkpoint_path: str | None = None
    checkpoint_config: checkpoint.CheckpointConfig = checkpoint.CheckpointConfig()
    log_period: int = 10
    seed: int = 0
    peak_flops_per_device: float | None = None
    eval_period: int | None = None
    eval_config: EvalConfig | None = None
    eval_steps: int | None = None
    validation_mixture: str | None = None  # the validation loss's (None: the training one)
    dropout_rng: str = "threefry2x32"

    def __post_init__(self) -> None:
        if not self.model_dir:
            raise SettingError("MODEL_DIR is empty; bind it, e.g. --gin.MODEL_DIR=/tmp/mt0_run")
        if self.train_steps <= 0:
            raise SettingError(f"TRAIN_STEPS={self.train_steps} must be positive")
        if self.batch_size <= 0:
            raise SettingError(f"BATCH_SIZE={self.batch_size} must be positive")
        if self.num_microbatches <= 0:
            raise SettingError(f"NUM_MICROBATCHES={self.num_microbatches} must be positive")
        if self.log_period <= 0:
            raise SettingError(f"LOG_PERIOD={self.log_period} must be positive")
        # the batches are the model family's: one sequence per example for a decoder-only
        # model, built with its BOS and EOS (every reader of `data` sees the same)
        ids = family_of(self.model_config).sequence_ids
        if self.data.decoder_only != ids:
            object.__setattr__(self, "data", dataclasses.replace(self.data, decoder_only=ids))

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)

    @property
    def layer_stacks(self) -> dict[str, int]:
        """The model's stacks of identical layers and their depths (mT5: encoder, decoder)."""
        return family_of(self.model_config).layer_stacks

    def at_depths(self, depths: dict[str, int]) -> RunConfig:
        """The same run with the model's stacks at these depths (the planner's probes)."""
        return self.replace(model_config=family_of(self.model_config).with_layers(depths))


def from_gin() -> RunConfig:
    """The run the parsed gin files describe (gin/runs/finetune.gin binds every field)."""
    return gin.get_configurable(RunConfig)()
