"""mtf's LLaMA network against Hugging Face's `LlamaForCausalLM` (an independent
implementation, torch on the CPU), on random weights in float32, on odd shapes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from mtf.convert.errors import CheckpointError
from mtf.convert.hf_llama import config_from_hf, params_from_hf
from mtf.errors import SettingError
from mtf.model.llama import Llama, LlamaConfig
from mtf.model.params import scan_params

BOS, EOS = 1, 2  # HF LlamaConfig's defaults, read into mtf's config

# 6 query heads over 2 key/value heads, a head size (10) that is neither 64 nor
# hidden / heads, a vocabulary that is not a multiple of 128
ODD = dict(vocab_size=301, hidden_size=48, intermediate_size=72, num_attention_heads=6,
           num_key_value_heads=2, head_dim=10, num_hidden_layers=3, rms_norm_eps=1e-5,
           rope_theta=500.0)
CONFIGS = {
    "odd": ODD,
    "tied_llama3_rope": dict(ODD, tie_word_embeddings=True, num_key_value_heads=3,
                             rope_theta=5000.0, rope_scaling={
                                 "rope_type": "llama3", "factor": 8.0,
                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 16}),
    "multi_head": dict(ODD, num_key_value_heads=6, head_dim=None),
}


def hf_model(name: str) -> LlamaForCausalLM:
    torch.manual_seed(len(name))
    settings = {k: v for k, v in CONFIGS[name].items() if v is not None}
    model = LlamaForCausalLM(HFLlamaConfig(**settings, initializer_range=0.2,
                                           attn_implementation="eager"))
    with torch.no_grad():  # norm scales away from 1, so that a missing one shows
        for module_name, param in model.named_parameters():
            if "norm" in module_name:
                param.add_(torch.rand_like(param) - 0.5)
    return model.eval()


def converted(model: LlamaForCausalLM):
    config = config_from_hf(model.config.to_dict())
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return config, params_from_hf(tensors, config)


def hf_logits(model, tokens, attention_mask=None) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                    attention_mask=None if attention_mask is None else torch.tensor(
                        attention_mask))
    return out.logits.numpy()


def ours(config, params, tokens, **kwargs) -> np.ndarray:
    kwargs = {k: jnp.asarray(v) for k, v in kwargs.items()}
    return np.asarray(Llama(config).apply({"params": params}, jnp.asarray(tokens), **kwargs))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_hf_llama_with_padding(name):
    model = hf_model(name)
    config, params = converted(model)
    vocab = CONFIGS[name]["vocab_size"]
    tokens = np.random.default_rng(0).integers(1, vocab, (3, 23))
    lengths = [23, 17, 9]  # right padding: each row's own length
    mask = (np.arange(23)[None] < np.array(lengths)[:, None]).astype(np.int64)
    tokens = tokens * mask
    theirs = hf_logits(model, tokens, mask)
    mine = ours(config, params, tokens, segment_ids=mask.astype(np.int32))
    assert mine.shape == theirs.shape == (3, 23, vocab)
    valid = mask.astype(bool)
    assert np.abs(mine[valid] - theirs[valid]).max() < 1e-4
    assert np.abs(theirs[valid]).max() > 1.0  # not a comparison of near-zeros


def test_packed_rows_equal_each_sequence_alone():
    """Two examples packed in a row (segment ids, positions reset) give the logits HF gives
    each example on its own."""
    model = hf_model("odd")
    config, params = converted(model)
    rng = np.random.default_rng(1)
    first, second = rng.integers(1, 301, (1, 11)), rng.integers(1, 301, (1, 8))
    packed = np.concatenate([first, second, np.zeros((1, 5), np.int64)], axis=1)
    segments = np.array([[1] * 11 + [2] * 8 + [0] * 5], np.int32)
    positions = np.array([list(range(11)) + list(range(8)) + [0] * 5], np.int32)
    mine = ours(config, params, packed, segment_ids=segments, positions=positions)
    np.testing.assert_allclose(mine[0, :11], hf_logits(model, first)[0], atol=1e-4)
    np.testing.assert_allclose(mine[0, 11:19], hf_logits(model, second)[0], atol=1e-4)


def test_scanned_layers_give_the_same_logits():
    model = hf_model("odd")
    config, params = converted(model)
    stacked = scan_params(params, config)
    assert set(stacked["decoder"]) == {"layers", "final_norm"}
    tokens = np.random.default_rng(2).integers(1, 301, (2, 7))
    np.testing.assert_allclose(ours(config.replace(scan_layers=True), stacked, tokens),
                               ours(config, params, tokens), atol=1e-5)


def test_configs_that_cannot_be_built_are_named():
    with pytest.raises(SettingError, match="num_kv_heads=4 must divide num_heads=6"):
        LlamaConfig(vocab_size=8, emb_dim=8, num_heads=6, num_kv_heads=4, head_dim=4,
                    mlp_dim=8, num_layers=1)
    with pytest.raises(CheckpointError, match="model_type 'bloom', not 'llama'"):
        config_from_hf({"model_type": "bloom"})
    with pytest.raises(CheckpointError, match="rope_scaling of type 'yarn'"):
        config_from_hf({**hf_model("odd").config.to_dict(),
                        "rope_parameters": {"rope_type": "yarn", "factor": 2.0}})


def test_configs_written_before_transformers_5_read_the_same():
    """Hub checkpoints of Llama 2/3 keep rope_theta and rope_scaling at the top level."""
    new = hf_model("tied_llama3_rope").config.to_dict()
    old = {k: v for k, v in new.items() if k != "rope_parameters"}
    old["rope_theta"] = new["rope_parameters"]["rope_theta"]
    old["rope_scaling"] = {k: v for k, v in new["rope_parameters"].items() if k != "rope_theta"}
    assert config_from_hf(old) == config_from_hf(new)
    assert config_from_hf(new).rope_theta == 5000.0 and config_from_hf(new).rope_scaling


def test_the_train_step_loss_is_hf_s_loss_on_the_response():
    """The shared train step (through the decoder-only family) gives HF's causal-LM loss
    with the prompt masked (labels -100), for any microbatch and chunk count."""
    from mtf import losses
    from mtf.model.family import family_of
    from mtf.step import LossConfig, gradients

    model = hf_model("odd")
    config, params = converted(model)
    rng = np.random.default_rng(3)
    sequences = rng.integers(1, 301, (4, 15))
    prompt = [4, 9, 2, 6]  # response from here on, each row its own prompt length
    labels = sequences.copy()
    for row, n in enumerate(prompt):
        labels[row, :n + 1] = -100  # HF shifts: label t is predicted from position t - 1
    with torch.no_grad():
        expected = float(model(input_ids=torch.tensor(sequences),
                                labels=torch.tensor(labels)).loss)
    weights = (labels[:, 1:] != -100).astype(np.int32)
    batch = {"decoder_input_tokens": sequences[:, :-1], "decoder_target_tokens": sequences[:, 1:],
             "decoder_loss_weights": weights}
    batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
    family = family_of(config)
    for microbatches, chunks in ((1, 1), (2, 3), (4, 2)):
        loss = LossConfig(normalizing_factor=losses.TOKENS, z_loss=0.0, chunks=chunks)
        value, grads, stats = gradients(params, batch, None, family, loss, microbatches)
        assert float(value) == pytest.approx(expected, rel=1e-5), (microbatches, chunks)
        assert float(stats["tokens"]) == weights.sum()
    assert set(grads["decoder"]) == {f"layers_{i}" for i in range(3)} | {"final_norm"}


def test_initialised_parameters_have_the_converted_shapes_and_logical_axes():
    import jax

    from mtf.model.params import abstract_params, init_params, logical_axes

    config, params = converted(hf_model("odd"))
    shapes = jax.tree.map(lambda x: x.shape, params)
    assert jax.tree.map(lambda x: x.shape, abstract_params(config)) == shapes
    fresh = init_params(config, jax.random.key(0))
    assert jax.tree.map(lambda x: x.shape, fresh) == shapes
    axes = logical_axes(config)
    assert tuple(axes["decoder"]["layers_0"]["attention"]["key"]["kernel"]) == (
        "embed", "joined_kv")
    assert tuple(axes["logits_kernel"]) == ("embed", "vocab")


def test_rank_classification_scores_are_hf_log_likelihoods():
    """`scoring.score_rows` through the decoder-only family: each choice's summed
    log-probability after its prompt, as HF computes it on BOS + prompt + choice alone; a
    prompt's trailing EOS (seqio's inputs end with one) is dropped, as in training."""
    from mtf.eval import scoring

    model = hf_model("tied_llama3_rope")
    config, params = converted(model)
    rng = np.random.default_rng(4)
    prompt_lengths, choices = [5, 9], [[3, 1], [2, 4, 1]]  # per prompt: each choice's length
    prompts = np.zeros((2, 12), np.int32)
    texts = [rng.integers(3, 301, n) for n in prompt_lengths]
    prompts[0, :5] = texts[0]
    prompts[1, :10] = np.append(texts[1], EOS)
    row_example, targets, expected = [], np.zeros((5, 6), np.int32), []
    for i, lengths in enumerate(choices):
        for n in lengths:
            choice = rng.integers(1, 301, n)
            targets[len(row_example), :n] = choice
            row_example.append(i)
            sequence = np.concatenate([[BOS], texts[i], choice])
            with torch.no_grad():
                logits = model(input_ids=torch.tensor(sequence[None])).logits[0]
            log_probs = torch.log_softmax(logits, -1).numpy()
            expected.append(sum(log_probs[len(texts[i]) + j, t]
                                for j, t in enumerate(choice)))
    sums, counts = scoring.score_rows(params, jnp.asarray(prompts),
                                      jnp.asarray(row_example, jnp.int32),
                                      jnp.asarray(targets), config=config, chunks=2)
    np.testing.assert_allclose(np.asarray(sums), expected, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(counts), [3, 1, 2, 4, 1])


def test_greedy_decoding_on_the_cache_equals_hf_generate_and_beams_score_truly():
    """Greedy tokens from prompts of different lengths (right-padded in one batch) equal
    HF `generate`'s for BOS + each prompt alone (stopping at the config's EOS, pad 0 never
    emitted); beam search's log-likelihoods are HF's for the sequences it returns (its
    reordered cache is right)."""
    from mtf.eval import decoding

    model = hf_model("odd")
    config, params = converted(model)
    rng = np.random.default_rng(5)
    texts = [np.concatenate([[BOS], rng.integers(3, 301, n)]) for n in (7, 3, 11)]
    prompts = np.zeros((3, 11), np.int32)
    for i, text in enumerate(texts):
        prompts[i, :len(text) - 1] = text[1:]  # BOS is the family's to add
    greedy = decoding.decode_batch(params, jnp.asarray(prompts), jax.random.key(0),
                                   config=config,
                                   decode=decoding.DecodeConfig(max_decode_length=6))[0]
    beams, _, lls = decoding.decode_batch(params, jnp.asarray(prompts), jax.random.key(0),
                                          config=config, decode=decoding.DecodeConfig(
                                              max_decode_length=5, beam_size=3))
    for i, text in enumerate(texts):
        with torch.no_grad():
            out = model.generate(torch.tensor(text[None]), max_new_tokens=6, do_sample=False,
                                 eos_token_id=EOS, pad_token_id=0, bad_words_ids=[[0]])
        theirs = decoding.until_eos(out[0, len(text):].numpy(), EOS)
        assert decoding.until_eos(np.asarray(greedy[i, 0]), EOS) == theirs, i
        for beam, ll in zip(np.asarray(beams[i]), np.asarray(lls[i]), strict=True):
            generated = decoding.until_eos(beam, EOS)
            generated += [EOS] if len(generated) < 5 else []
            sequence = np.concatenate([text, generated])
            with torch.no_grad():
                log_probs = torch.log_softmax(model(torch.tensor(sequence[None])).logits[0], -1)
            expected = sum(float(log_probs[len(text) - 1 + j, t])
                           for j, t in enumerate(generated))
            assert ll == pytest.approx(expected, abs=1e-3), (i, generated)


@pytest.mark.parametrize("name", ["odd", "tied_llama3_rope"])
def test_hf_folders_load_and_export_exactly(tmp_path, name):
    """A sharded safetensors folder from save_pretrained loads to the same tree; the tree
    exported back to HF's names gives a model with the same logits."""
    from mtf.convert.hf_llama import load_hf_llama, params_to_hf

    model = hf_model(name)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    config, params = load_hf_llama(tmp_path)
    expected_config, expected = converted(model)
    assert config == expected_config
    jax.tree.map(np.testing.assert_array_equal, params, expected)
    again = LlamaForCausalLM(model.config).eval()
    exported = {k: torch.from_numpy(v) for k, v in params_to_hf(params, config).items()}
    again.load_state_dict(exported, strict=not config.tie_word_embeddings)
    if config.tie_word_embeddings:
        again.tie_weights()
    tokens = np.random.default_rng(6).integers(1, 301, (2, 9))
    np.testing.assert_array_equal(hf_logits(again, tokens), hf_logits(model, tokens))


