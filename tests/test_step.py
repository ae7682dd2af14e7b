"""Loss, normalisation and microbatching: exact, and not a mean of per-microbatch means."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtf import losses
from mtf.model import T5Config, Transformer, init_params
from mtf.model.family import family_of
from mtf.optim import make_optimizer, make_schedule
from mtf.state import TrainState
from mtf.step import LossConfig, gradients, train_step

CONFIG = T5Config(vocab_size=50, emb_dim=16, num_heads=2, num_encoder_layers=1,
                  num_decoder_layers=1, head_dim=8, mlp_dim=32, dropout_rate=0.0)
MODES = [losses.TOKENS, losses.PER_SEQUENCE, 1000.0]


def uneven_batch(seed=0, batch=8, inputs=10, targets=12):
    """Rows with very different numbers of target tokens (0 .. 12: row 0 is all padding)."""
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, 50, (batch, inputs)).astype(np.int32)
    tgt = rng.integers(2, 50, (batch, targets)).astype(np.int32)
    lengths = [0, 12, 2, 11, 3, 10, 12, 5][:batch]
    for row, n in enumerate(lengths):
        tgt[row, n:] = 0
    dec = np.zeros_like(tgt)
    dec[:, 1:] = tgt[:, :-1]
    return {"encoder_input_tokens": jnp.asarray(enc), "decoder_input_tokens": jnp.asarray(dec),
            "decoder_target_tokens": jnp.asarray(tgt)}


@pytest.fixture(scope="module")
def params():
    return init_params(CONFIG, jax.random.key(0))


@pytest.mark.parametrize("mode", MODES)
def test_microbatches_give_the_one_batch_gradient(params, mode):
    loss = LossConfig(normalizing_factor=mode, z_loss=1e-4)
    batch = uneven_batch()
    model = family_of(CONFIG)
    one = jax.jit(lambda p, b: gradients(p, b, None, model, loss, 1))(params, batch)
    four = jax.jit(lambda p, b: gradients(p, b, None, model, loss, 4))(params, batch)
    np.testing.assert_allclose(four[0], one[0], rtol=1e-5)
    # per-token losses come back in the batch's row order (per-language metrics rely on it)
    np.testing.assert_allclose(four[2]["token_loss"], one[2]["token_loss"], rtol=1e-5,
                               atol=1e-7)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7),
                 four[1], one[1])
    if mode != 1000.0:  # a mean of per-microbatch means would differ: the test has teeth
        halves = [jax.tree.map(lambda x, i=i: x[i * 2:(i + 1) * 2], batch) for i in range(4)]
        naive = np.mean([gradients(params, h, None, model, loss, 1)[0] for h in halves])
        assert abs(naive - float(one[0])) > 1e-3


def test_average_per_sequence_weighs_every_sequence_equally(params):
    batch = uneven_batch()
    logits = Transformer(CONFIG).apply({"params": params}, **batch, enable_dropout=False)
    per_token, _ = losses.token_cross_entropy(logits, batch["decoder_target_tokens"])
    weights = (batch["decoder_target_tokens"] > 0).astype(jnp.float32)
    num, den = losses.loss_terms(per_token, weights, losses.PER_SEQUENCE)
    manual = np.mean([(per_token[i] * weights[i]).sum() / weights[i].sum()
                      for i in range(1, 8)])  # row 0 has no target tokens: not a sequence
    np.testing.assert_allclose(num / den, manual, rtol=1e-6)
    assert float(den) == pytest.approx(7.0)


def test_average_per_sequence_with_packed_segments():
    per_token = jnp.array([[1.0, 3.0, 10.0, 0.0], [2.0, 4.0, 6.0, 8.0]])
    weights = jnp.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    segments = jnp.array([[1, 1, 2, 0], [1, 2, 2, 2]])
    num, den = losses.loss_terms(per_token, weights, losses.PER_SEQUENCE, segments)
    # segments: (1+3)/2=2, 10, 2, (4+6+8)/3=6  -> mean 5
    assert float(den) == pytest.approx(4.0)
    assert float(num / den) == pytest.approx(5.0)


def test_label_smoothing_and_z_loss_match_direct_formulas():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 3, 7)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 7, (2, 3)))
    loss, z = losses.token_cross_entropy(logits, targets, z_loss=1e-2, label_smoothing=0.1)
    log_z = jax.nn.logsumexp(logits, -1)
    soft = jax.nn.one_hot(targets, 7) * 0.9 + (1 - jax.nn.one_hot(targets, 7)) * 0.1 / 6
    entropy = -(soft * jnp.log(soft)).sum(-1)
    expected = -(soft * jax.nn.log_softmax(logits)).sum(-1) - entropy + 1e-2 * log_z**2
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z, 1e-2 * log_z**2, rtol=1e-6)
    # without smoothing: plain negative log-likelihood
    plain, _ = losses.token_cross_entropy(logits, targets)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(plain, nll, rtol=1e-6)


def test_bad_normalizing_factor_is_named():
    with pytest.raises(ValueError, match="LOSS_NORMALIZING_FACTOR='AVERAGE'"):
        losses.loss_terms(jnp.ones((1, 2)), jnp.ones((1, 2)), "AVERAGE")


def test_adafactor_is_t5x_shaped_and_training_lowers_the_loss(params):
    # factored second moments only where both dims are >= 128, as in T5X
    config = CONFIG.replace(vocab_size=130, emb_dim=128)
    p = init_params(config, jax.random.key(1))
    optimizer = make_optimizer("adafactor", make_schedule("constant", 1e-2))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=optimizer.init(p))
    factored = state.opt_state[0]
    # optax names the two statistics the other way round from T5X; the shapes are what count
    assert {factored.v_row["token_embedder"]["embedding"].shape,
            factored.v_col["token_embedder"]["embedding"].shape} == {(128,), (130,)}
    assert factored.v["token_embedder"]["embedding"].shape == (1,)
    assert factored.v["decoder"]["relpos_bias"]["rel_embedding"].shape == (2, 32)  # unfactored
    batch = uneven_batch()
    step = jax.jit(lambda s, b: train_step(s, b, None, config=config, optimizer=optimizer,
                                           loss=LossConfig(), num_microbatches=2))
    first = None
    for _ in range(15):
        state, metrics = step(state, batch)
        first = float(metrics["loss"]) if first is None else first
    assert float(metrics["loss"]) < 0.7 * first
    assert int(state.step) == 15 and np.isfinite(float(metrics["grad_norm"]))


def test_schedules():
    assert float(make_schedule("constant", 1e-3)(500)) == pytest.approx(1e-3)
    warm = make_schedule("linear_warmup", 1.0, warmup_steps=10)
    assert float(warm(5)) == pytest.approx(0.5) and float(warm(50)) == pytest.approx(1.0)
    rsqrt = make_schedule("rsqrt", 1.0, warmup_steps=100)
    assert float(rsqrt(10)) == pytest.approx(1.0) and float(rsqrt(400)) == pytest.approx(0.5)
    cosine = make_schedule("cosine", 1.0, warmup_steps=10, decay_steps=110)
    assert float(cosine(60)) == pytest.approx(0.5, abs=1e-6)
    assert float(cosine(110)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="schedule 'linear'"):
        make_schedule("linear")
    clipped = make_optimizer("adamw", grad_clip_norm=1.0)
    assert isinstance(clipped, optax.GradientTransformation)


def test_dropout_mask_changes_with_the_step(params):
    """The dropout rng is folded with state.step: same batch and params, new step, new mask;
    the same step again gives the same mask (so a resumed run repeats the original)."""
    config = CONFIG.replace(dropout_rate=0.5)
    optimizer = make_optimizer("adafactor", make_schedule("constant", 0.0))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=optimizer.init(params))
    step = jax.jit(lambda s, b: train_step(s, b, jax.random.key(0), config=config,
                                           optimizer=optimizer, loss=LossConfig()))
    batch = uneven_batch()
    loss0 = float(step(state, batch)[1]["loss"])
    again = float(step(state, batch)[1]["loss"])
    loss1 = float(step(state.replace(step=jnp.ones((), jnp.int32)), batch)[1]["loss"])
    assert loss0 == again and loss0 != loss1


def test_the_hardware_dropout_rng_compiles_and_repeats_a_step():
    """DROPOUT_RNG='rbg' (the chip's generator: LoRA dropout on mT0-XXL compiles in 80 s with
    it, not in 10 minutes with threefry): the program lowers with an rbg key, a step repeats
    its mask, the next step draws another; an unknown name is refused with the choices."""
    from mtf import partitioning, program
    from mtf.errors import SettingError

    config = CONFIG.replace(dropout_rate=0.5)
    optimizer = make_optimizer("adafactor", make_schedule("constant", 0.0))
    mesh = partitioning.make_mesh((1, 1, 1), jax.devices()[:1])
    lengths = {"inputs": 10, "targets": 12}
    prog = program.train_program(config, optimizer, mesh, 8, lengths, False, LossConfig(),
                                 dropout_rng="rbg")
    key = prog.dropout_key(0)
    assert "rbg" in str(jax.random.key_impl(key))
    compiled = prog.compile(key)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=init_params(config, key),
                       opt_state=None)
    state = state.replace(opt_state=optimizer.init(state.params))
    batch = uneven_batch()
    batch["decoder_loss_weights"] = (batch["decoder_target_tokens"] > 0).astype(jnp.int32)
    host = jax.device_get((state, batch))  # each call donates its state: place a fresh copy

    def loss_at(step_number):
        s, b = jax.device_put(host, (prog.shardings, prog.batch_sharding))
        return float(compiled(s.replace(step=jnp.full((), step_number, jnp.int32)), b,
                              key)[1]["loss"])

    loss0, again, loss1 = loss_at(0), loss_at(0), loss_at(1)
    assert loss0 == again and loss0 != loss1
    with pytest.raises(SettingError, match="threefry.*rbg"):
        program.train_program(config, optimizer, mesh, 8, lengths, False, LossConfig(),
                              dropout_rng="philox")
