"""The eval and infer runs (`runs.run.mode = 'eval' | 'infer'`): one checkpoint in, a
report or predictions out, through the same launch, gin, mesh and storage as training."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import jax

from mtf import partitioning, run_setup, storage
from mtf.errors import SettingError
from mtf.eval import evaluation, report
from mtf.model import ModelConfig
from mtf.run_config import EvalConfig


def _step_label(source: str) -> str:
    """`step_N` for a training step folder, else `checkpoint_<folder name>`."""
    name = os.path.basename(source.rstrip("/"))
    parent = os.path.basename(os.path.dirname(source.rstrip("/")))
    if name.isdigit() and parent == "checkpoints":
        return f"step_{int(name)}"
    return "checkpoint_" + re.sub(r"[^A-Za-z0-9_.-]", "_", name or "root")


def _load(model_config: ModelConfig, checkpoint_path: str | None, mesh,
          adapter_path: str | None) -> tuple[Any, str, str]:
    """(placed params, description, report label); with ADAPTER_PATH, the base checkpoint
    with those adapters merged (labelled by the adapters' step)."""
    loaded = run_setup.checkpoint_params(model_config, checkpoint_path, mesh, adapter_path)
    if loaded.adapter_source:
        return (loaded.params, f"{loaded.source} + adapters {loaded.adapter_source}",
                _step_label(loaded.adapter_source))
    return loaded.params, loaded.source, _step_label(loaded.source)


def evaluate(*, model_config: ModelConfig, checkpoint_path: str | None, model_dir: str,
             eval_config: EvalConfig,
             mesh_shape: tuple[int, int, int] = (-1, 1, 1),
             adapter_path: str | None = None) -> dict[str, Any]:
    """Scores a checkpoint (with ADAPTER_PATH's LoRA adapters merged, if set) on
    EVAL_MIXTURE; writes MODEL_DIR/eval/<step_N>/results.*."""
    if not model_dir:
        raise SettingError("MODEL_DIR is empty: the report is written to MODEL_DIR/eval/")
    mesh = partitioning.make_mesh(mesh_shape)
    evaluator = evaluation.Evaluator(model_config.base, mesh, eval_config)
    evaluator.examples()  # a bad task or record fails before the checkpoint is read
    params, source, label = _load(model_config, checkpoint_path, mesh, adapter_path)
    result = evaluator.run(params)
    result.update(step=int(label[5:]) if label.startswith("step_") else None, checkpoint=source)
    if jax.process_index() == 0:
        paths = report.write(storage.join(model_dir, "eval", label), result)
        print(report.summary(result))
        print(f"report: {paths['md']} and {paths['png']}", flush=True)
    return result


def infer(*, model_config: ModelConfig, checkpoint_path: str | None, model_dir: str,
          eval_config: EvalConfig, output_file: str | None = None,
          mesh_shape: tuple[int, int, int] = (-1, 1, 1),
          adapter_path: str | None = None) -> str:
    """Writes one jsonl line per example of EVAL_MIXTURE's tasks: inputs, targets, language,
    template, and the generated text and/or choice scores and prediction."""
    if not model_dir and not output_file:
        raise SettingError("set MODEL_DIR (predictions go to MODEL_DIR/infer/) or "
                           "INFER_OUTPUT_FILE")
    mesh = partitioning.make_mesh(mesh_shape)
    evaluator = evaluation.Evaluator(model_config.base, mesh, eval_config)
    evaluator.examples()
    params, _, label = _load(model_config, checkpoint_path, mesh, adapter_path)
    result = evaluator.run(params, keep_predictions=True)
    path = output_file or storage.join(
        model_dir, "infer", f"{eval_config.mixture_or_task_name}-{label}.jsonl")
    if jax.process_index() == 0:
        lines = [json.dumps({"task": task, **row}, ensure_ascii=False)
                 for task, rows in result["predictions"].items() for row in rows]
        storage.write_text(path, "\n".join(lines) + "\n")
        print(f"{len(lines)} predictions written to {path}", flush=True)
    return path
