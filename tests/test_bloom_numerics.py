"""mtf's BLOOM network against Hugging Face's `BloomForCausalLM` (an independent
implementation, torch on the CPU), on random weights in float32, on odd shapes: 6 heads
(ALiBi's slopes beyond a power of two), a head size of 8, a vocabulary of 301."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import BloomConfig as HFBloomConfig
from transformers import BloomForCausalLM

from mtf.convert.hf_bloom import config_from_hf, load_hf_bloom, params_from_hf, params_to_hf
from mtf.model.bloom import Bloom
from mtf.model.params import scan_params

BOS, EOS = 1, 2
VOCAB = 301


def hf_model() -> BloomForCausalLM:
    torch.manual_seed(0)
    model = BloomForCausalLM(HFBloomConfig(vocab_size=VOCAB, hidden_size=48, n_head=6,
                                           n_layer=3, initializer_range=0.2,
                                           bos_token_id=BOS, eos_token_id=EOS, pad_token_id=0))
    with torch.no_grad():  # norm scales and biases away from 1 and 0, so a missing one shows
        for name, param in model.named_parameters():
            if "layernorm" in name or "ln_f" in name or name.endswith("bias"):
                param.add_(torch.rand_like(param) - 0.5)
    return model.eval()


def converted(model):
    config = config_from_hf(model.config.to_dict())
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return config, params_from_hf(tensors, config)


def hf_logits(model, tokens, mask=None) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens, dtype=torch.long),
                     attention_mask=None if mask is None else torch.tensor(mask)).logits.numpy()


def ours(config, params, tokens, **kwargs) -> np.ndarray:
    kwargs = {k: jnp.asarray(v) for k, v in kwargs.items()}
    return np.asarray(Bloom(config).apply({"params": params}, jnp.asarray(tokens), **kwargs))


@pytest.fixture(scope="module")
def bloom():
    model = hf_model()
    return (model, *converted(model))


def test_logits_match_hf_bloom_with_padding_and_packing(bloom):
    model, config, params = bloom
    rng = np.random.default_rng(0)
    lengths = [23, 17, 9]  # right padding: each row its own length
    mask = (np.arange(23)[None] < np.array(lengths)[:, None]).astype(np.int64)
    tokens = rng.integers(1, VOCAB, (3, 23)) * mask
    theirs = hf_logits(model, tokens, mask)
    mine = ours(config, params, tokens, segment_ids=mask.astype(np.int32))
    valid = mask.astype(bool)
    assert mine.shape == theirs.shape == (3, 23, VOCAB)
    assert np.abs(mine[valid] - theirs[valid]).max() < 1e-4
    assert np.abs(theirs[valid]).max() > 1.0
    # two examples in one row: segment ids, positions reset (ALiBi counts from each start)
    first, second = rng.integers(1, VOCAB, (1, 11)), rng.integers(1, VOCAB, (1, 8))
    packed = np.concatenate([first, second, np.zeros((1, 5), np.int64)], axis=1)
    segments = np.array([[1] * 11 + [2] * 8 + [0] * 5], np.int32)
    positions = np.array([list(range(11)) + list(range(8)) + [0] * 5], np.int32)
    mine = ours(config, params, packed, segment_ids=segments, positions=positions)
    np.testing.assert_allclose(mine[0, :11], hf_logits(model, first)[0], atol=1e-4)
    np.testing.assert_allclose(mine[0, 11:19], hf_logits(model, second)[0], atol=1e-4)
    # scanned layers: the same
    np.testing.assert_allclose(
        ours(config.replace(scan_layers=True), scan_params(params, config), first),
        ours(config, params, first), atol=1e-5)


def test_the_train_step_loss_is_hf_s_loss_on_the_response(bloom):
    from mtf import losses
    from mtf.model.family import family_of
    from mtf.step import LossConfig, gradients

    model, config, params = bloom
    sequences = np.random.default_rng(3).integers(1, VOCAB, (4, 15))
    labels = sequences.copy()
    for row, n in enumerate([4, 9, 2, 6]):
        labels[row, :n + 1] = -100
    with torch.no_grad():
        expected = float(model(input_ids=torch.tensor(sequences),
                               labels=torch.tensor(labels)).loss)
    weights = (labels[:, 1:] != -100).astype(np.int32)
    batch = {k: jnp.asarray(v, jnp.int32) for k, v in {
        "decoder_input_tokens": sequences[:, :-1], "decoder_target_tokens": sequences[:, 1:],
        "decoder_loss_weights": weights}.items()}
    for microbatches, chunks in ((1, 1), (2, 3)):
        loss = LossConfig(normalizing_factor=losses.TOKENS, z_loss=0.0, chunks=chunks)
        value, _, _ = gradients(params, batch, None, family_of(config), loss, microbatches)
        assert float(value) == pytest.approx(expected, rel=1e-5), (microbatches, chunks)


def test_scores_greedy_and_beams_on_the_cache_equal_hf(bloom):
    """Rank classification: HF's log-likelihood of each choice after BOS + prompt; greedy
    decoding from right-padded prompts of different lengths: `generate`'s tokens; beam
    search: HF's log-likelihoods of the beams it returns (the ALiBi positions in the cache
    and its reordering are right)."""
    from mtf.eval import decoding, scoring

    model, config, params = bloom
    rng = np.random.default_rng(5)
    texts = [rng.integers(3, VOCAB, n) for n in (7, 3, 11)]
    prompts = np.zeros((3, 12), np.int32)
    for i, text in enumerate(texts):
        prompts[i, :len(text)] = text
    prompts[1, 3] = EOS  # seqio's inputs end with EOS: dropped as training drops it

    def log_probs(sequence):
        with torch.no_grad():
            return torch.log_softmax(model(torch.tensor([sequence])).logits[0], -1).numpy()

    choices = [rng.integers(3, VOCAB, n) for n in (2, 4, 3)]
    targets = np.zeros((3, 5), np.int32)
    for i, choice in enumerate(choices):
        targets[i, :len(choice) + 1] = np.append(choice, EOS)
    sums, _ = scoring.score_rows(params, jnp.asarray(prompts), jnp.arange(3, dtype=jnp.int32),
                                 jnp.asarray(targets), config=config, chunks=1)
    for i, (text, choice) in enumerate(zip(texts, choices, strict=True)):
        answer = list(choice) + [EOS]
        lp = log_probs([BOS, *text, *answer])
        expected = sum(lp[len(text) + j, t] for j, t in enumerate(answer))
        assert float(sums[i]) == pytest.approx(expected, abs=1e-4), i

    greedy = decoding.decode_batch(params, jnp.asarray(prompts), jax.random.key(0),
                                   config=config,
                                   decode=decoding.DecodeConfig(max_decode_length=6))[0]
    beams, _, lls = decoding.decode_batch(params, jnp.asarray(prompts), jax.random.key(0),
                                          config=config, decode=decoding.DecodeConfig(
                                              max_decode_length=5, beam_size=3))
    for i, text in enumerate(texts):
        start = [BOS, *text]
        with torch.no_grad():
            out = model.generate(torch.tensor([start]), max_new_tokens=6, do_sample=False,
                                 eos_token_id=EOS, pad_token_id=0, bad_words_ids=[[0]])
        theirs = decoding.until_eos(out[0, len(start):].numpy(), EOS)
        assert decoding.until_eos(np.asarray(greedy[i, 0]), EOS) == theirs, i
        for beam, ll in zip(np.asarray(beams[i]), np.asarray(lls[i]), strict=True):
            generated = decoding.until_eos(beam, EOS)
            generated += [EOS] if len(generated) < 5 else []
            lp = log_probs(start + generated)
            expected = sum(float(lp[len(start) - 1 + j, t]) for j, t in enumerate(generated))
            assert ll == pytest.approx(expected, abs=1e-3), (i, generated)


def test_hf_folders_load_and_export_exactly(tmp_path, bloom):
    """A sharded safetensors folder from save_pretrained loads to the converted tree;
    exported back through `mtf.convert`'s writer, transformers loads the same model."""
    from mtf.convert.hf_models import load_hf_model, save_hf_model

    model, config, params = bloom
    model.save_pretrained(tmp_path / "hf", max_shard_size="30KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    loaded_config, loaded = load_hf_model(tmp_path / "hf")
    assert loaded_config == config
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    save_hf_model(config, params, tmp_path / "out", max_shard_bytes=30_000)
    again = BloomForCausalLM.from_pretrained(tmp_path / "out").eval()
    tokens = np.random.default_rng(6).integers(1, VOCAB, (2, 9))
    np.testing.assert_array_equal(hf_logits(again, tokens), hf_logits(model, tokens))
    exported = params_to_hf(params, config)
    state = {k: v.numpy() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert set(exported) == set(state)
    for name, value in state.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_hub_checkpoints_without_the_transformer_prefix_load(tmp_path, bloom):
    """bigscience's BLOOM checkpoints were saved from `BloomModel` (names without
    `transformer.`): they load to the same tree."""
    from safetensors.numpy import save_file

    model, config, params = bloom
    model.config.save_pretrained(tmp_path)
    state = {k.removeprefix("transformer."): v.numpy() for k, v in model.state_dict().items()
             if k != "lm_head.weight"}
    save_file(state, str(tmp_path / "model.safetensors"))
    _, loaded = load_hf_bloom(tmp_path)
    jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_lora_on_bloom_starts_as_the_base_and_trains_the_adapters_alone(bloom):
    from mtf.model import LoraConfig, family_of, lora
    from mtf.model.params import init_params
    from mtf.step import LossConfig, gradients

    _, config, base = bloom
    adapted = config.replace(lora=LoraConfig(rank=4, alpha=8.0))
    _, fresh = lora.split(init_params(adapted, jax.random.key(1)))
    assert set(lora.targeted(adapted)) == {
        f"decoder/layers_{i}/{m}/{k}/kernel" for i in range(3)
        for m, k in [("attention", "query"), ("attention", "key"), ("attention", "value"),
                     ("attention", "out"), ("mlp", "wi"), ("mlp", "wo")]}
    tokens = np.random.default_rng(7).integers(1, VOCAB, (2, 9))
    np.testing.assert_array_equal(ours(adapted, lora.join(base, fresh), tokens),
                                  ours(config, base, tokens))
    trained = jax.tree.map(lambda x: x + 0.05, fresh)
    batch = {k: jnp.asarray(v, jnp.int32) for k, v in {
        "decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
        "decoder_loss_weights": np.ones((2, 8))}.items()}
    one = gradients(trained, batch, None, family_of(adapted), LossConfig(z_loss=0.0), 1, base)
    assert jax.tree.structure(one[1]) == jax.tree.structure(fresh)
    merged = lora.merge(lora.join(base, trained), adapted)
    np.testing.assert_allclose(ours(config, merged, tokens),
                               ours(adapted, lora.join(base, trained), tokens), atol=1e-4)


def test_lora_adapters_go_to_and_from_hf_peft_through_the_fused_query_key_value(
        tmp_path, bloom):
    """mtf's query/key/value adapters are written as one rank-3r PEFT adapter of the fused
    query_key_value (rank_pattern / alpha_pattern) that `peft.PeftModel` on BloomForCausalLM
    runs to mtf's logits; PEFT's own adapters (its default target, query_key_value, and the
    MLP) read back to PEFT's logits; differing scales are refused by name."""
    import copy

    import peft as hf_peft

    from mtf.convert import peft
    from mtf.convert.errors import CheckpointError
    from mtf.model import LoraConfig, lora
    from mtf.model.params import init_params

    model, config, base = bloom
    adapted = config.replace(lora=LoraConfig(rank=4, alpha=8.0,
                                             targets=r"/(query|value|wo)/kernel$"))
    rng = np.random.default_rng(8)
    _, fresh = lora.split(init_params(adapted, jax.random.key(1)))
    trained = jax.tree.map(lambda x: rng.normal(0, 0.1, x.shape).astype(np.float32), fresh)
    peft.save(tmp_path / "adapter", adapted, trained, "tiny-bloom")
    written = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert written["rank_pattern"] == {"query_key_value": 12}
    assert written["alpha_pattern"] == {"query_key_value": 24.0}
    tokens = np.random.default_rng(9).integers(1, VOCAB, (2, 9))
    mine = ours(adapted, lora.join(base, trained), tokens)
    reference = hf_peft.PeftModel.from_pretrained(copy.deepcopy(model),
                                                  tmp_path / "adapter").eval()
    np.testing.assert_allclose(hf_logits(reference, tokens), mine, atol=1e-4)
    # back in mtf: rank 12 everywhere (the MLP's rank-4 adapter padded with zeros)
    loaded_config, loaded = peft.load(tmp_path / "adapter", config)
    assert (loaded_config.lora.rank, loaded_config.lora.alpha) == (12, 24.0)
    np.testing.assert_allclose(ours(loaded_config, lora.join(base, loaded), tokens), mine,
                               atol=1e-5)

    theirs = hf_peft.get_peft_model(copy.deepcopy(model), hf_peft.LoraConfig(
        r=3, lora_alpha=6, target_modules=["query_key_value", "dense_4h_to_h"],
        init_lora_weights=False, task_type="CAUSAL_LM")).eval()
    theirs.save_pretrained(tmp_path / "theirs")
    their_config, their_adapters = peft.load(tmp_path / "theirs", config)
    assert their_config.lora.rank == 3
    np.testing.assert_allclose(
        ours(their_config, lora.join(base, their_adapters), tokens),
        hf_logits(theirs, tokens), atol=1e-4)
    settings = tmp_path / "theirs" / "adapter_config.json"
    changed = json.loads(settings.read_text()) | {"alpha_pattern": {"dense_4h_to_h": 9}}
    settings.write_text(json.dumps(changed))
    with pytest.raises(CheckpointError, match="one scale for every module"):
        peft.load(tmp_path / "theirs", config)
