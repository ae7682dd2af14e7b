"""Multilingual prompted data: records, prompt templates, seqio tasks and mixtures, batches."""
