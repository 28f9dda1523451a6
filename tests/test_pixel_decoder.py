"""The deformable-attention pixel decoder and masked-attention decoder against an independent
implementation: Hugging Face transformers' Mask2Former, random weights shared through the name maps
of fisa_rt.weight_names (nothing downloads: the HF modules are built from a Mask2FormerConfig)."""

import pytest
import torch

from fisa_rt.config import MaskGeneratorConfig
from fisa_rt.mask_generator import MaskGenerator
from fisa_rt.pixel_decoder import DeformablePixelDecoder, multi_scale_deformable_attention
from fisa_rt.weight_names import FCCLIP, HF_MASK2FORMER_DECODER, HF_MASK2FORMER_PIXEL_DECODER, Fused, NameMap

hf = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")
from transformers import Mask2FormerConfig  # noqa: E402

# Reduced widths, realistic layout: a 256x320 image through a ConvNeXt-like trunk (strides 4-32).
CHANNELS = {"res2": 24, "res3": 48, "res4": 96, "res5": 192}
STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
IMAGE = (256, 320)
CFG = MaskGeneratorConfig(
    hidden_dim=64, num_queries=12, dec_layers=4, enc_layers=2, num_heads=4, dim_feedforward=96, mask_dim=64,
    pixel_decoder="deformable", deformable_ffn=80, deformable_points=4,
)
TOL = dict(atol=1e-5, rtol=1e-5)


def hf_config() -> Mask2FormerConfig:
    return Mask2FormerConfig(
        feature_size=CFG.hidden_dim, mask_feature_size=CFG.mask_dim, hidden_dim=CFG.hidden_dim,
        encoder_feedforward_dim=CFG.deformable_ffn, dim_feedforward=CFG.dim_feedforward, encoder_layers=CFG.enc_layers,
        decoder_layers=CFG.dec_layers + 1, num_attention_heads=CFG.num_heads, num_queries=CFG.num_queries,
        feature_strides=list(STRIDES.values()), common_stride=4, dropout=0.0, pre_norm=False,
        enforce_input_projection=False,
    )


