"""seqio's `inputs`/`targets` tasks as decoder-only training sequences (x-LLM / Alpaca's).

One sequence per example: BOS (where the model has one), the prompt, the response and its
EOS; the network reads it shifted by one, so `decoder_input_tokens` is the sequence
without its last token and `decoder_target_tokens` without its first. The loss covers the
response only unless `loss_on_prompt` (x-LLM masks the prompt with -100 labels; HF's
`train_on_inputs` is the option). The prompt's trailing EOS (the tasks' `inputs` feature
adds one, for an encoder) is dropped, as Alpaca's template runs straight into the
response; `DecoderOnly.model_prompts` shapes prompts the same way when scoring and
decoding. Packing (seqio's packer) keeps examples apart with segment ids and positions
that restart per example; the per-token language and task ids sit on the response.

Written here because seqio's PrefixLMFeatureConverter always starts from a fixed token (0)
and keeps the prompt's EOS, where LLaMA and BLOOM start from their BOS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import seqio
import tensorflow as tf

from mtf.model import DECODER_ONLY as SPEC

_IDS = seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)


class DecoderOnlyFeatureConverter(seqio.FeatureConverter):
    """Task features `inputs`, `targets` (+ the per-token ids named in `ids`: task feature
    -> batch feature) -> DECODER_ONLY's batch, `inputs` + `targets` long."""

    def __init__(self, pack: bool, bos_id: int | None, eos_id: int,
                 loss_on_prompt: bool = False, ids: Mapping[str, str] | None = None) -> None:
        self._bos, self._eos, self._loss_on_prompt = bos_id, eos_id, loss_on_prompt
        self._ids = dict(ids or {})
        self.TASK_FEATURES = {"inputs": _IDS, "targets": _IDS, **{k: _IDS for k in self._ids}}
        self.MODEL_FEATURES = {name: _IDS for name in self._sequence_features}
        self.PACKING_FEATURE_DTYPES = {name: tf.int32 for name in SPEC.packing}
        super().__init__(pack=pack)

    @property
    def _sequence_features(self) -> Sequence[str]:
        return (*SPEC.tokens, SPEC.loss_weights, *self._ids.values())

    def _sequence(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        prompt, response = features["inputs"], features["targets"]
        ends_in_eos = tf.reduce_any(tf.equal(prompt[-1:], self._eos))  # False when empty
        prompt = tf.cond(ends_in_eos, lambda: prompt[:-1], lambda: prompt)
        if self._bos is not None:
            prompt = tf.concat([[self._bos], prompt], axis=0)
        sequence = tf.concat([prompt, response], axis=0)
        on_response = tf.concat([tf.zeros_like(prompt), tf.ones_like(response)], axis=0)
        weights = tf.ones_like(sequence) if self._loss_on_prompt else on_response
        # Weights and ids travel through the packer offset by 1: seqio's packer takes a
        # feature's zeros for padding and squeezes them out (its own converters derive
        # the weights after packing; these need the prompt's boundary, known only here).
        out = {SPEC.tokens[0]: sequence[:-1], SPEC.targets: sequence[1:],
               SPEC.loss_weights: weights[1:] + 1}
        for task_feature, batch_feature in self._ids.items():
            ids = features[task_feature]
            # the example's id over the prompt too when the prompt is trained on
            fill = (tf.fill(tf.shape(prompt), ids[0]) if self._loss_on_prompt
                    else tf.zeros_like(prompt))
            out[batch_feature] = tf.concat([fill, ids], axis=0)[1:] + 1
        return out

    def _unshift(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        out = dict(features)
        for name in (SPEC.loss_weights, *self._ids.values()):
            out[name] = tf.maximum(features[name] - 1, 0)  # padding (0) stays 0
        return out

    def _convert_features(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
                          ) -> tf.data.Dataset:
        length = self._length(task_feature_lengths)
        ds = ds.map(self._sequence, num_parallel_calls=tf.data.AUTOTUNE)
        ds = self._pack_or_pad(ds, {name: length for name in self._sequence_features})
        if not self.pack:
            return ds.map(self._unshift, num_parallel_calls=tf.data.AUTOTUNE)

        def name_packing(features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            out = {name: features[name] for name in self._sequence_features}
            segments, positions = SPEC.packing
            out[segments] = features[f"{SPEC.targets}_segment_ids"]
            out[positions] = features[f"{SPEC.targets}_positions"]
            return self._unshift(out)

        return ds.map(name_packing, num_parallel_calls=tf.data.AUTOTUNE)

    @staticmethod
    def _length(task_feature_lengths: Mapping[str, int]) -> int:
        return SPEC.length(SPEC.targets, task_feature_lengths)

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]
                                  ) -> dict[str, int]:
        length = self._length(task_feature_lengths)
        out = {name: length for name in self._sequence_features}
        if self.pack:
            out.update({name: length for name in self.PACKING_FEATURE_DTYPES})
        return out
