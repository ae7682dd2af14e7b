"""Decoding against HF `generate` and against exhaustive search, on the same random weights."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import random_batch
from hf_reference import random_hf_mt5
from test_hf_numerics import CONFIGS

from mtf import partitioning
from mtf.convert import load_hf
from mtf.errors import SettingError
from mtf.eval import decoding
from mtf.model import T5Config, Transformer, init_params


@pytest.fixture(scope="module")
def mesh():
    return partitioning.make_mesh((-1, 1, 1), jax.devices()[:1])


def _hf_and_ours(tmp_path, name, seed):
    model = random_hf_mt5(seed=seed, **CONFIGS[name])
    model.save_pretrained(tmp_path / name)
    config, params = load_hf(tmp_path / name)
    return model, config, params


def _hf_greedy(model, inputs, length):
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor(inputs, dtype=torch.long),
                             attention_mask=torch.tensor(inputs > 0, dtype=torch.long),
                             max_new_tokens=length, do_sample=False, num_beams=1,
                             suppress_tokens=[0], decoder_start_token_id=0, eos_token_id=1,
                             pad_token_id=0, min_length=0,
                             use_cache=False)  # HF sizes its cache by the encoder depth
    out = out.numpy()[:, 1:]  # drop the start token
    return np.pad(out, ((0, 0), (0, length - out.shape[1])))


def _ends_after_eos(tokens):
    """Everything after the first EOS zeroed (HF pads finished rows with pad = 0 too)."""
    out = tokens.copy()
    for row in out:
        eos = np.flatnonzero(row == 1)
        if eos.size:
            row[eos[0] + 1:] = 0
    return out


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_greedy_equals_hf_generate_on_padded_batches(tmp_path, mesh, name):
    model, config, params = _hf_and_ours(tmp_path, name, seed=11)
    inputs = random_batch(np.random.default_rng(3), config.vocab_size, batch=4,
                          inputs=13)["encoder_input_tokens"]
    length = 12
    ours = decoding.Decoder(config, decoding.DecodeConfig(max_decode_length=length), mesh)(
        params, inputs)
    theirs = _hf_greedy(model, inputs, length)
    np.testing.assert_array_equal(_ends_after_eos(ours.tokens[:, 0]), theirs)
    beam1 = decoding.Decoder(config, decoding.DecodeConfig(max_decode_length=length, beam_size=1),
                           mesh)(params, inputs)
    np.testing.assert_array_equal(beam1.tokens, ours.tokens)
    top1 = decoding.Decoder(config, decoding.DecodeConfig(max_decode_length=length,
                                                      temperature=0.7, top_k=1), mesh)(
        params, inputs)
    np.testing.assert_array_equal(top1.tokens, ours.tokens)


def _log_likelihood(config, params, inputs, sequences):
    """Teacher-forced summed log-probabilities of each sequence (tokens then 0s)."""
    targets = np.asarray(sequences, np.int32)
    dec_in = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
    enc = np.repeat(inputs, len(targets), axis=0)
    logits = Transformer(config).apply(
        {"params": params}, jnp.asarray(enc), jnp.asarray(dec_in), jnp.asarray(targets),
        enable_dropout=False)
    logp = np.asarray(jax.nn.log_softmax(logits.astype(jnp.float32)))
    picked = np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return (picked * (targets > 0)).sum(-1)


def _every_hypothesis(vocab, length):
    """All outputs of at most `length` tokens: ending with EOS, or cut at `length`."""
    words = range(2, vocab)
    out = []
    for n in range(length):
        for body in itertools.product(words, repeat=n):
            out.append(list(body) + [1] + [0] * (length - n - 1))
    out += [list(body) for body in itertools.product(words, repeat=length)]
    return np.array(out, np.int32)


@pytest.mark.parametrize("alpha", [0.0, 0.8])
def test_wide_beam_finds_the_exhaustive_best_and_scores_are_log_likelihoods(mesh, alpha):
    config = T5Config(vocab_size=6, emb_dim=16, num_heads=2, head_dim=4, mlp_dim=24,
                      num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)
    params = init_params(config, jax.random.key(4))
    params = jax.tree.map(lambda x: x * 3.0, params)  # peaky distributions, so ties are rare
    length, beam = 4, 64  # 4 non-EOS words: 4**3 = 64 prefixes, so this beam is exact
    inputs = np.array([[3, 4, 5, 2, 1, 0]], np.int32)
    result = decoding.Decoder(config, decoding.DecodeConfig(max_decode_length=length,
                                                        beam_size=beam, alpha=alpha), mesh)(
        params, inputs)
    hypotheses = _every_hypothesis(config.vocab_size, length)
    lls = _log_likelihood(config, params, inputs, hypotheses)
    lengths = np.where((hypotheses == 1).any(-1), (hypotheses == 1).argmax(-1) + 1, length)
    scores = lls / ((5.0 + lengths) / 6.0) ** alpha
    best = hypotheses[np.argmax(scores)]
    np.testing.assert_array_equal(result.tokens[0, 0], best)
    np.testing.assert_allclose(result.scores[0, 0], scores.max(), rtol=1e-5)
    returned = result.tokens[0]
    np.testing.assert_allclose(result.log_likelihoods[0],
                               _log_likelihood(config, params, inputs, returned), rtol=1e-4,
                               atol=1e-4)
    assert np.all(np.diff(result.scores[0]) <= 1e-6)  # best first
    np.testing.assert_allclose(np.sort(scores)[::-1][:beam], result.scores[0], rtol=1e-4,
                               atol=1e-4)


def test_sampling_respects_top_k_and_top_p():
    logits = jnp.log(jnp.array([[0.05, 0.5, 0.2, 0.15, 0.1]] * 2000))
    keys = jax.random.split(jax.random.key(0), 2)
    top2 = jax.random.categorical(keys[0], decoding.filter_logits(logits, top_k=2))
    assert set(np.unique(top2)) == {1, 2}
    nucleus = jax.random.categorical(keys[1], decoding.filter_logits(logits, top_p=0.8))
    assert set(np.unique(nucleus)) == {1, 2, 3}  # 0.5 + 0.2 < 0.8 <= 0.5 + 0.2 + 0.15


def test_samples_stay_inside_top_k_of_the_model(tmp_path, mesh):
    model, config, params = _hf_and_ours(tmp_path, "odd", seed=2)
    inputs = random_batch(np.random.default_rng(5), config.vocab_size, batch=2,
                          inputs=9)["encoder_input_tokens"]
    cfg = decoding.DecodeConfig(max_decode_length=1, temperature=1.5, top_k=3, num_samples=64)
    out = decoding.Decoder(config, cfg, mesh)(params, inputs)
    with torch.no_grad():
        first = model(input_ids=torch.tensor(inputs, dtype=torch.long),
                      attention_mask=torch.tensor(inputs > 0, dtype=torch.long),
                      decoder_input_ids=torch.zeros((2, 1), dtype=torch.long)).logits[:, 0]
    first[:, 0] = -1e9
    allowed = torch.topk(first, 3).indices.numpy()
    for row in range(2):
        drawn = set(out.tokens[row, :, 0].tolist())
        assert drawn <= set(allowed[row].tolist()) and len(drawn) > 1


def test_bad_decode_settings_are_named():
    with pytest.raises(SettingError, match="temperature"):
        decoding.DecodeConfig(temperature=-1)
    with pytest.raises(SettingError, match="not both"):
        decoding.DecodeConfig(beam_size=4, temperature=0.5)
    with pytest.raises(SettingError, match="top_p"):
        decoding.DecodeConfig(top_p=0.0)


def _hf_choice_log_likelihood(model, prompt, choice):
    """HF MT5's summed log-probabilities of `choice` (EOS included) given `prompt`."""
    with torch.no_grad():
        labels = torch.tensor([choice], dtype=torch.long)
        logits = model(input_ids=torch.tensor([prompt], dtype=torch.long),
                       labels=labels).logits[0]
    return float(torch.log_softmax(logits.double(), -1).gather(1, labels.T).sum())


