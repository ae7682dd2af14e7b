"""`python -m mtf.vocab report|extend`: new pieces for a language the vocabulary splits
badly, every old id kept, the model's rows grown so old text gives the same logits, and
the extended checkpoint read by training, inference and the export to Hugging Face."""

import json
import subprocess
import sys
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from mtf import infer, vocab
from mtf.convert import native
from mtf.convert.errors import CheckpointError
from mtf.convert.loading import load_checkpoint, load_initial_params
from mtf.data import cldr
from mtf.errors import SettingError
from mtf.model import BloomConfig, LlamaConfig, T5Config, Transformer, init_params
from mtf.vocabulary import embeddings, fertility, pieces
from tasks import mini_xp3, vocabularies
from tests import train_helpers

BASE = str(mini_xp3.VOCABULARY_PATH)  # 4096 pieces; + 100 sentinels = 4196 ids; 4224 rows
LANGUAGE = "gu"  # Gujarati script: about one piece per character in the embedded vocabulary
TINY = T5Config(vocab_size=4224, emb_dim=32, num_heads=2, num_encoder_layers=1,
                num_decoder_layers=1, head_dim=16, mlp_dim=64,
                mlp_activations=("gelu", "linear"), logits_via_embedding=False)


def corpus_split(language=LANGUAGE):
    """CLDR's names in the language: nine in ten to train pieces on, the rest to measure."""
    names = cldr.corpus(language)
    held = [t for t in names if zlib.crc32(t.encode()) % 10 == 0]
    return [t for t in names if t not in held], held


@pytest.fixture(scope="module")
def extension():
    train, _ = corpus_split()
    with open(BASE, "rb") as f:
        return pieces.extend(f.read(), train, 1000)


def test_extension_keeps_every_id_and_cuts_pieces_per_character_by_30_percent(
        extension, tmp_path):
    base = pieces.load(open(BASE, "rb").read())
    extended = pieces.load(extension.model)
    assert extension.first_new_id == 4196 and len(extension.added) > 500
    assert [p.piece for p in extended.pieces[:4096]] == [p.piece for p in base.pieces]
    assert [p.score for p in extended.pieces[:4096]] == [p.score for p in base.pieces]
    # the sentinels exactly where seqio appends them to the base model
    seqio_vocab = seqio.SentencePieceVocabulary(BASE, extra_ids=100)
    path = tmp_path / "extended.model"
    path.write_bytes(extension.model)
    ours = vocabularies.mt5(str(path))
    assert ours.vocab_size == extension.size == 4196 + len(extension.added)
    for i in (4096, 4150, 4195):
        assert ours.tokenizer.IdToPiece(i) == seqio_vocab.tokenizer.IdToPiece(i)
    assert ours.encode("<extra_id_0> a") == seqio_vocab.encode("<extra_id_0> a")
    assert ours.encode("Translate dog into Swahili.") == seqio_vocab.encode(
        "Translate dog into Swahili.")
    assert all(i >= 4196 for i in ours.encode(extension.added[0].replace("▁", " ")))
    assert ours.decode(ours.encode("ગુજરાતી ભાષા")) == "ગુજરાતી ભાષા"
    # measured on names the pieces were not trained on
    _, held = corpus_split()
    before = fertility.fertility(fertility.Tokenizer(BASE), held)
    after = fertility.fertility(fertility.Tokenizer(str(path)), held)
    assert after.per_character <= 0.7 * before.per_character, (before, after)
    assert after.per_word < before.per_word and before.characters == after.characters