def test_a_folder_that_does_not_fit_its_config_is_named(tmp_path):
    from mtf.convert.hf_llama import load_hf_llama

    model = hf_model("odd")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 64}))
    with pytest.raises(CheckpointError, match="mlp.gate_proj.weight"):
        load_hf_llama(tmp_path)


def test_lora_on_llama_starts_as_the_base_trains_adapters_only_and_merges():
    """Adapters beside every attention and MLP kernel (PEFT's q/k/v/o/gate/up/down): zero
    B is the base exactly; the step differentiates the adapters alone, the same for any
    microbatch count; merged kernels give the adapted logits."""
    from mtf.model import LoraConfig, lora
    from mtf.model.family import family_of
    from mtf.model.params import init_params
    from mtf.step import LossConfig, gradients

    config, base = converted(hf_model("odd"))
    adapted = config.replace(lora=LoraConfig(rank=4, alpha=8.0))
    _, fresh = lora.split(init_params(adapted, jax.random.key(1)))
    assert set(lora.targeted(adapted)) == {
        f"decoder/layers_{i}/{m}/{k}/kernel" for i in range(3)
        for m, k in [("attention", "query"), ("attention", "key"), ("attention", "value"),
                     ("attention", "out"), ("mlp", "gate"), ("mlp", "up"), ("mlp", "down")]}
    tokens = np.random.default_rng(7).integers(1, 301, (2, 9))
    np.testing.assert_array_equal(ours(adapted, lora.join(base, fresh), tokens),
                                  ours(config, base, tokens))
    trained = jax.tree.map(lambda x: x + 0.05, fresh)  # B != 0
    batch = {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
             "decoder_loss_weights": np.ones((2, 8))}
    batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}
    family, loss = family_of(adapted), LossConfig(z_loss=0.0)
    one = gradients(trained, batch, None, family, loss, 1, base)
    two = gradients(trained, batch, None, family, loss, 2, base)
    assert jax.tree.structure(one[1]) == jax.tree.structure(fresh)
    np.testing.assert_allclose(float(two[0]), float(one[0]), rtol=1e-6)
    merged = lora.merge(lora.join(base, trained), adapted)
    np.testing.assert_allclose(ours(config, merged, tokens),
                               ours(adapted, lora.join(base, trained), tokens), atol=1e-4)


