"""The train loop: resume, compile ahead of time, step, log, checkpoint, stop cleanly.

Resume order (MaxText's, written down): the latest checkpoint in MODEL_DIR, else
INITIAL_CHECKPOINT_PATH (mtf, T5X or HF; params only, optimizer fresh), else random init.
TRAIN_STEPS counts this run's steps from its start point (not pretraining, unlike T5X).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import time
from typing import Any

import gin
import jax
import numpy as np
import seqio
from jax.experimental import multihost_utils

from mtf import (
    checkpoint,
    flops,
    observability,
    partitioning,
    run_setup,
    runlock,
    storage,
)
from mtf.convert import loading
from mtf.data import batches, records, seqio_tasks
from mtf.errors import UserError
from mtf.eval import evaluation, report, validation
from mtf.model import ModelConfig, lora
from mtf.model.family import check_vocabulary, text_ids
from mtf.run_config import RunConfig
from mtf.vocabulary import pieces


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is left as it was."""


@dataclasses.dataclass
class TrainResult:
    start_step: int
    final_step: int
    losses: dict[int, float]
    preempted: bool
    source: str


class _Preemption:
    """SIGTERM (a preempted TPU VM / a cluster's scancel): finish the step, save, exit 0.

    With several processes, jax's preemption sync point makes them agree on one step.
    """

    def __init__(self) -> None:
        self.requested = False
        self.multi = jax.process_count() > 1
        self._previous = None
        if not self.multi:
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        logging.warning("SIGTERM received: saving a checkpoint after this step, then exiting")
        self.requested = True

    def reached(self, step_number: int) -> bool:
        if self.multi:
            return multihost_utils.reached_preemption_sync_point(step_number)
        return self.requested

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class _SaveClock:
    """CHECKPOINT_MINUTES: a save is due when that many minutes passed since the last one.

    With several processes, process 0's clock decides, broadcast every `SYNC_STEPS` steps
    (all must save the same step; a per-step broadcast would stall the device queue)."""

    SYNC_STEPS = 10

    def __init__(self, minutes: float | None) -> None:
        self.seconds = minutes * 60 if minutes else None
        self.last = time.monotonic()
        self.multi = jax.process_count() > 1

    def due(self, step_number: int) -> bool:
        if self.seconds is None:
            return False
        late = time.monotonic() - self.last >= self.seconds
        if not self.multi:
            return late
        if step_number % self.SYNC_STEPS:
            return False
        return bool(multihost_utils.broadcast_one_to_all(np.int32(late)))

    def saved(self) -> None:
        self.last = time.monotonic()


def _check_finite(value: float, step_number: int, ckpts: checkpoint.Checkpoints) -> None:
    if math.isfinite(value):
        return
    ckpts.wait()
    last = ckpts.latest_step()
    where = (f"the last good checkpoint is step {last} in {ckpts.directory}" if last is not None
             else "no checkpoint was saved yet")
    raise NonFiniteLossError(
        f"loss is {value} at step {step_number}; stopped without saving, {where}. Lower the "
        "learning rate, enable gradient clipping (GRAD_CLIP_NORM), or check the data; "
        "restarting resumes from that checkpoint")


def _print_memory(compiled: Any) -> None:
    try:
        mem = compiled.memory_analysis()
    except Exception:  # not every backend reports it
        mem = None
    if mem is None:
        print("compiled train step: per-device memory analysis not available on this backend")
        return
    gib = 1024 ** 3
    print(f"compiled train step, per device: arguments {mem.argument_size_in_bytes / gib:.3f} "
          f"GiB, outputs {mem.output_size_in_bytes / gib:.3f} GiB, temporaries "
          f"{mem.temp_size_in_bytes / gib:.3f} GiB, aliased (donated) "
          f"{mem.alias_size_in_bytes / gib:.3f} GiB, code "
          f"{mem.generated_code_size_in_bytes / 1024 ** 2:.1f} MiB", flush=True)


def _stream_states(stream: batches.Batches) -> list[dict[str, Any]] | None:
    """Every process's stream state for the checkpoint's data position (process 0 writes
    it): None when the batch count is enough, as for every stream but packed cached ones."""
    state = stream.state()
    if state is None:  # the same on every process: they read the same kind of stream
        return None
    if jax.process_count() == 1:
        return [state]
    encoded = np.frombuffer(json.dumps(state).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.int32(len(encoded)))
    padded = np.zeros(int(np.max(sizes)), np.uint8)
    padded[:len(encoded)] = encoded
    rows = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[:int(n)])) for row, n in zip(rows, sizes, strict=True)]


