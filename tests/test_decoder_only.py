"""Decoder-only training data and runs: the feature converter's sequences, their agreement
with how scoring reads a prompt, and the tiny x-LLaMA recipe through mtf.launch."""

import json
import re
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from mtf.data.decoder_only import DecoderOnlyFeatureConverter
from mtf.model import LlamaConfig, family_of, init_params
from tests.train_helpers import last_losses, metrics, run, start, wait_for_step

IDS = {"targets_language": "decoder_language", "targets_task": "decoder_task"}
EXAMPLES = [{"inputs": [7, 8, 5, 1], "targets": [3, 9, 1], "targets_language": [4, 4, 4],
             "targets_task": [2, 2, 2]},
            {"inputs": [8, 4, 9, 3, 1], "targets": [4, 1], "targets_language": [5, 5],
             "targets_task": [3, 3]}]
LENGTHS = {"inputs": 7, "targets": 8, "targets_language": 8, "targets_task": 8}


def converted(pack, bos, loss_on_prompt=False, examples=EXAMPLES, lengths=LENGTHS):
    ds = tf.data.Dataset.from_generator(
        lambda: iter(examples),
        output_signature={k: tf.TensorSpec([None], tf.int32) for k in examples[0]})
    converter = DecoderOnlyFeatureConverter(pack, bos, 1, loss_on_prompt, IDS)
    return [{k: v.tolist() for k, v in b.items()}
            for b in converter(ds, lengths).as_numpy_iterator()]


def test_one_sequence_per_example_with_bos_and_the_loss_on_the_response():
    """BOS + prompt (its EOS dropped) + response + EOS, read shifted by one; the weights
    and the language/task ids on the positions that predict the response."""
    first, second = converted(pack=False, bos=11)
    pad = [0] * 9
    assert first["decoder_input_tokens"] == [11, 7, 8, 5, 3, 9] + pad
    assert first["decoder_target_tokens"] == [7, 8, 5, 3, 9, 1] + pad
    assert first["decoder_loss_weights"] == [0, 0, 0, 1, 1, 1] + pad
    assert first["decoder_language"] == [0, 0, 0, 4, 4, 4] + pad
    assert second["decoder_task"] == [0, 0, 0, 0, 3, 3] + pad
    # no BOS (T5-style vocabularies): the first prompt token starts the sequence
    (first, _) = converted(pack=False, bos=None)
    assert first["decoder_input_tokens"][:5] == [7, 8, 5, 3, 9]
    assert first["decoder_loss_weights"][:5] == [0, 0, 1, 1, 1]
    # LOSS_ON_PROMPT: every real position, the example's ids over the prompt too
    (first, _) = converted(pack=False, bos=11, loss_on_prompt=True)
    assert first["decoder_loss_weights"] == [1] * 6 + pad
    assert first["decoder_language"] == [4] * 6 + pad


def test_packed_examples_keep_their_weights_ids_segments_and_positions():
    (packed,) = converted(pack=True, bos=11)
    assert packed["decoder_input_tokens"] == [11, 7, 8, 5, 3, 9, 11, 8, 4, 9, 3, 4, 0, 0, 0]
    assert packed["decoder_target_tokens"] == [7, 8, 5, 3, 9, 1, 8, 4, 9, 3, 4, 1, 0, 0, 0]
    assert packed["decoder_loss_weights"] == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0]
    assert packed["decoder_language"] == [0, 0, 0, 4, 4, 4, 0, 0, 0, 0, 5, 5, 0, 0, 0]
    assert packed["decoder_segment_ids"] == [1] * 6 + [2] * 6 + [0] * 3
    assert packed["decoder_positions"] == list(range(6)) * 2 + [0] * 3


