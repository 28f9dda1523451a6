"""The inference form of a FISA model: what the exports trace and the runtime's PyTorch backend runs."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class InferenceWrapper(nn.Module):
    """The model as every backend runs it: raw pixels (B, 3, S, S) uint8 or float32 in [0, 255] and text
    embeddings in; mask logits (B, Q, S/4, S/4) and class probabilities (B, Q, K + 1, void last) out, plus
    the (B, S, S) int32 semantic labels with ``semantic``. The ONNX exports trace it and the PyTorch backend
    calls it, so normalisation and the softmax are written once, for all of them."""

    def __init__(self, model, semantic: bool = True):
        super().__init__()
        self.model = model
        self.semantic = semantic
        cfg = model.cfg
        # float32 whatever torch's default dtype (a wrapper made under set_default_dtype(float64) refused every
        # later image as not of its weights' type)
        for name, values in (("mean", cfg.image_mean), ("std", cfg.image_std)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1) * 255.0,
                                 persistent=False)

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, seen: Optional[torch.Tensor] = None, text_valid=None
    ):
        """``seen`` (K,) bool: classes the generator was trained on (the mask-average head's ensemble);
        None scores every class as unseen. ``text_valid`` (K,) bool: padding classes are False (their
        scores are 0; the CUDA-graph runner pads vocabularies, fisa_rt.runtime.cuda_graphs)."""
        x = (image.float() - self.mean) / self.std
        out = self.model(x, text, seen=seen, text_valid=text_valid)
        scores = out.class_logits.softmax(-1)
        if not self.semantic:
            return out.mask_logits, scores
        # Mask2Former's semantic inference: class scores (void dropped) x mask probabilities, at the
        # input resolution.
        seg = torch.einsum("bqk,bqhw->bkhw", scores[..., :-1], out.mask_logits.sigmoid())
        seg = F.interpolate(seg, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return out.mask_logits, scores, seg.argmax(1).to(torch.int32)