def _evaluator(model_config: ModelConfig, mesh, eval_period: int | None,
               eval_config: evaluation.EvalConfig | None, skip_bad_records: bool,
               skipped: records.SkipReport) -> evaluation.Evaluator | None:
    """The in-training evaluator (EVAL_PERIOD and EVAL_MIXTURE set), its examples read now
    so a bad evaluation task fails before the first step rather than after hours (its bad
    records handled as the training mixture's are)."""
    if not eval_period or eval_config is None or not eval_config.mixture_or_task_name:
        return None
    if eval_config.optional and not eval_config.registered():
        if jax.process_index() == 0:
            print(f"no evaluation during training: EVAL_MIXTURE "
                  f"{eval_config.mixture_or_task_name!r} is not registered (mt0_heldout needs "
                  "XNLI_DIR, XCOPA_DIR, XSTORYCLOZE_DIR or XWINOGRAD_DIR; see README)",
                  flush=True)
        return None
    evaluator = evaluation.Evaluator(model_config.without_dropout, mesh, eval_config)
    seqio_tasks.handle_bad_records(seqio.get_mixture_or_task(eval_config.mixture_or_task_name),
                                   skip_bad_records, skipped)
    evaluator.examples()
    return evaluator


def _evaluate(evaluator: evaluation.Evaluator, params, step_number: int, model_dir: str,
              writer: observability.MetricsWriter, source: str) -> None:
    """Scores the current parameters; report in MODEL_DIR/eval/step_N, numbers logged."""
    result = evaluator.run(params)
    result.update(step=step_number, checkpoint=f"{model_dir} at step {step_number} ({source})")
    writer.write(step_number, report.scalars(result), progress=False)
    if jax.process_index() == 0:
        paths = report.write(storage.join(model_dir, "eval", f"step_{step_number}"), result)
        print(f"evaluation at step {step_number}:\n{report.summary(result)}\nreport: "
              f"{paths['md']} and {paths['png']}", flush=True)


def _validate(validation_loss: validation.ValidationLoss, params, step_number: int,
              writer: observability.MetricsWriter) -> None:
    scalars = validation_loss(params)
    writer.write(step_number, scalars, progress=False)
    if jax.process_index() == 0:
        print(f"validation loss at step {step_number}: {scalars['validation/loss']:.4f}",
              flush=True)


def _take_run_lock(model_dir: str, chief: bool) -> runlock.RunLock | None:
    """Process 0 takes MODEL_DIR's run lock; every process fails alike when it is held."""
    lock, refused = (runlock.RunLock(model_dir) if chief else None), ""
    if lock is not None:
        try:
            lock.acquire()
        except runlock.RunLockError as e:
            refused = str(e)
    if jax.process_count() > 1:
        held = multihost_utils.broadcast_one_to_all(np.int32(bool(refused)))
        if int(held) and not refused:
            refused = "MODEL_DIR is in use by another run (process 0 says which)"
    if refused:
        raise runlock.RunLockError(refused)
    return lock


def check_extended_vocabulary(initial_checkpoint: str | None, tasks_vocabulary: str | None
                              ) -> None:
    """Refuses to start from a checkpoint `mtf.vocab extend` wrote while the tasks read
    another vocabulary: its new rows would never see a token."""
    if not initial_checkpoint or not storage.exists(initial_checkpoint):
        return
    stored = loading.stored_vocabulary(initial_checkpoint)
    if not stored or stored.endswith(".json"):
        return
    model = storage.read_bytes(stored)
    if pieces.holds_sentinels(model) and (
            not tasks_vocabulary or storage.read_bytes(tasks_vocabulary) != model):
        raise UserError(f"INITIAL_CHECKPOINT_PATH={initial_checkpoint} has an extended "
                        f"vocabulary ({stored}) but the tasks read {tasks_vocabulary}: set "
                        f"MTF_VOCABULARY={stored}")


def _applied(state: Any, config: ModelConfig) -> Any:
    """The parameters evaluation applies (LoRA: the base joined with what trains)."""
    return lora.with_token_rows(state.model_params(), config)


