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
from torch.nn import functional as F

from .atomic import atomic_path
from .cache_files import VOCABULARY_CACHE_BYTES, store, touch
from .config import TextConfig
from .vocab.prompts import prompt_templates, validate_vocabulary
from .vocab.tokenizer import trim_padding
from .vocab.vocabulary import Vocabulary, encode


def _pools_causally(clip: nn.Module) -> bool:
    """Whether no position attends to a later one and the embedding is read at the end token: then padding never
    reaches it, and a prompt's embedding is the same at any width that keeps its end token. open_clip's CLIP
    text tower is so built; SigLIP's attends to its padding and reads the last position, and the other towers
    (CoCa's, Hugging Face's) are left to run whole."""
    mask = getattr(clip, "attn_mask", None)
    parts = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
    pool = getattr(clip, "text_pool_type", None)
    pooled_at_end = pool == "argmax" or (pool == "eos" and hasattr(clip, "text_eos_id"))
    # an older open_clip fed its transformer sequence-first (no ``batch_first``): such a tower runs whole
    if not isinstance(mask, torch.Tensor) or not all(hasattr(clip, p) for p in parts) or not pooled_at_end or \
            not hasattr(clip.transformer, "batch_first"):
        return False
    if mask.is_meta:  # a model built for its key table has no values to check; open_clip builds the mask causal
        return True
    return torch.equal(torch.isinf(mask), torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1))


class TextTower(nn.Module):
    """CLIP's text encoder and logit scale (the open_clip model with its visual tower removed; the
    backbone owns that)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        clip.visual = None
        self.clip = clip
        self.any_width = _pools_causally(clip)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n, context) token ids -> (n, D) L2-normalised text embeddings, run only as wide as the longest
        prompt where :attr:`any_width` says the embeddings are the same (a vocabulary's batches: about 6x fewer
        positions than CLIP's 77)."""
        if not self.any_width:
            return self.clip.encode_text(tokens, normalize=True)
        return self.encode_width(tokens[:, : trim_padding(tokens.cpu().numpy()).shape[1]])

    def encode_width(self, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip's ``CLIP.encode_text`` (which adds all 77 positions) for tokens of any width up to the
        context: the position table and the causal mask are cut to it. Traced with the width dynamic, it is
        the exported text encoder."""
        clip, width = self.clip, tokens.shape[1]
        cast = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(tokens).to(cast) + clip.positional_embedding[:width].to(cast)
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:width, :width]))
        # open_clip's text_global_pool for these two pool types (its signature and return changed across versions)
        ends = tokens.argmax(-1) if clip.text_pool_type == "argmax" else (tokens == clip.text_eos_id).int().argmax(-1)
        x = x[torch.arange(x.shape[0], device=x.device), ends]
        if isinstance(clip.text_projection, nn.Linear):
            x = clip.text_projection(x)
        elif clip.text_projection is not None:
            x = x @ clip.text_projection
        return F.normalize(x, dim=-1)

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

        def write():
            with atomic_path(path) as tmp:
                save_file({"embeddings": embeddings.contiguous()}, tmp, metadata={"class_names": json.dumps(names)})

        store(path, write, self.ENTRY, self.max_bytes)
        return embeddings
