"""Vocabularies a base model's tokenizer serves badly: how many pieces each language pays
(`fertility`), new SentencePiece pieces appended without moving any id (`pieces`), and
the model's vocabulary-sized matrices grown to match (`embeddings`)."""
