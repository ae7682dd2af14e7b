"""Evaluation: what a checkpoint is measured by, in one package.

evaluation (EvalConfig, Evaluator: reads a task or mixture's examples once and scores parameters on
them), scoring (rank classification: every answer choice's log-likelihood), decoding
(greedy, beam and sampling on a key/value cache), validation (the train step's loss
on the mixture's validation split), report (results.json / .md / .png), runner (the eval
and infer runs that gin/runs/eval.gin and infer.gin start).
"""