def randomise(module: torch.nn.Module) -> None:
    """Weights far from any init (norms away from 1, offsets of several pixels), so a mis-mapped or
    mis-ordered tensor shows."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "sampling_offsets.bias" in name:
                p.uniform_(-3.0, 3.0)
            elif name.endswith("weight") and p.dim() == 1:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.3 / max(p.shape[-1], 1) ** 0.5 if p.dim() > 1 else 0.1)


def features(batch: int = 2):
    h, w = IMAGE
    return {n: torch.randn(batch, c, h // STRIDES[n], w // STRIDES[n]) for n, c in CHANNELS.items()}


def load_mapped(ours: torch.nn.Module, theirs: torch.nn.Module, name_map, prefix: str = "") -> None:
    mapped, unmapped = name_map.to_ours(theirs.state_dict())
    assert not unmapped
    missing, unexpected = ours.load_state_dict({prefix + k: v for k, v in mapped.items()}, strict=False)
    assert not unexpected
    return missing


def test_pixel_decoder_matches_transformers():
    theirs = hf.Mask2FormerPixelDecoder(hf_config(), feature_channels=list(CHANNELS.values())).eval()
    randomise(theirs)
    ours = DeformablePixelDecoder(CHANNELS, CFG).eval()
    assert not load_mapped(ours, theirs, HF_MASK2FORMER_PIXEL_DECODER)
    x = features()
    with torch.no_grad():
        expected = theirs(list(x.values()))
        mask_features, maps = ours(x)
    torch.testing.assert_close(mask_features, expected.mask_features, **TOL)
    assert len(maps) == len(expected.multi_scale_features) == 3
    for got, want in zip(maps, expected.multi_scale_features):
        torch.testing.assert_close(got, want, **TOL)


def test_masked_attention_decoder_matches_transformers():
    config = hf_config()
    pixel = hf.Mask2FormerPixelDecoder(config, feature_channels=list(CHANNELS.values())).eval()
    decoder = hf.Mask2FormerTransformerModule(CFG.hidden_dim, config).eval()
    randomise(pixel)
    randomise(decoder)
    ours = MaskGenerator(CFG, CHANNELS, STRIDES, embed_dim=32).eval()
    missing = load_mapped(ours, pixel, HF_MASK2FORMER_PIXEL_DECODER, "pixel_decoder.")
    missing = set(missing) & set(load_mapped(ours, decoder, HF_MASK2FORMER_DECODER))
    # HF's Mask2Former keeps its class head and void outside these modules.
    assert missing == {"class_embed.weight", "class_embed.bias", "void_embedding"}
    x = features()
    with torch.no_grad():
        pixel_out = pixel(list(x.values()))
        expected = decoder(list(pixel_out.multi_scale_features), pixel_out.mask_features).masks_queries_logits
        out = ours(x)
    got = [m for m, _ in out.aux] + [out.mask_logits]
    assert len(got) == len(expected) == CFG.dec_layers + 1
    for layer, (g, e) in enumerate(zip(got, expected)):
        torch.testing.assert_close(g, e, **TOL, msg=lambda m: f"decoder layer {layer}: {m}")


@pytest.mark.parametrize("name_map, module", [
    (HF_MASK2FORMER_PIXEL_DECODER, lambda: hf.Mask2FormerPixelDecoder(hf_config(), list(CHANNELS.values()))),
    (HF_MASK2FORMER_DECODER, lambda: hf.Mask2FormerTransformerModule(CFG.hidden_dim, hf_config())),
])
def test_name_maps_round_trip(name_map, module):
    """Every name maps there and back to itself, and tensors come back bit-identical."""
    state = module().state_dict()
    ours, unmapped = name_map.to_ours(state)
    assert not unmapped
    back, unmapped = name_map.to_theirs(ours)
    assert not unmapped
    assert set(back) == set(state)
    for name, tensor in state.items():
        assert torch.equal(back[name], tensor), name


def test_deformable_attention_samples_exact_pixels():
    """Sampling locations at pixel centres return those pixels; a point off the map reads zeros."""
    value = torch.arange(2 * 3 * 1 * 2, dtype=torch.float32).view(1, 6, 1, 2)  # one 2x3 level, 1 head, 2 ch
    shapes = [(2, 3)]
    # Centre of pixel (row 1, col 2) and a point outside the map.
    locations = torch.tensor([[(2.5 / 3, 1.5 / 2)], [(1.5, 0.5)]]).view(1, 2, 1, 1, 1, 2)
    weights = torch.ones(1, 2, 1, 1, 1)
    out = multi_scale_deformable_attention(value, shapes, locations, weights)
    torch.testing.assert_close(out[0, 0], value[0, 5, 0])
    torch.testing.assert_close(out[0, 1], torch.zeros(2))


# Mask2Former's original names (FC-CLIP keeps them) -> HF's, as HF's own converter renames them
# (transformers: models/mask2former/convert_mask2former_original_pytorch_checkpoint_to_pytorch.py,
# replace_pixel_module / replace_transformer_module / replace_keys_qkv_transformer_decoder).
# Composed with the HF maps checked numerically above, it must give what the FC-CLIP map gives.
HF_FROM_MASK2FORMER = {
    "sem_seg_head.pixel_decoder.": NameMap([
        ("adapter_1.0.weight", "adapter_1.weight"), ("adapter_1.1.{rest}", "adapter_1.norm.{rest}"),
        ("layer_1.0.weight", "layer_1.weight"), ("layer_1.1.{rest}", "layer_1.norm.{rest}"),
        ("input_projections.{i}.{rest}", "input_proj.{i}.{rest}"), ("level_embed", "transformer.level_embed"),
        ("encoder.layers.{i}.fc1.{rest}", "transformer.encoder.layers.{i}.linear1.{rest}"),
        ("encoder.layers.{i}.fc2.{rest}", "transformer.encoder.layers.{i}.linear2.{rest}"),
        ("encoder.layers.{i}.self_attn_layer_norm.{rest}", "transformer.encoder.layers.{i}.norm1.{rest}"),
        ("encoder.layers.{i}.final_layer_norm.{rest}", "transformer.encoder.layers.{i}.norm2.{rest}"),
        ("encoder.layers.{i}.self_attn.{rest}", "transformer.encoder.layers.{i}.self_attn.{rest}"),
        ("mask_projection.{rest}", "mask_features.{rest}"),
    ]),
    "sem_seg_head.predictor.": NameMap([
        ("decoder.layers.{i}.self_attn.out_proj.{rest}",
         "transformer_self_attention_layers.{i}.self_attn.out_proj.{rest}"),
        Fused(tuple(f"decoder.layers.{{i}}.self_attn.{p}_proj.weight" for p in "qkv"),
              "transformer_self_attention_layers.{i}.self_attn.in_proj_weight"),
        Fused(tuple(f"decoder.layers.{{i}}.self_attn.{p}_proj.bias" for p in "qkv"),
              "transformer_self_attention_layers.{i}.self_attn.in_proj_bias"),
        ("decoder.layers.{i}.self_attn_layer_norm.{rest}", "transformer_self_attention_layers.{i}.norm.{rest}"),
        ("decoder.layers.{i}.cross_attn.{rest}", "transformer_cross_attention_layers.{i}.multihead_attn.{rest}"),
        ("decoder.layers.{i}.cross_attn_layer_norm.{rest}", "transformer_cross_attention_layers.{i}.norm.{rest}"),
        ("decoder.layers.{i}.fc1.{rest}", "transformer_ffn_layers.{i}.linear1.{rest}"),
        ("decoder.layers.{i}.fc2.{rest}", "transformer_ffn_layers.{i}.linear2.{rest}"),
        ("decoder.layers.{i}.final_layer_norm.{rest}", "transformer_ffn_layers.{i}.norm.{rest}"),
        ("decoder.layernorm.{rest}", "decoder_norm.{rest}"),
        ("decoder.mask_predictor.mask_embedder.{i}.0.{rest}", "mask_embed.layers.{i}.{rest}"),
        ("queries_embedder.weight", "query_embed.weight"), ("queries_features.weight", "query_feat.weight"),
        ("level_embed.weight", "level_embed.weight"),
    ]),
}
HF_TO_OURS = {"sem_seg_head.pixel_decoder.": (HF_MASK2FORMER_PIXEL_DECODER, "mask_generator.pixel_decoder."),
              "sem_seg_head.predictor.": (HF_MASK2FORMER_DECODER, "mask_generator.")}


def test_fcclip_map_agrees_with_hf_converter_composed_with_hf_map():
    """Every Mask2Former tensor of FC-CLIP's head lands on the same fisa-rt tensor, with the same
    values, whether renamed by FCCLIP directly or via HF's names (whose map is numerically verified)."""
    from fcclip_layout import head_layout

    layout = head_layout(in_channels=(24, 48, 96, 192), dim=64, mask_dim=64, embed_dim=32, queries=12, dec_layers=3,
                         enc_layers=2, heads=4, enc_ffn=80, dec_ffn=96)
    checked = 0
    for prefix, from_m2f in HF_FROM_MASK2FORMER.items():
        theirs = {k[len(prefix):]: torch.randn(v) for k, v in layout.items() if k.startswith(prefix)}
        hf_tensors, not_mask2former = from_m2f.to_theirs(theirs)
        # FC-CLIP's own additions to Mask2Former's decoder have no HF counterpart.
        fcclip_only = {f"class_embed.layers.{j}.{p}" for j in range(3) for p in ("weight", "bias")}
        fcclip_only |= {f"_mask_pooling_proj.{j}.{p}" for j in range(2) for p in ("weight", "bias")} | {"logit_scale"}
        assert set(not_mask2former) == (fcclip_only if prefix.endswith("predictor.") else set())
        hf_map, our_prefix = HF_TO_OURS[prefix]
        via_hf, unmapped = hf_map.to_ours(hf_tensors)
        assert not unmapped
        direct, unmapped = FCCLIP.to_ours({prefix + k: v for k, v in theirs.items() if k not in not_mask2former})
        assert not unmapped
        assert set(direct) == {our_prefix + k for k in via_hf}
        for name, tensor in via_hf.items():
            assert torch.equal(direct[our_prefix + name], tensor), name
        checked += len(via_hf)
    assert checked > 100
