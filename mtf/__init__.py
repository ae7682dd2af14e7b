"""mtf: multilingual multitask finetuning of mT5 in JAX."""
