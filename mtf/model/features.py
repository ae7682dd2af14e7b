"""The batch a model family trains on, named once.

The feature converters and the token cache's stream write these names, the step and the
compiled program read them, and observability, validation and bench count by them. A
second family (decoder-only) brings its own `BatchSpec` beside its network; nothing that
reads a batch spells a feature name itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """tokens: what the network reads; packing: what packing adds (segment ids, positions);
    targets / loss_weights / target_segments: what the loss reads (the segments normalise
    per packed example); language / task: the per-token ids that the
    per-language and per-task loss group by (not model inputs); encoder: the features as
    long as the inputs (the rest are as long as the targets)."""

    tokens: tuple[str, ...]
    packing: tuple[str, ...]
    targets: str
    loss_weights: str
    target_segments: str
    language: str
    task: str
    encoder: tuple[str, ...] = ()
    concatenated: bool = False

    @property
    def model_inputs(self) -> tuple[str, ...]:
        """Everything the network's `__call__` takes from a batch."""
        return self.tokens + self.packing

    def step_inputs(self, pack: bool) -> tuple[str, ...]:
        """The features the train step takes: segment ids and positions only when packed."""
        return self.tokens + (self.packing if pack else ()) + (self.loss_weights,)

    @property
    def ids(self) -> tuple[str, str]:
        return (self.language, self.task)

    def length(self, feature: str, lengths: Mapping[str, int]) -> int:
        """A feature's length from TASK_FEATURE_LENGTHS ({'inputs': .., 'targets': ..})."""
        if self.concatenated:
            return lengths["inputs"] + lengths["targets"]
        return lengths["inputs"] if feature in self.encoder else lengths["targets"]


ENCODER_DECODER = BatchSpec(
    tokens=("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens"),
    packing=("encoder_segment_ids", "decoder_segment_ids", "encoder_positions",
             "decoder_positions"),
    targets="decoder_target_tokens",
    loss_weights="decoder_loss_weights",
    target_segments="decoder_segment_ids",
    language="decoder_language",
    task="decoder_task",
    encoder=("encoder_input_tokens", "encoder_segment_ids", "encoder_positions"),
)

# T5X's DecoderOnlyModel names: one sequence, the prompt's targets weighted 0 by default
DECODER_ONLY = BatchSpec(
    tokens=("decoder_input_tokens", "decoder_target_tokens"),
    packing=("decoder_segment_ids", "decoder_positions"),
    targets="decoder_target_tokens",
    loss_weights="decoder_loss_weights",
    target_segments="decoder_segment_ids",
    language="decoder_language",
    task="decoder_task",
    concatenated=True,
)


@dataclasses.dataclass(frozen=True)
class SequenceIds:
    """What a decoder-only model's sequences begin and end with (its tokenizer's ids, HF's
    bos_token_id / eos_token_id): BOS first (None: no BOS, the prompt starts the
    sequence), EOS after the response."""

    bos_id: int | None
    eos_id: int