def train(config: RunConfig) -> TrainResult:
    """Trains `config.model_config` on `config.data` until step `config.train_steps` (the
    same target when it resumes; pretraining steps are not counted), see the module doc."""
    model_config, model_dir, data = config.model_config, config.model_dir, config.data
    train_steps, batch_size, loss = config.train_steps, config.batch_size, config.loss
    checkpoint_config, seed = config.checkpoint_config, config.seed
    num_microbatches = config.num_microbatches
    eval_period, eval_steps, log_period = config.eval_period, config.eval_steps, config.log_period
    storage.check_bucket(model_dir, "MODEL_DIR")
    chief = jax.process_index() == 0
    lock = _take_run_lock(model_dir, chief)
    try:
        provider = batches.provider(data)  # fails before any compiling if not registered
        vocabulary = provider.output_features["targets"].vocabulary
        check_vocabulary(model_config, text_ids(vocabulary), vocabulary.eos_id,
                         batches.vocabulary_file(data) or f"of {data.mixture_or_task_name}")
        check_extended_vocabulary(config.initial_checkpoint_path, batches.vocabulary_file(data))
        task_names = seqio_tasks.task_names(provider)
        batches.token_cache_of(data)  # and if the token cache is stale or damaged
        skipped = records.SkipReport()  # this run's bad records (SKIP_BAD_RECORDS)
        seqio_tasks.handle_bad_records(provider, data.skip_bad_records, skipped)
        run = run_setup.setup(config)
        mesh, compiled_step = run.mesh, run.program
        lengths = run.lengths
        evaluator = _evaluator(model_config, mesh, eval_period, config.eval_config,
                               data.skip_bad_records, skipped)
        validated = data if config.validation_mixture is None else dataclasses.replace(
            data, mixture_or_task_name=config.validation_mixture, cache_dir=None)
        applied_shardings = lora.with_token_rows(compiled_step.shardings.model_params(),
                                                 model_config)
        validation_loss = (validation.ValidationLoss(
            model_config, mesh, applied_shardings, validated, batch_size, loss,
            num_microbatches, eval_steps, jax.process_index(), jax.process_count())
            if eval_period and eval_steps is not None else None)
        ckpts = run.checkpoints()
        start_point = run.start(ckpts)
        train_state, position, source = start_point.state, start_point.position, \
            start_point.source
        start = int(jax.device_get(train_state.step))
        if chief:
            print(f"mesh {dict(mesh.shape)} over {jax.device_count()} devices on "
                  f"{jax.process_count()} process(es); {source}; step {start} -> {train_steps}",
                  flush=True)
        if start >= train_steps:
            print(f"nothing to do: the checkpoint is at step {start} >= TRAIN_STEPS={train_steps}")
            ckpts.close()
            return TrainResult(start, start, {}, False, source)

        rng = compiled_step.dropout_key(seed) if compiled_step.dropout else None
        compiled = compiled_step.compile(rng)
        if chief:
            _print_memory(compiled)
            storage.write_text(storage.join(model_dir, "config.gin"), gin.operative_config_str())

        peak = config.peak_flops_per_device or flops.peak_flops_per_device(model_config.dtype)
        step_flops = flops.model_flops_per_step(model_config, batch_size, lengths["inputs"],
                                                lengths["targets"])
        tokens_per_step = batch_size * (lengths["inputs"] + lengths["targets"])
        writer = observability.MetricsWriter(model_dir, train_steps, enabled=chief)
        stream = run.stream(position)
        preemption = _Preemption()
        window = observability.LogWindow(partitioning.gather, model_config.batch_spec,
                                         task_names)
        save_clock = _SaveClock(checkpoint_config.minutes)
        losses: dict[int, float] = {}
        last_time, last_step = time.perf_counter(), start
        drawn_from = checkpoint.DataPosition(
            mixture=data.mixture_or_task_name, seed=data.seed, batch_size=batch_size,
            vocabulary=batches.vocabulary_file(data), cache=data.cache_dir,
            lora_base=start_point.lora_base)
        done = start
        try:
            for done in range(start + 1, train_steps + 1):
                local = next(stream)
                if lock is not None:
                    lock.refresh()
                batch = partitioning.global_batch(local, compiled_step.batch_sharding,
                                      tuple(compiled_step.abstract_batch))
                train_state, metrics = compiled(train_state, batch, rng)
                log_now = done % log_period == 0 or done == train_steps
                save_now = (done % checkpoint_config.period == 0 or done == train_steps
                            or save_clock.due(done))
                stop_now = preemption.reached(done)
                window.add(metrics, local)
                if log_now or save_now or stop_now:
                    value = float(jax.device_get(metrics["loss"]))
                    _check_finite(value, done, ckpts)
                    losses[done] = value
                if log_now:
                    now = time.perf_counter()
                    seconds = (now - last_time) / max(done - last_step, 1)
                    scalars = window.summary()
                    scalars["tokens_per_second"] = tokens_per_step / seconds
                    scalars["step_seconds"] = seconds
                    scalars["mfu"] = step_flops / seconds / (peak * jax.device_count())
                    scalars["skipped_records"] = float(skipped.total)
                    writer.write(done, scalars)
                    last_time, last_step = time.perf_counter(), done
                if save_now or stop_now:
                    # a LoRA run saves its adapters and their optimizer state, not the base
                    ckpts.save(done, train_state.replace(frozen=None),
                               dataclasses.replace(drawn_from, batches=done,
                                                   streams=_stream_states(stream)),
                               model_config)
                    save_clock.saved()
                if eval_period and not stop_now and (
                        done % eval_period == 0 or done == train_steps):
                    applied = _applied(train_state, model_config)
                    if validation_loss is not None:
                        _validate(validation_loss, applied, done, writer)
                    if evaluator is not None:
                        _evaluate(evaluator, applied, done, model_dir, writer, source)
                if stop_now:
                    if chief:
                        print(f"preempted: saved step {done}; rerun the same command to resume",
                              flush=True)
                    ckpts.close()
                    return TrainResult(start, done, losses, True, source)
            ckpts.close()
        except BaseException:
            # Stop Orbax's background writers too (a save already under way is finished):
            # its threads would otherwise keep the process from exiting.
            try:
                ckpts.close()
            except Exception as e:  # the error that got us here is the one to report
                logging.warning("closing the checkpoints after an error: %s", e)
            raise
        finally:
            preemption.restore()
            writer.close()
        if chief:
            print(f"done: step {done}, checkpoints in {ckpts.directory}", flush=True)
        return TrainResult(start, done, losses, False, source)
    finally:
        if lock is not None:
            lock.release()