def test_report_compares_vocabularies_per_language(tmp_path, capsys, extension):
    (tmp_path / "extended.model").write_bytes(extension.model)
    for language in ("gu", "sw"):
        (tmp_path / f"{language}.txt").write_text("\n".join(cldr.corpus(language)))
    assert vocab.main(["report", "--corpus", str(tmp_path / "gu.txt"),
                       f"sw={tmp_path / 'sw.txt'}", "--vocabulary", BASE,
                       "--vocabulary", str(tmp_path / "extended.model")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "mini_xp3.model tok/char" in lines[0] and "extended.model tok/char" in lines[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in lines[2:]}
    gu, sw = rows["gu"], rows["sw"]
    assert float(gu[5]) < 0.7 * float(gu[1])  # tok/char, extended vs base
    assert float(sw[5]) <= float(sw[1])
    assert vocab.main(["report", "--corpus", str(tmp_path / "missing.txt"),
                       "--vocabulary", BASE]) == 1
    assert "--corpus" in capsys.readouterr().err


def test_new_rows_leave_the_old_logits_unchanged_and_start_from_their_pieces(extension):
    params = init_params(TINY, jax.random.key(0))
    with open(BASE, "rb") as f:
        rows = pieces.base_ids(f.read(), extension.added)
    config, grown = embeddings.grow(TINY, params, extension.first_new_id, rows)
    assert config.vocab_size % 128 == 0 and config.vocab_size >= extension.size
    embedding = np.asarray(grown["token_embedder"]["embedding"])
    logits_kernel = np.asarray(grown["decoder"]["logits_dense"]["kernel"])
    assert embedding.shape == (config.vocab_size, 32)
    assert logits_kernel.shape == (32, config.vocab_size)
    for k in (0, len(rows) // 2, len(rows) - 1):
        np.testing.assert_allclose(
            embedding[4196 + k], np.asarray(params["token_embedder"]["embedding"])[rows[k]]
            .mean(0), rtol=1e-6)
        np.testing.assert_allclose(
            logits_kernel[:, 4196 + k],
            np.asarray(params["decoder"]["logits_dense"]["kernel"])[:, rows[k]].mean(1),
            rtol=1e-6)
    # every parameter without a vocabulary axis is the same array
    flat = jax.tree_util.tree_leaves_with_path(params)
    for path, value in flat:
        names = [getattr(p, "key", None) for p in path]
        if "token_embedder" in names or "logits_dense" in names:
            continue
        node = grown
        for n in names:
            node = node[n]
        np.testing.assert_array_equal(node, value)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(3, 4096, (2, 12)), jnp.int32)
    targets = jnp.asarray(rng.integers(3, 4096, (2, 7)), jnp.int32)
    decoder_inputs = jnp.pad(targets[:, :-1], ((0, 0), (1, 0)))

    def logits(model_config, p):
        return Transformer(model_config).apply(
            {"params": p}, encoder_input_tokens=tokens, decoder_input_tokens=decoder_inputs,
            decoder_target_tokens=targets, enable_dropout=False)

    old, new = np.asarray(logits(TINY, params)), np.asarray(logits(config, grown))
    np.testing.assert_array_equal(new[..., :4196], old[..., :4196])


@pytest.mark.parametrize("config", [
    LlamaConfig(vocab_size=256, emb_dim=16, num_heads=2, num_kv_heads=1, head_dim=8,
                mlp_dim=32, num_layers=1, bos_token_id=None, eos_token_id=1),
    BloomConfig(vocab_size=256, emb_dim=16, num_heads=2, num_layers=1)],
    ids=["llama-untied", "bloom-tied"])
def test_decoder_only_families_grow_every_vocabulary_matrix(config):
    params = init_params(config, jax.random.key(0))
    grown_config, grown = embeddings.grow(config, params, 256, [[5, 6], [7]])
    assert grown_config.vocab_size == 384
    shapes = {jax.tree_util.keystr(p): v.shape
              for p, v in jax.tree_util.tree_leaves_with_path(grown)}
    before = {jax.tree_util.keystr(p): v.shape
              for p, v in jax.tree_util.tree_leaves_with_path(params)}
    changed = {k for k in shapes if shapes[k] != before[k]}
    assert changed and all(384 in shapes[k] for k in changed)
    assert len(changed) == (2 if isinstance(config, LlamaConfig) else 1)


@pytest.mark.slow
def test_extend_writes_a_checkpoint_that_training_and_the_hf_export_read(tmp_path, capsys):
    """The command end to end: extend a tiny mT5 checkpoint for Gujarati, generate from it,
    train on it (one step, the tasks read with its vocabulary), export it to Hugging Face
    and tokenise Gujarati there as mtf does."""
    base_dir, extended = tmp_path / "base", tmp_path / "extended"
    native.save_params(base_dir, TINY, init_params(TINY, jax.random.key(1)), BASE)
    train, _ = corpus_split()
    (tmp_path / "gu.txt").write_text("\n".join(train))
    assert vocab.main(["extend", "--checkpoint", str(base_dir), "--corpus",
                       str(tmp_path / "gu.txt"), "--new_pieces", "1000", "--output",
                       str(extended)]) == 0
    out = capsys.readouterr().out
    assert "base tok/char" in out and "extended tok/char" in out and f"wrote {extended}" in out
    config, params = native.load_params(extended)
    assert config.vocab_size % 128 == 0 and config.vocab_size > 4224
    # a gin model of the old size is refused, naming the size to bind
    with pytest.raises(CheckpointError, match=f"bind NUM_EMBEDDINGS={config.vocab_size}"):
        load_initial_params(str(extended), TINY)
    # inference reads the checkpoint's own vocabulary
    assert infer.main(["generate", "--checkpoint", str(extended), "--max_decode_length",
                       "4", "ગુજરાતી ભાષા"]) == 0
    capsys.readouterr()
    vocabulary = str(extended / "vocabulary.model")
    gin = [f"--gin.{k}={v}" for k, v in {
        "NUM_EMBEDDINGS": config.vocab_size, "INITIAL_CHECKPOINT_PATH": f"'{extended}'",
        "MIXTURE_OR_TASK_NAME": "'mini_xp3_gu'", "TRAIN_STEPS": 1, "BATCH_SIZE": 4,
        "TASK_FEATURE_LENGTHS": "{'inputs': 32, 'targets': 16}", "EVAL_PERIOD": "None",
        "CHECKPOINT_PERIOD": 1}.items()]
    model_args = ["--gin.model.T5Config.emb_dim=32", "--gin.model.T5Config.num_heads=2",
                  "--gin.model.T5Config.head_dim=16", "--gin.model.T5Config.mlp_dim=64",
                  "--gin.model.T5Config.num_encoder_layers=1",
                  "--gin.model.T5Config.num_decoder_layers=1"]
    command = [sys.executable, "-m", "mtf.launch", "--gin_file=gin/mt0_tiny.gin",
               f"--gin.MODEL_DIR='{tmp_path / 'run'}'", *gin, *model_args]
    # the tasks read with the old vocabulary: refused, naming the one to use
    refused = subprocess.run(command, cwd=train_helpers.REPO, env=train_helpers.env(
        MTF_VOCABULARY=BASE), capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1 and f"MTF_VOCABULARY={vocabulary}" in refused.stderr, \
        refused.stderr[-2000:]
    done = subprocess.run(command, cwd=train_helpers.REPO, env=train_helpers.env(
        MTF_VOCABULARY=vocabulary), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    losses = train_helpers.last_losses(tmp_path / "run")
    assert list(losses) == [1] and np.isfinite(losses[1])
    # LoRA on it, the new rows trained beside the adapters: merged, only they have moved
    first = 4196
    lora_run = [*command[:4], "--gin_file=gin/runs/lora.gin",
                f"--gin.MODEL_DIR='{tmp_path / 'lora'}'", *command[5:],
                f"--gin.LORA_TRAINABLE_TOKENS=({first}, {config.vocab_size})",
                "--gin.TRAIN_STEPS=2", "--gin.LEARNING_RATE=0.01"]
    done = subprocess.run(lora_run, cwd=train_helpers.REPO, env=train_helpers.env(
        MTF_VOCABULARY=vocabulary), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    merged = load_checkpoint(str(extended), adapter=str(tmp_path / "lora")).params
    before, after = (np.asarray(p["token_embedder"]["embedding"]) for p in (params, merged))
    np.testing.assert_array_equal(after[:first], before[:first])
    assert np.abs(after[first:] - before[first:]).max() > 1e-4
    # export to HF: the new tokenizer goes with it, no second set of sentinels
    hf = tmp_path / "hf"
    exported = subprocess.run(
        [sys.executable, "-m", "mtf.convert", "--from", "mtf", "--to", "hf",
         str(tmp_path / "run"), str(hf)], cwd=train_helpers.REPO,
        env=train_helpers.env(), capture_output=True, text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert json.loads((hf / "tokenizer_config.json").read_text())["extra_ids"] == 0
    from transformers import AutoTokenizer

    text = "ગુજરાતી ભાષા"
    ours = vocabularies.mt5(vocabulary).encode(text)
    assert max(ours) >= 4196
    assert AutoTokenizer.from_pretrained(hf)(text).input_ids == ours + [1]  # + EOS


def test_a_model_without_sentinel_rows_gets_its_pieces_right_after_the_old_ones(tmp_path):
    """LLaMA's 32000 rows hold no T5 sentinels: the new pieces follow the old ids directly
    and seqio appends its sentinels after them, as it did after the old ones."""
    train, _ = corpus_split()
    with open(BASE, "rb") as f:
        extension = pieces.extend(f.read(), train, 200, sentinels=0)
    assert extension.first_new_id == 4096 and len(extension.added) == 200
    path = tmp_path / "extended.model"
    path.write_bytes(extension.model)
    vocabulary = vocabularies.mt5(str(path))
    assert vocabulary.vocab_size == 4096 + 200 + 100
    assert vocabulary.tokenizer.IdToPiece(4096) == extension.added[0]
    assert vocabulary.tokenizer.IdToPiece(4296) == "▁<extra_id_99>"


def test_lora_trains_the_new_rows_as_full_finetuning_would_and_merges_them():
    """LORA_TRAINABLE_TOKENS: the rows of the chosen ids in the embedding and the output
    projection train beside the adapters. They start as the base's rows (the adapted model
    is the base at step 0), their gradient is full finetuning's for those rows, every other
    row stays frozen, and merging writes them into the plain model."""
    from flax import traverse_util

    from mtf.model import LoraConfig, lora
    from mtf.model.family import family_of
    from mtf.step import LossConfig, gradients

    first, end = 4196, 4224
    adapted = TINY.replace(lora=LoraConfig(rank=2, alpha=4.0, trainable_tokens=(first, end)))
    base = init_params(TINY, jax.random.key(0))
    _, adapters = lora.split(init_params(adapted, jax.random.key(1)))
    flat = traverse_util.flatten_dict(adapters)
    rows = lora.token_rows_from(base, adapted)
    assert sorted("/".join(k) for k in rows) == [
        "decoder/logits_dense/kernel_token_rows", "token_embedder/embedding_token_rows"]
    flat.update(rows)
    adapters = traverse_util.unflatten_dict(flat)
    rng = np.random.default_rng(0)
    tokens = rng.integers(first - 20, end, (4, 12)).astype(np.int32)  # old and new ids
    targets = rng.integers(first - 20, end, (4, 7)).astype(np.int32)
    batch = {"encoder_input_tokens": jnp.asarray(tokens),
             "decoder_target_tokens": jnp.asarray(targets),
             "decoder_input_tokens": jnp.asarray(np.pad(targets[:, :-1], ((0, 0), (1, 0))))}
    loss = LossConfig(z_loss=0.0)
    full_loss, full_grads, _ = gradients(base, batch, None, family_of(TINY), loss)
    lora_loss, lora_grads, _ = gradients(adapters, batch, None, family_of(adapted), loss, 1,
                                         base)
    assert float(lora_loss) == pytest.approx(float(full_loss), rel=1e-6)  # B = 0: the base
    np.testing.assert_allclose(
        lora_grads["token_embedder"]["embedding_token_rows"],
        full_grads["token_embedder"]["embedding"][first:end], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        lora_grads["decoder"]["logits_dense"]["kernel_token_rows"],
        full_grads["decoder"]["logits_dense"]["kernel"][:, first:end], rtol=1e-5, atol=1e-7)
    assert np.abs(lora_grads["token_embedder"]["embedding_token_rows"]).max() > 0
    # merged: the trained rows written in, every other row the base's
    trained = jax.tree.map(lambda x: np.asarray(x) + 1.0, adapters)
    merged = lora.merge(lora.join(base, trained), adapted)
    embedding = np.asarray(merged["token_embedder"]["embedding"])
    np.testing.assert_array_equal(embedding[first:end],
                                  trained["token_embedder"]["embedding_token_rows"])
    np.testing.assert_array_equal(embedding[:first],
                                  np.asarray(base["token_embedder"]["embedding"])[:first])
    assert "embedding_token_rows" not in merged["token_embedder"]
    with pytest.raises(SettingError, match="LORA_TRAINABLE_TOKENS"):
        LoraConfig(trainable_tokens=(10, 5))
    with pytest.raises(SettingError, match="ends beyond the model's 4224 vocabulary rows"):
        init_params(TINY.replace(lora=LoraConfig(trainable_tokens=(4196, 5000))),
                    jax.random.key(0))
