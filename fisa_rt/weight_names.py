"""Parameter-name maps between other codebases' checkpoints and fisa-rt's modules, written as data.

A :class:`NameMap` is a list of rules, each a pair of templates ``(theirs, ours)``; ``{name}``
placeholders match one dotted component of digits (``{i}``) or the rest of the name (``{rest}``), and
are carried across. The same rules run in both directions, so a map is tested by sending every
name there and back. A :class:`Fused` rule joins several of their tensors into one of ours along dim
0 (e.g. separate q/k/v projections into ``nn.MultiheadAttention.in_proj_weight``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _pattern(template: str) -> re.Pattern:
    parts, last = [], 0
    for match in _PLACEHOLDER.finditer(template):
        parts.append(re.escape(template[last: match.start()]))
        name = match.group(1)
        parts.append(rf"(?P<{name}>\d+)" if name in ("i", "j") else rf"(?P<{name}>.+)")
        last = match.end()
    parts.append(re.escape(template[last:]))
    return re.compile("".join(parts) + r"\Z")


@dataclass(frozen=True)
class Fused:
    # Their names, concatenated in this order along dim 0, make our one tensor.
    theirs: Tuple[str, ...]
    ours: str


Rule = Union[Tuple[str, str], Fused]


class NameMap:
    """Renames tensors of a foreign state dict to fisa-rt's names (``to_ours``) and back (``to_theirs``)."""

    def __init__(self, rules: Sequence[Rule]):
        self.rules = list(rules)

    @staticmethod
    def _rename(name: str, source: str, target: str) -> Optional[str]:
        match = _pattern(source).match(name)
        return None if match is None else target.format(**match.groupdict())

    def our_name(self, theirs: str) -> Optional[str]:
        """Our name for one of their (unfused) tensors; None when no rule covers it."""
        for rule in self.rules:
            if isinstance(rule, Fused):
                continue
            renamed = self._rename(theirs, *rule)
            if renamed is not None:
                return renamed
        return None

    def to_ours(self, tensors: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
        """(renamed tensors, their names no rule covers)."""
        out, unmapped, used = {}, [], set()
        for rule in self.rules:
            if not isinstance(rule, Fused):
                continue
            for name in tensors:
                match = _pattern(rule.theirs[0]).match(name)
                if match is None:
                    continue
                parts = [t.format(**match.groupdict()) for t in rule.theirs]
                if all(p in tensors for p in parts):
                    out[rule.ours.format(**match.groupdict())] = torch.cat([tensors[p] for p in parts], dim=0)
                    used.update(parts)
        for name, tensor in tensors.items():
            if name in used:
                continue
            ours = self.our_name(name)
            if ours is None:
                unmapped.append(name)
            else:
                out[ours] = tensor
        return out, unmapped

    def to_theirs(self, tensors: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], List[str]]:
        """The inverse of :meth:`to_ours`: (their tensors, our names no rule covers)."""
        out, unmapped = {}, []
        for name, tensor in tensors.items():
            for rule in self.rules:
                if isinstance(rule, Fused):
                    match = _pattern(rule.ours).match(name)
                    if match is not None:
                        for part, chunk in zip(rule.theirs, tensor.chunk(len(rule.theirs), dim=0)):
                            out[part.format(**match.groupdict())] = chunk
                        break
                else:
                    renamed = self._rename(name, rule[1], rule[0])
                    if renamed is not None:
                        out[renamed] = tensor
                        break
            else:
                unmapped.append(name)
        return out, unmapped


def prefixed(prefix_theirs: str, prefix_ours: str, rules: Iterable[Rule]) -> List[Rule]:
    """``rules`` with a prefix added to both sides (one block of a larger model)."""
    out: List[Rule] = []
    for rule in rules:
        if isinstance(rule, Fused):
            out.append(Fused(tuple(prefix_theirs + t for t in rule.theirs), prefix_ours + rule.ours))
        else:
            out.append((prefix_theirs + rule[0], prefix_ours + rule[1]))
    return out


# Mask2Former's names (the FC-CLIP release) -> fisa_rt.pixel_decoder.DeformablePixelDecoder.
MASK2FORMER_PIXEL_DECODER: List[Rule] = [
    ("input_proj.{i}.{rest}", "input_proj.{i}.{rest}"),
    ("transformer.level_embed", "encoder.level_embed"),
    ("transformer.encoder.layers.{i}.{rest}", "encoder.layers.{i}.{rest}"),
    ("adapter_1.weight", "lateral.res2.0.weight"),
    ("adapter_1.norm.{rest}", "lateral.res2.1.{rest}"),
    ("layer_1.weight", "output.res2.0.weight"),
    ("layer_1.norm.{rest}", "output.res2.1.{rest}"),
    ("mask_features.{rest}", "mask_features.{rest}"),
]

