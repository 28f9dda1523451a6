"""Open-vocabulary mask classifiers: mask proposals + class-text embeddings -> class logits with void.

Two heads behind one interface (``forward(backbone_out, generator_out, text, logit_scale, seen)``
returning :class:`ClassifierOutput`):

* :class:`MaskAttentionHead` (FISA's, ViT): one mask token per proposal, started from the class token,
  runs through the last ViT blocks beside the image tokens. In each block it attends to itself and
  to the image patch tokens under its mask only, through its *own* query projection (initialised from
  CLIP's and trained by SIMO); keys, values, MLP and norms are CLIP's, frozen. Image tokens never see
  mask tokens. The final token goes through CLIP's ln_post and projection, and is scored with the
  head's own temperature (initialised from CLIP's logit scale, SIMO-trainable): a CLIP's contrastive
  temperature is tuned for image-caption batches, and can cap mask-class confidence far below the
  panoptic thresholds (the tiny CLIP learned 15.7, capping 33-way probabilities near 0.6).
* :class:`MaskAverageHead` (FC-CLIP's, ConvNeXt): mask-weighted average of per-location CLIP
  embeddings, ensembled geometrically with the mask generator's in-vocabulary prediction.

Both score with cosine similarity × CLIP's logit scale and append a void ("no object") logit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from fisa_rt.kernels import mask_attention, mask_attention_layout, mask_average_logits

from .backbone import BackboneOutput
from .config import ClassifierConfig
from .mask_generator import MaskGeneratorOutput, mask_pool


@dataclass
class ClassifierOutput:
    # (B, Q, K + 1) class logits, void last; log-probabilities for the mask-average head.
    logits: torch.Tensor


def text_rows(text: torch.Tensor) -> torch.Tensor:
    """(K, D) or (K, M, D) class text -> its rows, (K, D) or (K * M, D)."""
    return text.flatten(0, 1) if text.dim() == 3 else text


def best_synonym(logits: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Logits (..., K * M) against ``text`` (K, M, D) flattened -> (..., K): each class scores its best
    synonym, FC-CLIP's ``get_classification_logits``. (K, D) text: logits unchanged."""
    if text.dim() == 2:
        return logits
    return logits.view(*logits.shape[:-1], text.shape[0], text.shape[1]).amax(-1)


