"""Vocabulary -> (K, D) embeddings ((K, M, D) for text.synonyms: max) for a backend: the exported text
encoder in ONNX Runtime (plain-Python tokenizer, no PyTorch needed) for ONNX/TensorRT artefacts, the
checkpoint's own text tower for PyTorch. Embeddings are cached on disk by (text encoder hash, templates,
synonym mode, class names)."""

from __future__ import annotations

import os
import re
from functools import partial
from typing import Optional

import numpy as np

from ..cache_files import VOCABULARY_CACHE_BYTES, store, touch
from ..errors import CheckpointError, InputError, warn
from ..onnxruntime_session import inference_session
from ..vocab import vocabulary as vocab
from ..vocab.prompts import expand_prompts, prompt_templates
from ..vocab.tokenizer import Tokenizer, find_vocab_file, trim_padding
from .cache_dirs import cache_dir

CACHE_ENTRY = re.compile(r"[0-9a-f]{32}\.npz")  # vocab.cache_key's names: nothing else in the folder is touched


def default_cache_dir() -> str:
    return cache_dir("vocab")


def _run_text_encoder(session, tokens: np.ndarray) -> np.ndarray:
    return session.run(None, {"tokens": tokens})[0]


class TextEncoder:
    def __init__(self, backend, artefact: str):
        from fisa_rt.export.manifest import sha256_file

        self.cache_bytes = VOCABULARY_CACHE_BYTES
        self.templates = backend.manifest["templates"]
        self.synonyms = backend.synonyms
        # what a cache entry must hold: (K, D), or (K, M, D) for "max"
        self.row_shape = (backend.embed_dim,) if self.synonyms == "mean" else (None, backend.embed_dim)
        self.any_width = False  # the checkpoint's text tower cuts its own padding
        if backend.name == "torch":
            self.tokenizer = backend.model.tokenizer
            self._encode = backend.encode_tokens
            self.sha256 = sha256_file(artefact)
            return
        folder = os.path.dirname(os.path.abspath(artefact))
        record = backend.manifest.get("text_encoder")
        if not record:
            raise CheckpointError(
                f"the manifest of {artefact} names no text encoder; rebuild with `python export/build_engine.py`"
            )
        path = os.path.join(folder, record["file"])
        if not os.path.isfile(path):
            raise CheckpointError(
                f"text encoder {path} (named by {artefact}'s manifest) is missing; copy it beside the engine"
            )
        self.sha256 = sha256_file(path)
        if self.sha256 != record["sha256"]:
            raise CheckpointError(
                f"{path} is not the text encoder {artefact} was exported with (sha256 differs); rebuild both"
            )
        import onnxruntime as ort

        from .threads import onnxruntime_options, resolve_threads

        # the backend's thread count (ONNX Runtime's default is a pool of every core, per session)
        options = onnxruntime_options(ort, resolve_threads(getattr(backend, "threads", None)))
        self.session = inference_session(path, options)
        self.tokenizer = Tokenizer(find_vocab_file(folder), int(backend.manifest["context_length"]))
        # a graph exported before the width was a graph input takes the whole context
        self.any_width = not isinstance(self.session.get_inputs()[0].shape[1], int)
        # not a lambda over self: that cycle kept a dropped Segmenter's encoder alive until the cyclic collector ran
        self._encode = partial(_run_text_encoder, self.session)

    def tokenize(self, prompts):
        tokens = self.tokenizer(prompts)
        # open_clip's tokenizer makes its tensor on torch's default device, which a caller may have moved off the CPU
        tokens = np.asarray(tokens.cpu() if hasattr(tokens, "cpu") else tokens, dtype=np.int64)
        return trim_padding(tokens) if self.any_width else tokens

    def _warn_of_cut_names(self, vocabulary: vocab.Vocabulary, templates) -> None:
        """The tokenizer cuts a prompt longer than the text encoder's context, silently (CLIP's rule): two
        names that differ only past the cut would get the same embedding."""
        room = self.tokenizer.context_length - 2  # the start and end tokens
        prompts, synonym_of, class_of = expand_prompts(vocabulary.names, templates)
        # a BPE token spans at least one byte of the prompt, so only prompts of more bytes than room can be cut:
        # tokenising those alone keeps the check off the cost of a cached vocabulary (LVIS: 17,000 prompts)
        cut = sorted({class_of[s] for p, s in zip(prompts, synonym_of)
                      if len(p.encode()) > room and len(self.tokenizer.encode(p)) > room})
        if cut:
            shown = ", ".join([repr(vocabulary.names[k][:40]) for k in cut[:3]] + ["..."] * (len(cut) > 3))
            warn(f"class names longer than the text encoder's {room + 2} tokens are cut ({shown}): names alike up to "
                 "the cut get the same embedding")

    def _fits(self, cached: np.ndarray) -> bool:
        return len(cached.shape) == 1 + len(self.row_shape) and all(
            n is None or n == m for n, m in zip(self.row_shape, cached.shape[1:]))

    def encode(self, vocabulary: vocab.Vocabulary, cache_dir: Optional[str] = None) -> np.ndarray:
        templates = prompt_templates(self.templates)
        self._warn_of_cut_names(vocabulary, templates)
        cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
        path = (
            os.path.join(cache_dir, vocab.cache_key(self.sha256, self.templates, vocabulary, self.synonyms) + ".npz")
            if cache_dir
            else None
        )
        if path and os.path.isfile(path):
            try:
                cached, names, sha = vocab.load_embeddings(path)
                if names.names == vocabulary.names and sha == self.sha256 and self._fits(cached):
                    touch(path)
                    return cached
            except InputError:
                pass  # a damaged entry (truncated, empty, foreign, another width) is re-encoded and replaced below
        embeddings = vocab.encode(vocabulary, templates, self.tokenize, self._encode, synonyms=self.synonyms)
        if path:
            store(path, partial(vocab.save_embeddings, path, embeddings, vocabulary, self.sha256, overwrite=True),
                  CACHE_ENTRY, self.cache_bytes, hint=" (set XDG_CACHE_HOME, or cache_dir=\"\" / --no-cache)")
        return embeddings