def test_lora_adapters_export_to_hf_peft_with_mtf_logits_and_import_back(tmp_path):
    """LLaMA adapters (random B, as after training) written as a PEFT folder load with
    `peft.PeftModel.from_pretrained(LlamaForCausalLM)` and give mtf's logits; PEFT's own
    adapters (trained by nobody: random init) read back to the same logits in mtf; a
    BLOOM base refuses them by name."""
    import peft as hf_peft

    from mtf.convert import peft
    from mtf.convert.errors import CheckpointError as ConvertError
    from mtf.model import BloomConfig, LoraConfig, lora
    from mtf.model.params import init_params

    model = hf_model("odd")
    config, base = converted(model)
    adapted = config.replace(lora=LoraConfig(rank=4, alpha=8.0))
    rng = np.random.default_rng(8)
    _, fresh = lora.split(init_params(adapted, jax.random.key(1)))
    trained = jax.tree.map(lambda x: rng.normal(0, 0.1, x.shape).astype(np.float32), fresh)
    peft.save(tmp_path / "adapter", adapted, trained, "odd-llama")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())[
        "task_type"] == "CAUSAL_LM"
    tokens = np.random.default_rng(9).integers(1, 301, (2, 9))
    mine = ours(adapted, lora.join(base, trained), tokens)
    reference = hf_peft.PeftModel.from_pretrained(model, tmp_path / "adapter").eval()
    np.testing.assert_allclose(hf_logits(reference, tokens), mine, atol=1e-4)

    loaded_config, loaded = peft.load(tmp_path / "adapter", config)
    assert loaded_config.lora.rank == 4 and loaded_config.lora.alpha == 8.0
    jax.tree.map(np.testing.assert_array_equal, loaded, trained)
    theirs = hf_peft.get_peft_model(hf_model("odd"), hf_peft.LoraConfig(
        r=2, lora_alpha=6, target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False, task_type="CAUSAL_LM")).eval()
    theirs.save_pretrained(tmp_path / "theirs")
    their_config, their_adapters = peft.load(tmp_path / "theirs", config)
    np.testing.assert_allclose(
        ours(their_config, lora.join(base, their_adapters), tokens),
        hf_logits(theirs, tokens), atol=1e-4)
    bloom = BloomConfig(vocab_size=64, emb_dim=16, num_heads=2, num_layers=1)
    with pytest.raises(ConvertError, match="not a LoRA adapter of an attention or MLP layer"):
        peft.load(tmp_path / "theirs", bloom)
