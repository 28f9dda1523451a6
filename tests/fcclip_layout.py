"""FC-CLIP's checkpoint layout (names and shapes), written from FC-CLIP's source, independently of
fisa-rt's modules, so the converter's name map and the fcclip-convnext-l model are checked against it.

Sources (bytedance/fc-clip @ a8dc32c): fcclip/fcclip.py (void_embedding = nn.Embedding(1, D),
backbone.clip_model = open_clip's CLIP); fcclip/modeling/pixel_decoder/msdeformattn.py
(input_proj, transformer.level_embed, transformer.encoder.layers.*, adapter_1 / layer_1 as detectron2
Conv2d with .norm, mask_features; deformable FFN fixed at 1024); fcclip/modeling/transformer_decoder/
fcclip_transformer_decoder.py (transformer_{self,cross}_attention_layers, transformer_ffn_layers,
decoder_norm, query_feat, query_embed, level_embed, mask_embed / class_embed MLP .layers.*,
_mask_pooling_proj, logit_scale; input_proj is an empty Sequential when in_channels == hidden_dim);
Mask2Former's SetCriterion keeps the buffer criterion.empty_weight (num_classes + 1).
"""

from typing import Dict, Tuple

import torch

from fisa_rt.config import ClipConfig
from fisa_rt.clip import create_clip

Shapes = Dict[str, Tuple[int, ...]]


def clip_layout(clip_cfg: ClipConfig) -> Shapes:
    """open_clip's own state dict for the CLIP FC-CLIP wraps, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = create_clip(clip_cfg, load_pretrained=False)
    return {f"backbone.clip_model.{k}": tuple(v.shape) for k, v in model.state_dict().items()}


def head_layout(
    in_channels=(192, 384, 768, 1536), dim=256, mask_dim=256, embed_dim=768, queries=250, dec_layers=9,
    enc_layers=6, heads=8, points=4, enc_ffn=1024, dec_ffn=2048, num_classes=133,
) -> Shapes:
    """FC-CLIP's sem_seg_head + void embedding + criterion; defaults are the released COCO model's."""
    out: Shapes = {}
    pd = "sem_seg_head.pixel_decoder."
    levels = 3
    for i, c in enumerate(reversed(in_channels[1:])):  # res5, res4, res3
        out.update({f"{pd}input_proj.{i}.0.weight": (dim, c, 1, 1), f"{pd}input_proj.{i}.0.bias": (dim,),
                    f"{pd}input_proj.{i}.1.weight": (dim,), f"{pd}input_proj.{i}.1.bias": (dim,)})
    out[f"{pd}transformer.level_embed"] = (levels, dim)
    for i in range(enc_layers):
        p = f"{pd}transformer.encoder.layers.{i}."
        out.update({
            p + "self_attn.sampling_offsets.weight": (heads * levels * points * 2, dim),
            p + "self_attn.sampling_offsets.bias": (heads * levels * points * 2,),
            p + "self_attn.attention_weights.weight": (heads * levels * points, dim),
            p + "self_attn.attention_weights.bias": (heads * levels * points,),
            p + "self_attn.value_proj.weight": (dim, dim), p + "self_attn.value_proj.bias": (dim,),
            p + "self_attn.output_proj.weight": (dim, dim), p + "self_attn.output_proj.bias": (dim,),
            p + "norm1.weight": (dim,), p + "norm1.bias": (dim,),
            p + "linear1.weight": (enc_ffn, dim), p + "linear1.bias": (enc_ffn,),
            p + "linear2.weight": (dim, enc_ffn), p + "linear2.bias": (dim,),
            p + "norm2.weight": (dim,), p + "norm2.bias": (dim,),
        })
    out.update({
        f"{pd}mask_features.weight": (mask_dim, dim, 1, 1), f"{pd}mask_features.bias": (mask_dim,),
        f"{pd}adapter_1.weight": (dim, in_channels[0], 1, 1),
        f"{pd}adapter_1.norm.weight": (dim,), f"{pd}adapter_1.norm.bias": (dim,),
        f"{pd}layer_1.weight": (dim, dim, 3, 3), f"{pd}layer_1.norm.weight": (dim,), f"{pd}layer_1.norm.bias": (dim,),
    })
    pr = "sem_seg_head.predictor."
    for i in range(dec_layers):
        blocks = (("transformer_self_attention_layers", "self_attn"),
                  ("transformer_cross_attention_layers", "multihead_attn"))
        for block, attn in blocks:
            p = f"{pr}{block}.{i}."
            out.update({
                p + f"{attn}.in_proj_weight": (3 * dim, dim), p + f"{attn}.in_proj_bias": (3 * dim,),
                p + f"{attn}.out_proj.weight": (dim, dim), p + f"{attn}.out_proj.bias": (dim,),
                p + "norm.weight": (dim,), p + "norm.bias": (dim,),
            })
        p = f"{pr}transformer_ffn_layers.{i}."
        out.update({
            p + "linear1.weight": (dec_ffn, dim), p + "linear1.bias": (dec_ffn,),
            p + "linear2.weight": (dim, dec_ffn), p + "linear2.bias": (dim,),
            p + "norm.weight": (dim,), p + "norm.bias": (dim,),
        })
    out.update({
        f"{pr}decoder_norm.weight": (dim,), f"{pr}decoder_norm.bias": (dim,),
        f"{pr}query_feat.weight": (queries, dim), f"{pr}query_embed.weight": (queries, dim),
        f"{pr}level_embed.weight": (levels, dim),
        f"{pr}_mask_pooling_proj.0.weight": (dim,), f"{pr}_mask_pooling_proj.0.bias": (dim,),
        f"{pr}_mask_pooling_proj.1.weight": (dim, dim), f"{pr}_mask_pooling_proj.1.bias": (dim,),
        f"{pr}logit_scale": (),
        "void_embedding.weight": (1, embed_dim),
        "criterion.empty_weight": (num_classes + 1,),
    })
    for mlp, last in (("mask_embed", mask_dim), ("class_embed", embed_dim)):
        for j, rows in enumerate((dim, dim, last)):
            out[f"{pr}{mlp}.layers.{j}.weight"] = (rows, dim)
            out[f"{pr}{mlp}.layers.{j}.bias"] = (rows,)
    return out


def is_text_tower(name: str) -> bool:
    """The CLIP tensors FC-CLIP's release leaves out (its issues #14, #34), under FC-CLIP's names."""
    return name.startswith("backbone.clip_model.") and not name.startswith("backbone.clip_model.visual.")


def full_layout() -> Shapes:
    """The released fcclip_cocopan.pth, text tower included (as a complete FC-CLIP model holds it)."""
    return {**clip_layout(ClipConfig("convnext_large_d_320")), **head_layout()}