@pytest.mark.parametrize("bos", [None, 1])
def test_training_sequences_and_rank_classification_read_a_prompt_alike(bos):
    """The loss the train step takes on a converted example equals minus the score that
    rank classification gives its response after its prompt (seqio's features: the
    prompt and the response each end with EOS): training and scoring see one sequence."""
    from mtf.eval import scoring

    eos = 2
    config = LlamaConfig(vocab_size=64, emb_dim=32, num_heads=4, num_kv_heads=2, head_dim=8,
                         mlp_dim=48, num_layers=2, bos_token_id=bos, eos_token_id=eos)
    params = init_params(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    prompt = list(rng.integers(3, 64, 6)) + [eos]
    response = list(rng.integers(3, 64, 4)) + [eos]
    example = [{"inputs": prompt, "targets": response}]
    ds = tf.data.Dataset.from_generator(
        lambda: iter(example), output_signature={k: tf.TensorSpec([None], tf.int32)
                                                 for k in example[0]})
    (batch,) = DecoderOnlyFeatureConverter(False, bos, eos)(
        ds, {"inputs": 8, "targets": 6}).as_numpy_iterator()
    family = family_of(config)
    hidden = family.hidden_states(params, {k: jnp.asarray(v[None]) for k, v in batch.items()},
                                  None)
    kernel, _, _ = family.output_projection(params)
    log_probs = jax.nn.log_softmax(hidden[0] @ kernel)
    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    trained = sum(float(log_probs[i, t]) for i, t in enumerate(targets) if weights[i])
    assert weights.sum() == len(response)
    prompts = np.zeros((1, 9), np.int32)
    prompts[0, :len(prompt)] = prompt
    row_targets = np.zeros((1, 6), np.int32)
    row_targets[0, :len(response)] = response
    sums, counts = scoring.score_rows(params, jnp.asarray(prompts), jnp.zeros(1, jnp.int32),
                                      jnp.asarray(row_targets), config=config, chunks=1)
    assert int(counts[0]) == len(response)
    assert float(sums[0]) == pytest.approx(trained, abs=1e-4)


@pytest.mark.slow
def test_the_tiny_x_llama_recipe_trains_evaluates_and_resumes_after_kill_9(tmp_path):
    """gin/xllama_tiny.gin through mtf.launch: the loss falls, per-language losses are
    logged, the held-out evaluation ranks answer choices through the decoder-only family,
    and a run killed with -9 resumes with the uninterrupted losses."""
    recipe = {"recipe": "gin/xllama_tiny.gin", "WARMUP_STEPS": "2"}
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    result = run(reference_dir, EVAL_PERIOD="20", EVAL_MIXTURE="'mini_xp3_heldout_ig'",
                 EVAL_MAX_EXAMPLES="4", **recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    reference = last_losses(reference_dir)
    assert sorted(reference) == list(range(1, 21))
    assert np.mean([reference[s] for s in range(16, 21)]) < reference[1] - 1.0, reference
    logged = [r for r in metrics(reference_dir) if "loss" in r]
    assert any(k.startswith("loss/") and k[5:] in ("sw", "yo", "hi") for r in logged
               for k in r)
    results = json.loads((reference_dir / "eval" / "step_20" / "results.json").read_text())
    assert results["results"]["term_to_english"]["ig"]["median"]["accuracy"] >= 0.0
    config = json.loads((reference_dir / "checkpoints" / "20" / "config" / "metadata")
                        .read_text())
    assert config["family"] == "llama" and config["num_kv_heads"] == 2

    process = start(killed_dir, **recipe)
    wait_for_step(killed_dir, 13, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    result = run(killed_dir, **recipe)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed_from = re.search(r"resumed from step (\d+)", result.stdout)
    assert resumed_from and int(resumed_from[1]) in (5, 10), result.stdout[-2000:]
    first = int(resumed_from[1]) + 1
    resumed = last_losses(killed_dir)
    np.testing.assert_allclose([resumed[s] for s in range(first, 21)],
                               [reference[s] for s in range(first, 21)], rtol=1e-6)



def _hf_llama_folder(path):
    """A random HF LLaMA over the embedded SentencePiece vocabulary (T5-style ids: no BOS,
    EOS 1), saved as transformers saves it, the tokenizer beside it."""
    import shutil

    import torch
    from transformers import LlamaConfig as HFLlamaConfig
    from transformers import LlamaForCausalLM

    from tasks import mini_xp3

    torch.manual_seed(0)
    model = LlamaForCausalLM(HFLlamaConfig(
        vocab_size=4224, hidden_size=48, intermediate_size=72, num_attention_heads=6,
        num_key_value_heads=2, head_dim=10, num_hidden_layers=2, bos_token_id=None,
        eos_token_id=1, pad_token_id=0, initializer_range=0.2,
        attn_implementation="eager")).eval()
    model.save_pretrained(path, max_shard_size="200KB")
    shutil.copy(mini_xp3.VOCABULARY_PATH, path / "tokenizer.model")
    return model, mini_xp3.vocabulary()


def test_an_hf_llama_folder_scores_generates_and_converts_through_the_clis(tmp_path, capsys):
    """`mtf.infer score|generate --checkpoint HF_DIR` reads the family from config.json and
    the tokenizer beside the weights, and answers as HF does (scores: log-likelihood of the
    choice and EOS after the prompt; greedy: `generate`'s tokens); `mtf.convert` takes the
    folder to an mtf directory and back to one that transformers loads with equal logits."""
    import torch
    from transformers import LlamaForCausalLM

    from mtf import infer
    from mtf.convert import __main__ as convert

    hf_dir = tmp_path / "hf"
    model, vocab = _hf_llama_folder(hf_dir)
    question = tmp_path / "q.jsonl"
    choices = ["mbwa", "paka", "ndege"]
    question.write_text(json.dumps({"inputs": "Translate dog into Swahili.",
                                    "answer_choices": choices}) + "\n")
    assert infer.main(["score", "--checkpoint", str(hf_dir), "--input_file", str(question),
                       "--batch_size", "1"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["scores"]
    prompt = list(vocab.encode("Translate dog into Swahili."))
    expected = []
    for choice in choices:
        answer = list(vocab.encode(choice)) + [1]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + answer])).logits[0]
        log_probs = torch.log_softmax(logits, -1)
        expected.append(sum(float(log_probs[len(prompt) - 1 + j, t])
                            for j, t in enumerate(answer)))
    np.testing.assert_allclose(scores, expected, atol=1e-4)

    assert infer.main(["generate", "--checkpoint", str(hf_dir), "--batch_size", "1",
                       "--max_decode_length", "6", "Translate dog into Swahili."]) == 0
    ours = capsys.readouterr().out.strip("\n").splitlines()[-1]
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                             eos_token_id=1, pad_token_id=0, bad_words_ids=[[0]])
    theirs = [t for t in out[0, len(prompt):].tolist()]
    theirs = theirs[:theirs.index(1)] if 1 in theirs else theirs
    assert ours == vocab.decode(theirs)

    mtf_dir, back = tmp_path / "mtf", tmp_path / "back"
    assert convert.main(["--from", "hf", "--to", "mtf", str(hf_dir), str(mtf_dir)]) == 0
    assert (mtf_dir / "vocabulary.model").exists()
    assert convert.main(["--from", "mtf", "--to", "hf", str(mtf_dir), str(back)]) == 0
    assert (back / "tokenizer.model").read_bytes() == (hf_dir / "tokenizer.model").read_bytes()
    again = LlamaForCausalLM.from_pretrained(back, attn_implementation="eager").eval()
    tokens = torch.tensor([prompt])
    with torch.no_grad():
        np.testing.assert_array_equal(again(tokens).logits.numpy(),
                                      model(tokens).logits.numpy())


def test_a_checkpoint_or_vocabulary_of_another_model_is_refused_naming_both(tmp_path):
    """A LLaMA folder as the initial checkpoint of an mT5 gin config, and a vocabulary
    with more ids than the embedding, are refused before anything is compiled."""
    from mtf.convert.errors import CheckpointError
    from mtf.convert.loading import load_initial_params
    from mtf.errors import SettingError
    from mtf.model import T5Config
    from mtf.model.family import check_vocabulary

    hf_dir = tmp_path / "hf"
    _hf_llama_folder(hf_dir)
    mt5 = T5Config(vocab_size=4224, emb_dim=32, num_heads=2, num_encoder_layers=1,
                   num_decoder_layers=1, head_dim=16, mlp_dim=64)
    with pytest.raises(CheckpointError, match=r"is a LLaMA: vocab 4224.*asks for mT5: vocab"):
        load_initial_params(str(hf_dir), mt5)
    llama = LlamaConfig(vocab_size=4000, emb_dim=32, num_heads=4, num_kv_heads=2, head_dim=8,
                        mlp_dim=48, num_layers=1, bos_token_id=None, eos_token_id=1)
    with pytest.raises(SettingError, match="has 4196 ids but the model's embedding has 4000"):
        check_vocabulary(llama, 4196, 1, "mini_xp3.model")
    with pytest.raises(SettingError, match="ends sequences with id 1 but the model's EOS is 2"):
        check_vocabulary(llama.replace(vocab_size=4224, eos_token_id=2), 4196, 1, "x.model")


def test_a_tokenizer_json_is_a_seqio_vocabulary_that_tasks_read(tmp_path):
    """A byte-level BPE tokenizer.json (BLOOM's and Llama 3's kind) as MTF_VOCABULARY:
    encode and decode in Python and inside tf.data agree, EOS is the file's </s>, and a
    seqio task tokenises its records with it into decoder-only batches."""
    import seqio
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from tasks import vocabularies

    bpe = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = ["Translate dog into Swahili.", "mbwa", "Translate cat into Yoruba.", "ológbò",
             "Habari ya asubuhi, rafiki yangu."] * 20
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.save(str(tmp_path / "tokenizer.json"))

    vocab = vocabularies.mt5(str(tmp_path / "tokenizer.json"))
    assert isinstance(vocab, vocabularies.TokenizerJsonVocabulary)
    assert (vocab.eos_id, vocab.vocab_size) == (2, bpe.get_vocab_size())
    text = "Translate ológbò into Swahili."
    ids = vocab.encode(text)
    assert vocab.decode(ids) == text and 1 not in ids and 2 not in ids
    assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == ids
    assert vocab.decode_tf(tf.constant(ids + [2])).numpy().decode() == text

    records = [{"inputs": "Translate dog into Swahili.", "targets": "mbwa"},
               {"inputs": "Translate cat into Yoruba.", "targets": "ológbò"}]
    task = seqio.Task(
        "bpe_vocabulary_check", seqio.FunctionDataSource(
            lambda split, shuffle_files: tf.data.Dataset.from_tensor_slices(
                {k: [r[k] for r in records] for k in records[0]}), splits=["train"]),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={k: seqio.Feature(vocab, add_eos=True) for k in ("inputs", "targets")})
    ds = task.get_dataset({"inputs": 16, "targets": 8}, "train", shuffle=False)
    batch = next(DecoderOnlyFeatureConverter(False, 1, 2)(
        ds, {"inputs": 16, "targets": 8}).as_numpy_iterator())
    prompt, answer = vocab.encode(records[0]["inputs"]), vocab.encode(records[0]["targets"])
    sequence = [1, *prompt, *answer, 2]
    assert batch["decoder_input_tokens"][:len(sequence) - 1].tolist() == sequence[:-1]
    assert batch["decoder_target_tokens"][:len(sequence) - 1].tolist() == sequence[1:]
    assert batch["decoder_loss_weights"].sum() == len(answer) + 1


@pytest.mark.slow
def test_the_tiny_bloomz_recipe_trains(tmp_path):
    """gin/bloomz_tiny.gin through mtf.launch: a BLOOM decoder on mini-xP3, the loss falls
    and the checkpoint records the family."""
    result = run(tmp_path, recipe="gin/bloomz_tiny.gin")
    assert result.returncode == 0, result.stderr[-3000:]
    losses = last_losses(tmp_path)
    assert sorted(losses) == list(range(1, 21))
    assert np.mean([losses[s] for s in range(16, 21)]) < losses[1] - 1.0, losses
    config = json.loads((tmp_path / "checkpoints" / "20" / "config" / "metadata").read_text())
    assert config["family"] == "bloom"


def test_loss_on_prompt_under_an_encoder_decoder_is_refused():
    """LOSS_ON_PROMPT under an encoder-decoder model names the fix."""
    from mtf.data import batches
    from mtf.errors import SettingError
    from mtf.model.features import SequenceIds

    with pytest.raises(SettingError, match="LOSS_ON_PROMPT is for decoder-only models"):
        batches.feature_converter(True, None, loss_on_prompt=True)
    assert isinstance(batches.feature_converter(True, SequenceIds(None, 1), True),
                      DecoderOnlyFeatureConverter)
