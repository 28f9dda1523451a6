"""Text side: class names -> prompt-ensembled CLIP text embeddings, with an on-disk cache.

A vocabulary is a list of class names; a name may list synonyms separated by commas
("person, man, woman"), as FC-CLIP's class files do. Each (synonym, template) prompt is embedded and
L2-normalised, and a class is the normalised mean of its prompts, so every vocabulary becomes one
(K, D) tensor — the form the exported engines take as a runtime input.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, List, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_path
from .errors import InputError, warn
from .prompts import PROMPT_TEMPLATES, prompt_templates, validate_vocabulary  # noqa: F401
from .runtime.vocabulary import Vocabulary, encode

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
    tower: TextTower,
    tokenizer: Callable[[List[str]], torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
) -> torch.Tensor:
    """(K, D) float32 normalised class embeddings for ``class_names``."""
    device = next(tower.parameters()).device

    def encode_tokens(tokens) -> np.ndarray:
        return tower(torch.as_tensor(tokens).to(device)).float().cpu().numpy()

    return torch.from_numpy(encode(Vocabulary(list(class_names)), templates, tokenizer, encode_tokens, batch_size))


class EmbeddingCache:
    """Vocabulary embeddings on disk, keyed by the text weights, the templates and the class names."""

    def __init__(self, folder: str):
        self.folder = folder

    def path(self, fingerprint: str, templates: Sequence[str], class_names: Sequence[str]) -> str:
        key = hashlib.sha256(json.dumps([fingerprint, list(templates), list(class_names)]).encode()).hexdigest()[:32]
        return os.path.join(self.folder, f"vocab-{key}.safetensors")

    def get_or_encode(
        self, tower: TextTower, tokenizer, class_names: Sequence[str], templates: Sequence[str], batch_size: int = 256
    ) -> torch.Tensor:
        names = validate_vocabulary(class_names)
        path = self.path(tower.fingerprint(), templates, names)
        if os.path.isfile(path):
            try:
                return load_file(path)["embeddings"]
            except (SafetensorError, OSError, KeyError):
                pass  # a damaged entry is re-encoded and replaced below
        embeddings = encode_vocabulary(tower, tokenizer, names, templates, batch_size)
        try:
            os.makedirs(self.folder, exist_ok=True)
            with atomic_path(path) as tmp:
                save_file({"embeddings": embeddings.contiguous()}, tmp, metadata={"class_names": json.dumps(names)})
        except (OSError, InputError) as exc:  # a cache is an optimisation: never the reason a run fails
            warn(f"cannot write the embeddings cache {path}: {exc}; continuing without it")
        return embeddings