def cosine_logits(embeds: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """(B, Q, D) x (K, D) or (K, M, D) -> (B, Q, K): logit_scale * cosine similarity (best synonym)."""
    return best_synonym(logit_scale * F.normalize(embeds, dim=-1) @ F.normalize(text_rows(text), dim=-1).t(), text)


def with_void(embeds, text, void, logit_scale) -> torch.Tensor:
    """(B, Q, K + 1) cosine logits over the classes and, last, the void embedding."""
    void_logit = cosine_logits(embeds, void[None].to(embeds.dtype), logit_scale)
    return torch.cat([cosine_logits(embeds, text, logit_scale), void_logit], dim=-1)


class MaskAttentionHead(nn.Module):

    def __init__(
        self,
        visual: nn.Module,
        cfg: ClassifierConfig,
        embed_dim: int,
        clip_logit_scale: torch.Tensor,
        kernels: str = "auto",
    ):
        super().__init__()
        self.kernels = kernels
        blocks = visual.transformer.resblocks[len(visual.transformer.resblocks) - cfg.num_mask_layers:]
        self.mask_q_proj = nn.ModuleList()
        for block in blocks:
            width = block.attn.embed_dim
            proj = nn.Linear(width, width, bias=block.attn.in_proj_bias is not None)
            with torch.no_grad():
                proj.weight.copy_(block.attn.in_proj_weight[:width])
                if proj.bias is not None:
                    proj.bias.copy_(block.attn.in_proj_bias[:width])
            self.mask_q_proj.append(proj)
        self.void_embedding = nn.Parameter(torch.randn(embed_dim) * embed_dim ** -0.5)
        # log-space, as CLIP keeps it
        self.logit_scale = nn.Parameter(clip_logit_scale.detach().clone().reshape(()))
        self.threshold = cfg.mask_threshold

    def _block(
        self,
        block: nn.Module,
        q_proj: nn.Linear,
        image_in: torch.Tensor,
        tokens: torch.Tensor,
        mask_logits,
        grid,
        layout,
    ):
        attn = block.attn
        W, H = attn.embed_dim, attn.num_heads
        B, Q, _ = tokens.shape
        kv_weight = attn.in_proj_weight[W:]
        kv_bias = None if attn.in_proj_bias is None else attn.in_proj_bias[W:]
        # The image pass already computed these keys/values inside CLIP's fused attention, which
        # does not expose them; recomputing costs 2/3 of a QKV projection for num_mask_layers blocks.
        k_img, v_img = F.linear(block.ln_1(image_in[:, 1:]), kv_weight, kv_bias).chunk(2, dim=-1)
        normed = block.ln_1(tokens)
        k_self, v_self = F.linear(normed, kv_weight, kv_bias).chunk(2, dim=-1)

        def heads(t):
            return t.reshape(B, t.shape[1], H, W // H).transpose(1, 2)

        out = mask_attention(
            heads(q_proj(normed)),
            heads(k_img),
            heads(v_img),
            heads(k_self),
            heads(v_self),
            mask_logits,
            grid,
            self.threshold,
            kernels=self.kernels,
            layout=layout,
        )
        tokens = tokens + block.ls_1(attn.out_proj(out.transpose(1, 2).reshape(B, Q, W)))
        return tokens + block.ls_2(block.mlp(block.ln_2(tokens)))

    def forward(
        self,
        backbone: nn.Module,
        features: BackboneOutput,
        generator: MaskGeneratorOutput,
        text,
        logit_scale,
        seen=None,
        text_valid=None,
    ):
        """``logit_scale`` (CLIP's) is not used: this head scores with its own learned temperature. Each
        class's logit depends on its text only, so ``text_valid`` needs nothing here (the model masks)."""
        visual = backbone.visual
        blocks = visual.transformer.resblocks[len(visual.transformer.resblocks) - len(self.mask_q_proj):]
        Q = generator.mask_logits.shape[1]
        tokens = features.block_inputs[0][:, :1].expand(-1, Q, -1)
        # every layer attends under the same masks: decide inside/outside once
        layout = mask_attention_layout(generator.mask_logits, features.grid, self.threshold, kernels=self.kernels)
        for block, q_proj, image_in in zip(blocks, self.mask_q_proj, features.block_inputs):
            tokens = self._block(block, q_proj, image_in, tokens, generator.mask_logits, features.grid, layout)
        embeds = visual.ln_post(tokens) @ visual.proj
        scale = self.logit_scale.exp().to(embeds.dtype)
        return ClassifierOutput(logits=with_void(embeds, text, self.void_embedding, scale))


class MaskAverageHead(nn.Module):
    def __init__(self, cfg: ClassifierConfig, kernels: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.kernels = kernels

    def forward(
        self,
        backbone: nn.Module,
        features: BackboneOutput,
        generator: MaskGeneratorOutput,
        text,
        logit_scale,
        seen: Optional[torch.Tensor] = None,
        text_valid: Optional[torch.Tensor] = None,
    ):
        """``seen`` (K,) bool marks classes the mask generator was trained on (FC-CLIP's category
        overlap); None treats every class as unseen. ``text_valid`` (K,) bool: False for padded classes,
        which then take no probability in either softmax (None: every class is real)."""
        cfg = self.cfg
        # CLIP's temperature capped at 100 as FC-CLIP caps it (get_classification_logits,
        # fcclip/modeling/transformer_decoder/fcclip_transformer_decoder.py:44); a CLIP whose learned
        # scale went past 100 would otherwise sharpen the out-of-vocabulary scores FC-CLIP's weights expect
        logit_scale = logit_scale.clamp(max=100)
        if cfg.pooled_input == "features":
            last = features.features["res5"]
            masks = F.interpolate(generator.mask_logits, size=last.shape[-2:], mode="bilinear", align_corners=False)
            out_vocab = cosine_logits(backbone.embed_pooled(mask_pool(last, masks)), text, logit_scale)
        else:
            out_vocab = best_synonym(
                mask_average_logits(
                    generator.mask_logits, features.dense_embeds, text_rows(text), logit_scale, cfg.mask_weighting,
                    cfg.mask_threshold, kernels=self.kernels,
                ),
                text,
            )
        # FC-CLIP's generator scores with its own temperature, capped at 100 as FC-CLIP caps it.
        in_scale = logit_scale
        if generator.logit_scale is not None:
            in_scale = generator.logit_scale.exp().clamp(max=100).to(text.dtype)
        in_vocab = with_void(generator.class_embeds, text, generator.void_embedding, in_scale)
        if text_valid is not None:
            in_vocab = in_vocab.masked_fill(~torch.cat([text_valid, text_valid.new_ones(1)]), float("-inf"))
            out_vocab = out_vocab.masked_fill(~text_valid, float("-inf"))
        in_probs = in_vocab[..., :-1].softmax(-1)
        out_probs = out_vocab.softmax(-1)
        if seen is None:
            weight = torch.full_like(out_probs[0, 0], cfg.ensemble_beta)
        else:
            weight = torch.where(seen.to(out_probs.device), cfg.ensemble_alpha, cfg.ensemble_beta).to(out_probs.dtype)
        ensembled = (in_probs ** (1 - weight) * out_probs ** weight).log()
        void_prob = in_vocab.softmax(-1)[..., -1:]
        probs = torch.cat([ensembled.softmax(-1) * (1.0 - void_prob), void_prob], dim=-1)
        return ClassifierOutput(logits=torch.log(probs + 1e-8))
