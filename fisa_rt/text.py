"""Text side: class names -> prompt-ensembled CLIP text embeddings, with an on-disk cache.

A vocabulary is a list of class names; a name may list synonyms separated by commas
("person, man, woman"), as FC-CLIP's class files do. Each (synonym, template) prompt is embedded and
L2-normalised, and a class is the normalised mean of its prompts, so every vocabulary becomes one
(K, D) tensor — the form the exported engines take as a runtime input. FC-CLIP's configs (``text.synonyms:
max``) keep one row per synonym instead, (K, M, D), and score a class by its best synonym.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Callable, List, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_path, remove_stale_temporaries
from .cache_files import VOCABULARY_CACHE_BYTES, keep_recent, touch
from .config import TextConfig
from .errors import InputError, warn
from .vocab.prompts import prompt_templates, validate_vocabulary
from .vocab.vocabulary import Vocabulary, encode

class TextTower(nn.Module):
    """CLIP's text encoder and logit scale (the open_clip model with its visual tower removed; the
    backbone owns that)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        clip.visual = None
        self.clip = clip

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n, context) token ids -> (n, D) L2-normalised text embeddings."""
        return self.clip.encode_text(tokens, normalize=True)

    def fingerprint(self) -> str:
        """Hash of the text weights: the cache key must change whenever the embeddings would."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()


@torch.no_grad()
def encode_vocabulary(
    tower: TextTower, tokenizer: Callable[[List[str]], torch.Tensor], class_names: Sequence[str], cfg: TextConfig
) -> torch.Tensor:
    """Normalised float32 class embeddings for ``class_names``: (K, D), or (K, M, D) for
    ``cfg.synonyms == "max"`` (see :func:`fisa_rt.vocab.vocabulary.encode`)."""
    device = next(tower.parameters()).device

    def encode_tokens(tokens) -> np.ndarray:
        return tower(torch.as_tensor(tokens).to(device)).float().cpu().numpy()

    templates = prompt_templates(cfg.templates)
    vocabulary = Vocabulary(list(class_names))
    return torch.from_numpy(encode(vocabulary, templates, tokenizer, encode_tokens, cfg.batch_size, cfg.synonyms))


class EmbeddingCache:
    """Vocabulary embeddings on disk, keyed by the text weights, the text config and the class names; the most
    recently used ``max_bytes`` are kept (the same bound as the runtime's cache)."""

    ENTRY = re.compile(r"vocab-[0-9a-f]{32}\.safetensors")  # path()'s names: nothing else in the folder is touched

    def __init__(self, folder: str, max_bytes: int = VOCABULARY_CACHE_BYTES):
        self.folder = folder
        self.max_bytes = max_bytes

    def path(self, fingerprint: str, cfg: TextConfig, class_names: Sequence[str]) -> str:
        payload = json.dumps([fingerprint, list(prompt_templates(cfg.templates)), cfg.synonyms, list(class_names)])
        return os.path.join(self.folder, f"vocab-{hashlib.sha256(payload.encode()).hexdigest()[:32]}.safetensors")

    def get_or_encode(self, tower: TextTower, tokenizer, class_names: Sequence[str], cfg: TextConfig) -> torch.Tensor:
        names = validate_vocabulary(class_names)
        path = self.path(tower.fingerprint(), cfg, names)
        if os.path.isfile(path):
            try:
                embeddings = load_file(path)["embeddings"]
                touch(path)
                return embeddings
            except (SafetensorError, OSError, KeyError):
                pass  # a damaged entry is re-encoded and replaced below
        embeddings = encode_vocabulary(tower, tokenizer, names, cfg)
        try:
            os.makedirs(self.folder, exist_ok=True)
            remove_stale_temporaries(self.folder)  # a killed writer's
            with atomic_path(path) as tmp:
                save_file({"embeddings": embeddings.contiguous()}, tmp, metadata={"class_names": json.dumps(names)})
            keep_recent(self.folder, self.ENTRY, self.max_bytes)
        except (OSError, InputError) as exc:  # a cache is an optimisation: never the reason a run fails
            warn(f"cannot write the embeddings cache {path}: {exc}; continuing without it")
        return embeddings
