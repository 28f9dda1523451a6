"""The host-side steps of the production ensemble ``fisa`` (fisa_pre -> fisa_text -> fisa_vocab -> fisa_image ->
fisa_post), free of Triton's types: each is the code local ``Segmenter.segment`` runs, so the ensemble returns
what local inference returns (tests/test_triton_repository.py runs the chain with ONNX Runtime in place of the
server's backends).

- ``pre``: image -> the model's canvas (1, 3, S, S) uint8 and the content size; class names -> the tokens of
  every (synonym, template) prompt, for ``fisa_text``;
- ``vocabulary``: per-prompt embeddings -> the (K, D) text (K, M, D for synonyms "max") and seen flags;
- ``post``: mask logits and class scores -> the label maps and segments, in fisa_python's wire format.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch

from ..vocab.prompts import expand_prompts, prompt_templates
from ..vocab import vocabulary as vocab
from ..runtime.backends import Backend, RawOutput
from ..runtime.segmenter import Segmenter
from . import protocol


class ManifestBackend(Backend):
    """An exported artefact's description without its model: the stages need its sizes, config and text encoder,
    not the engine (which ``fisa_image`` runs)."""

    name = "manifest"

    def __init__(self, manifest: Dict):
        self.manifest = manifest
        self.device = torch.device("cpu")
        self.applies_seen = "seen" in (manifest.get("inputs") or {})


class Stages:
    def __init__(self, artefact: str):
        """``artefact``: the exported image model (only its manifest and text encoder are read)."""
        from ..export.manifest import read_manifest

        self.segmenter = Segmenter(ManifestBackend(read_manifest(artefact, complete=True)), artefact, cache_dir="")
        self.templates = prompt_templates(self.segmenter.text_encoder.templates)

    def pre(self, image: np.ndarray, names: Sequence[str]) -> Dict[str, np.ndarray]:
        canvas, content = self.segmenter._canvas(image)
        prompts, _, _ = expand_prompts(vocab.Vocabulary(list(names)).names, self.templates)
        return {"canvas": canvas.cpu().numpy(), "content": np.array(content, np.int32),
                "tokens": self.segmenter.text_encoder.tokenize(prompts)}

    def vocabulary(self, names: Sequence[str], per_prompt: np.ndarray) -> Dict[str, np.ndarray]:
        """The prompts' embeddings averaged as ``vocabulary.encode`` averages them (the same function, fed the
        rows ``fisa_text`` computed)."""
        vocabulary = vocab.Vocabulary(list(names))
        rows = iter(per_prompt)
        text = vocab.encode(vocabulary, self.templates, len, lambda n: np.stack([next(rows) for _ in range(n)]),
                            batch_size=max(len(per_prompt), 1), synonyms=self.segmenter.text_encoder.synonyms)
        self.segmenter.set_vocabulary(vocabulary, text)
        outputs = {"text": self.segmenter.text}
        if self.segmenter.backend.applies_seen:
            outputs["seen"] = self.segmenter.seen_in_training
        return outputs

    def post(self, image: np.ndarray, names: Sequence[str], content: Sequence[int], mask_logits: np.ndarray,
             class_scores: np.ndarray, task: str, labels: str, max_side: int) -> Dict[str, np.ndarray]:
        segmenter = self.segmenter
        if segmenter.vocabulary is None or segmenter.vocabulary.names != list(names):
            segmenter.vocabulary = vocab.Vocabulary(list(names))
        raw = RawOutput(torch.from_numpy(mask_logits), torch.from_numpy(class_scores))
        S = segmenter.backend.image_size
        content = tuple(int(c) for c in content)
        result = segmenter._postprocess(image, raw.class_logits()[0], raw.mask_logits[0], content, task, (S, S))
        return protocol.encode_result(result, labels, max_side)


def names_of(classes: np.ndarray) -> List[str]:
    return [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in np.asarray(classes).reshape(-1)]
