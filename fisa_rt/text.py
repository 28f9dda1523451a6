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

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import ConfigError, InputError

PROMPT_TEMPLATES = {
    "single": ("a photo of a {}.",),
    # ViLD's templates, which FC-CLIP uses for open-vocabulary segmentation.
    "vild": (
        "a photo of a {}.",
        "This is a photo of a {}",
        "There is a {} in the scene",
        "There is the {} in the scene",
        "a photo of a {} in the scene",
        "a photo of a small {}.",
        "a photo of a medium {}.",
        "a photo of a large {}.",
        "This is a photo of a small {}.",
        "This is a photo of a medium {}.",
        "This is a photo of a large {}.",
        "There is a small {} in the scene.",
        "There is a medium {} in the scene.",
        "There is a large {} in the scene.",
    ),
}


def prompt_templates(name: str) -> Sequence[str]:
    if name not in PROMPT_TEMPLATES:
        raise ConfigError(f"unknown prompt templates {name!r}; available: {', '.join(sorted(PROMPT_TEMPLATES))}")
    return PROMPT_TEMPLATES[name]


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


def _synonyms(name: str) -> List[str]:
    synonyms = [s.strip() for s in name.split(",") if s.strip()]
    if not synonyms:
        raise InputError(f"class name {name!r} is empty")
    return synonyms


def validate_vocabulary(class_names: Sequence[str]) -> List[str]:
    names = list(class_names)
    if not names:
        raise InputError("the vocabulary is empty: give at least one class name")
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise InputError(f"class names must be strings; got {bad[:3]}")
    for name in names:
        _synonyms(name)
    return names


@torch.no_grad()
def encode_vocabulary(
    tower: TextTower,
    tokenizer: Callable[[List[str]], torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
) -> torch.Tensor:
    """(K, D) float32 normalised class embeddings for ``class_names``."""
    names = validate_vocabulary(class_names)
    prompts, owner = [], []
    for k, name in enumerate(names):
        for synonym in _synonyms(name):
            for template in templates:
                prompts.append(template.format(synonym))
                owner.append(k)
    device = next(tower.parameters()).device
    chunks = [tower(tokenizer(prompts[i : i + batch_size]).to(device)).float() for i in range(0, len(prompts), batch_size)]
    per_prompt = torch.cat(chunks)
    owner_t = torch.tensor(owner, device=per_prompt.device)
    sums = torch.zeros(len(names), per_prompt.shape[1], device=per_prompt.device).index_add_(0, owner_t, per_prompt)
    return torch.nn.functional.normalize(sums, dim=-1).cpu()


class EmbeddingCache:
    """Vocabulary embeddings on disk, keyed by the text weights, the templates and the class names."""

    def __init__(self, folder: str):
        self.folder = folder

    def path(self, fingerprint: str, templates: Sequence[str], class_names: Sequence[str]) -> str:
        key = hashlib.sha256(json.dumps([fingerprint, list(templates), list(class_names)]).encode()).hexdigest()[:32]
        return os.path.join(self.folder, f"vocab-{key}.safetensors")

    def get_or_encode(self, tower: TextTower, tokenizer, class_names: Sequence[str], templates: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        names = validate_vocabulary(class_names)
        path = self.path(tower.fingerprint(), templates, names)
        if os.path.isfile(path):
            return load_file(path)["embeddings"]
        embeddings = encode_vocabulary(tower, tokenizer, names, templates, batch_size)
        os.makedirs(self.folder, exist_ok=True)
        # Write then rename, so a crash never leaves a truncated entry that later reads would trust.
        tmp = f"{path}.tmp{os.getpid()}"
        save_file({"embeddings": embeddings.contiguous()}, tmp, metadata={"class_names": json.dumps(names)})
        os.replace(tmp, path)
        return embeddings
