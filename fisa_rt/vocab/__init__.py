"""Vocabularies as text, below the model and the runtime alike: class names and prompt templates
(``prompts``), the shipped vocabularies and their encoding into embeddings around any text encoder
(``vocabulary``), and CLIP's BPE tokenizer in plain Python (``tokenizer``)."""