# FC-CLIP's MultiScaleMaskedTransformerDecoder -> fisa_rt.mask_generator.MaskGenerator (decoder part).
FCCLIP_PREDICTOR: List[Rule] = [
    ("transformer_cross_attention_layers.{i}.multihead_attn.{rest}", "layers.{i}.cross.{rest}"),
    ("transformer_cross_attention_layers.{i}.norm.{rest}", "layers.{i}.norm_cross.{rest}"),
    ("transformer_self_attention_layers.{i}.self_attn.{rest}", "layers.{i}.self_attn.{rest}"),
    ("transformer_self_attention_layers.{i}.norm.{rest}", "layers.{i}.norm_self.{rest}"),
    ("transformer_ffn_layers.{i}.linear1.{rest}", "layers.{i}.ffn.0.{rest}"),
    ("transformer_ffn_layers.{i}.linear2.{rest}", "layers.{i}.ffn.2.{rest}"),
    ("transformer_ffn_layers.{i}.norm.{rest}", "layers.{i}.norm_ffn.{rest}"),
    ("decoder_norm.{rest}", "decoder_norm.{rest}"),
    ("query_feat.weight", "query_feat.weight"),
    ("query_embed.weight", "query_pos.weight"),
    ("level_embed.weight", "level_embed.weight"),
    # Mask2Former's 3-layer MLP keeps Linear layers in a list; ours interleaves ReLUs in a Sequential.
    ("mask_embed.layers.0.{rest}", "mask_embed.0.{rest}"),
    ("mask_embed.layers.1.{rest}", "mask_embed.2.{rest}"),
    ("mask_embed.layers.2.{rest}", "mask_embed.4.{rest}"),
    ("class_embed.layers.0.{rest}", "class_embed.0.{rest}"),
    ("class_embed.layers.1.{rest}", "class_embed.2.{rest}"),
    ("class_embed.layers.2.{rest}", "class_embed.4.{rest}"),
    ("_mask_pooling_proj.{rest}", "mask_pooling_proj.{rest}"),
    ("logit_scale", "logit_scale"),
]

# The whole FC-CLIP model (fcclip/fcclip.py: backbone.clip_model = open_clip's CLIP, sem_seg_head =
# FCCLIPHead with pixel_decoder and predictor, void_embedding) -> fisa_rt.model.FisaModel.
FCCLIP = NameMap(
    [
        ("backbone.clip_model.visual.{rest}", "backbone.visual.{rest}"),
        ("backbone.clip_model.{rest}", "text.clip.{rest}"),
        *prefixed("sem_seg_head.pixel_decoder.", "mask_generator.pixel_decoder.", MASK2FORMER_PIXEL_DECODER),
        *prefixed("sem_seg_head.predictor.", "mask_generator.", FCCLIP_PREDICTOR),
        ("void_embedding.weight", "mask_generator.void_embedding"),
    ]
)

# Hugging Face transformers' Mask2Former (Mask2FormerPixelDecoder, Mask2FormerTransformerModule)
# -> our DeformablePixelDecoder and MaskGenerator; the independent implementation the tests compare to.
HF_MASK2FORMER_PIXEL_DECODER = NameMap(
    [
        ("input_projections.{i}.{rest}", "input_proj.{i}.{rest}"),
        ("level_embed", "encoder.level_embed"),
        ("encoder.layers.{i}.self_attn.{rest}", "encoder.layers.{i}.self_attn.{rest}"),
        ("encoder.layers.{i}.self_attn_layer_norm.{rest}", "encoder.layers.{i}.norm1.{rest}"),
        ("encoder.layers.{i}.fc1.{rest}", "encoder.layers.{i}.linear1.{rest}"),
        ("encoder.layers.{i}.fc2.{rest}", "encoder.layers.{i}.linear2.{rest}"),
        ("encoder.layers.{i}.final_layer_norm.{rest}", "encoder.layers.{i}.norm2.{rest}"),
        ("adapter_1.{rest}", "lateral.res2.{rest}"),
        ("layer_1.{rest}", "output.res2.{rest}"),
        ("mask_projection.{rest}", "mask_features.{rest}"),
    ]
)
HF_MASK2FORMER_DECODER = NameMap(
    [
        ("queries_embedder.weight", "query_pos.weight"),
        ("queries_features.weight", "query_feat.weight"),
        ("level_embed.weight", "level_embed.weight"),
        ("decoder.layers.{i}.cross_attn.{rest}", "layers.{i}.cross.{rest}"),
        ("decoder.layers.{i}.cross_attn_layer_norm.{rest}", "layers.{i}.norm_cross.{rest}"),
        *(
            Fused(tuple(f"decoder.layers.{{i}}.self_attn.{p}_proj.{kind}" for p in "qkv"),
                  f"layers.{{i}}.self_attn.in_proj_{kind}")
            for kind in ("weight", "bias")
        ),
        ("decoder.layers.{i}.self_attn.out_proj.{rest}", "layers.{i}.self_attn.out_proj.{rest}"),
        ("decoder.layers.{i}.self_attn_layer_norm.{rest}", "layers.{i}.norm_self.{rest}"),
        ("decoder.layers.{i}.fc1.{rest}", "layers.{i}.ffn.0.{rest}"),
        ("decoder.layers.{i}.fc2.{rest}", "layers.{i}.ffn.2.{rest}"),
        ("decoder.layers.{i}.final_layer_norm.{rest}", "layers.{i}.norm_ffn.{rest}"),
        ("decoder.layernorm.{rest}", "decoder_norm.{rest}"),
        ("decoder.mask_predictor.mask_embedder.0.0.{rest}", "mask_embed.0.{rest}"),
        ("decoder.mask_predictor.mask_embedder.1.0.{rest}", "mask_embed.2.{rest}"),
        ("decoder.mask_predictor.mask_embedder.2.0.{rest}", "mask_embed.4.{rest}"),
    ]
)