@pytest.mark.parametrize("length_normalized", [False, True])
def test_rank_classification_equals_hf_log_likelihoods(tmp_path, mesh, length_normalized):
    from mtf.eval import scoring

    model, config, params = _hf_and_ours(tmp_path, "odd", seed=8)
    rng = np.random.default_rng(0)

    def tokens(n):
        return [int(t) for t in rng.integers(2, config.vocab_size, n)] + [1]

    prompts = [tokens(n) for n in (5, 11, 3, 8, 9)]
    choices = [[tokens(n) for n in lengths] for lengths in
               ([1, 4], [2, 2, 6], [5, 1, 3, 2], [3], [7, 2])]
    scorer = scoring.Scorer(config, mesh, batch_size=2, input_length=12, target_length=8,
                          rows=5)
    scored = scorer.score(params, prompts, choices, length_normalized=length_normalized)
    for prompt, options, got, prediction in zip(prompts, choices, scored.scores,
                                                scored.predictions, strict=True):
        want = [_hf_choice_log_likelihood(model, prompt, c) / (len(c) if length_normalized
                                                                else 1) for c in options]
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
        assert prediction == int(np.argmax(want))
    with pytest.raises(SettingError, match="does not fit the length 8"):
        scorer.score(params, [prompts[0]], [[tokens(9)]])


def test_decoding_and_scoring_on_sharded_meshes_equal_one_device():
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("multidevice_decode_check.py")
    env = dict(os.environ, PYTHONPATH=str(script.parents[1]))
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
