"""Vocabularies as text: class names (with comma-separated synonyms) x prompt templates -> prompts.

Plain Python, so that a device without PyTorch expands a vocabulary exactly as training did (the
runtime then averages the text encoder's prompt embeddings per class).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import List, Sequence, Tuple

from ..errors import ConfigError, InputError

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


def synonyms(name: str) -> List[str]:
    parts = [s.strip() for s in name.split(",") if s.strip()]
    if not parts:
        raise InputError(f"class name {name!r} is empty")
    return parts


def seen_classes(class_names: Sequence[str], trained_names: Sequence[str]) -> List[bool]:
    """Per class: does any of its synonyms name a class the mask generator was trained on (any synonym
    of ``trained_names``)? FC-CLIP's ``category_overlapping_mask`` (fcclip/fcclip.py,
    ``prepare_class_names_from_metadata``): exact string matches, after splitting on commas."""
    trained = {s for name in trained_names for s in synonyms(name)}
    return [not trained.isdisjoint(synonyms(name)) for name in class_names]


def validate_vocabulary(class_names: Sequence[str]) -> List[str]:
    if isinstance(class_names, (str, bytes)) or not isinstance(class_names, Iterable):  # "cat" is not 3 classes
        raise InputError(f"class names must be a list of strings; got {class_names!r:.60}")
    names = list(class_names)
    if not names:
        raise InputError("the vocabulary is empty: give at least one class name")
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise InputError(f"class names must be strings; got {bad[:3]}")
    for name in names:
        synonyms(name)
    return names


def expand_prompts(class_names: Sequence[str], templates: Sequence[str]) -> Tuple[List[str], List[int], List[int]]:
    """Every (synonym, template) prompt of a validated vocabulary, the synonym (numbered across the
    vocabulary) each prompt belongs to, and the class each synonym belongs to."""
    prompts, synonym_of, class_of = [], [], []
    for k, name in enumerate(class_names):
        for synonym in synonyms(name):
            for template in templates:
                prompts.append(template.format(synonym))
                synonym_of.append(len(class_of))
            class_of.append(k)
    return prompts, synonym_of, class_of
