"""FISA checkpoint -> ONNX: the image model (two flavours) and the text encoder.

Image model: ``image`` (B, 3, S, S) uint8 (or float32 in [0, 255]) + ``text`` (K, D) embeddings as a
runtime input ((K, M, D) for ``text.synonyms: max``; plus ``seen`` (K,) bool for the mask-average head;
:func:`graph_inputs`) -> ``mask_logits`` (B, Q, S/4, S/4), ``class_scores`` (B, Q, K+1) softmax probabilities
with void last, and optionally ``semantic`` (B, S, S) int32 labels computed in the graph — off by
default: it upsamples K score maps to S x S, which dominates the graph at large K (ONNX Runtime, fisa-tiny:
213 ms at K = 2000 against 18.8 ms without), and fisa-rt's runtime computes it on the host anyway. B and K are
dynamic; S is fixed per export (the model's ViT position embeddings and the plugins are built for it).
Normalisation runs in the graph, so a device feeds raw pixels.

* ``portable``: standard ONNX ops only (opset 17: LayerNormalization is one node, which keeps
  TensorRT's FP16 LayerNorm accurate); runs in ONNX Runtime and on TensorRT 10.3 (JetPack 6).
* ``fused``: SEVE's adapter attention, the mask tokens' masked attention and the mask pooling are one
  custom node each (domain ``fisa_rt``), which TensorRT >= 10.9 maps to the Triton-kernel plugins.

Text encoder: ``tokens`` (P, L) int64 -> ``embeddings`` (P, D) L2-normalised; the runtime averages
prompts per class, so a device changes its vocabulary without PyTorch or open_clip.

Exporter: TorchScript-based ``torch.onnx.export(dynamo=False)``. It exports the tiny model in ~5 s
against ~28 s for the dynamo exporter on the 2-core CI machine, and an autograd Function's
``symbolic`` is the direct way to emit a custom node.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Dict, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from fisa_rt.atomic import atomic_path
from fisa_rt.errors import CheckpointError, InputError, refuse_overwrite
from fisa_rt.inference import InferenceWrapper
from fisa_rt.kernels.onnx_ops import fused_nodes
from fisa_rt.vocab.tokenizer import trim_padding

FLAVOURS = ("portable", "fused")
OPSET = 17


class TextEncoderForExport(nn.Module):
    def __init__(self, model, any_width: bool):
        super().__init__()
        self.text, self.any_width = model.text, any_width

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # the padding cut depends on the values, which a trace would record as a constant width: the runtime
        # cuts before the call, and a graph of fixed width runs open_clip's whole-context forward
        return self.text.encode_width(tokens) if self.any_width else self.text.clip.encode_text(tokens, normalize=True)


@contextlib.contextmanager
def _exporting(model, fused: bool = False):
    """The PyTorch references (the tracer sees standard ops), each fused op as one custom node where ``fused``
    (the fused flavour), and no nn.MultiheadAttention fast path: its fused ``_native_multi_head_attention`` op
    has no ONNX export."""
    before, fastpath = model.cfg.kernels, torch.backends.mha.get_fastpath_enabled()
    model.set_kernels("reference")
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings(), fused_nodes() if fused else contextlib.nullcontext():
            warnings.simplefilter("ignore")  # tracer warnings on Python ints from shapes: S is fixed by design
            yield
    finally:
        model.set_kernels(before)
        torch.backends.mha.set_fastpath_enabled(fastpath)


def graph_inputs(cfg, embed_dim: int) -> Dict[str, Tuple[Union[int, str], ...]]:
    """The image model's inputs, each dimension fixed (int) or dynamic (the name of its TensorRT profile):
    text gains a synonym axis for ``text.synonyms: max`` configs, and ``seen`` (K,) bool exists where the
    mask-average head's ensemble reads it. One table for the export, the engine profiles and the runtime."""
    S = cfg.image_size
    inputs = {
        "image": ("batch", 3, S, S),
        "text": ("classes", "synonyms", embed_dim) if cfg.text.synonyms == "max" else ("classes", embed_dim),
    }
    if cfg.classifier.head == "mask-average":
        inputs["seen"] = ("classes",)
    return inputs


def example_inputs(inputs: Dict[str, Tuple[Union[int, str], ...]], image_dtype: torch.dtype):
    """Tracing inputs: dynamic sizes get values that differ from each other and from 1, so no dimension
    is specialised or confused with another."""
    sample = {"batch": 1, "classes": 3, "synonyms": 2}
    shapes = {name: tuple(sample.get(d, d) for d in dims) for name, dims in inputs.items()}
    tensors = {
        "image": torch.randint(0, 256, shapes["image"], dtype=torch.uint8).to(image_dtype),
        "text": F.normalize(torch.randn(shapes["text"]), dim=-1),
    }
    if "seen" in inputs:
        tensors["seen"] = torch.tensor([True, False, True])
    return tuple(tensors[name] for name in inputs)


def export_image_model(
    model,
    path: str,
    flavour: str = "portable",
    input_dtype: str = "uint8",
    semantic: bool = False,
    overwrite: bool = False,
) -> str:
    if flavour not in FLAVOURS:
        raise InputError(f"flavour must be one of {FLAVOURS}; got {flavour!r}")
    if input_dtype not in ("uint8", "float32"):
        raise InputError(f"input dtype must be uint8 or float32; got {input_dtype!r}")
    refuse_overwrite(path, overwrite, CheckpointError)
    model = model.float().eval().cpu()
    wrapper = InferenceWrapper(model, semantic).eval()
    inputs = graph_inputs(model.cfg, model.embed_dim)
    example = example_inputs(inputs, torch.uint8 if input_dtype == "uint8" else torch.float32)
    outputs = ["mask_logits", "class_scores"] + (["semantic"] if semantic else [])
    dynamic = {name: {i: d for i, d in enumerate(dims) if isinstance(d, str)} for name, dims in inputs.items()}
    dynamic.update({"mask_logits": {0: "batch"}, "class_scores": {0: "batch", 2: "classes_plus_void"}})
    if semantic:
        dynamic["semantic"] = {0: "batch"}
    with atomic_path(path, overwrite) as tmp, _exporting(model, fused=flavour == "fused"):
        # No custom_opsets: the exporter gives the fisa_rt domain version 1 by itself, and naming the domain
        # prints a warning for a model with no fused op (FC-CLIP's converted checkpoints, tests/test_fcclip.py).
        torch.onnx.export(
            wrapper, example, tmp, opset_version=OPSET, dynamo=False, input_names=list(inputs),
            output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True,
        )
        _write_static_output_dims(tmp, dict(zip(outputs, wrapper(*example))), dynamic)
    return path


def _self_attention(mha: nn.MultiheadAttention, query, key, value, need_weights=False, attn_mask=None):
    """``nn.MultiheadAttention`` on a batch-first self-attention (eval: no dropout), as the tracer can follow:
    it records MultiheadAttention's sequence length as a constant, so a graph traced at one width refused
    every other."""
    assert key is query and value is query, "a self-attention layer"
    qkv = F.linear(query, mha.in_proj_weight, mha.in_proj_bias).unflatten(-1, (3, mha.num_heads, -1))
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (3, N, heads, L, head_dim)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return mha.out_proj(out.transpose(1, 2).flatten(2)), None


@contextlib.contextmanager
def _width_free_attention(text: nn.Module):
    """:func:`_self_attention` in place of each of ``text``'s attention layers, or ``False`` where one is not
    a batch-first self-attention with packed projections (the graph then keeps the whole context)."""
    layers = [m for m in text.modules() if isinstance(m, nn.MultiheadAttention)]
    if not all(m.batch_first and m._qkv_same_embed_dim and m.bias_k is None for m in layers):
        yield False
        return
    for m in layers:
        m.forward = functools.partial(_self_attention, m)
    try:
        yield True
    finally:
        for m in layers:
            m.__dict__.pop("forward", None)  # idempotent: an export nested in this one restored it already


def export_text_encoder(model, path: str, overwrite: bool = False) -> str:
    """The text encoder, its prompt width a graph input where the text tower runs at any width (CLIP's): the
    runtime then cuts each batch's padding, about 6x fewer positions than CLIP's 77 (COCO's prompts)."""
    refuse_overwrite(path, overwrite, CheckpointError)
    model = model.float().eval().cpu()
    tokens = torch.as_tensor(model.tokenizer(["a photo of a cat.", "a wall.", "a photo of a large wooden table."]))
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_path(path, overwrite))
        stack.enter_context(_exporting(model))
        any_width = model.text.any_width and stack.enter_context(_width_free_attention(model.text))
        encoder = TextEncoderForExport(model, any_width).eval()
        dynamic = {"tokens": {0: "prompts"}, "embeddings": {0: "prompts"}}
        if any_width:
            # traced narrower than the context, so a width fixed by mistake fails the runtime's calls
            tokens, dynamic["tokens"][1] = tokens[:, : trim_padding(tokens.numpy()).shape[1]], "width"
        torch.onnx.export(
            encoder,
            (tokens,),
            tmp,
            opset_version=OPSET,
            dynamo=False,
            input_names=["tokens"],
            output_names=["embeddings"],
            dynamic_axes=dynamic,
        )
        _write_static_output_dims(tmp, {"embeddings": encoder(tokens)}, dynamic)
    return path


def _write_static_output_dims(path: str, produced: Dict[str, torch.Tensor], dynamic: Dict[str, Dict[int, str]]):
    """Writes each output dimension that no dynamic axis names as its size in the example run. Where the
    tracer's shape inference loses a size, it names the dimension (``Einsummask_logits_dim_2``), even where the
    image size or the model fixes it. The graph's readers then see a free dimension: Triton's model config
    (``-1``), ``fisa-rt inspect`` and ONNX Runtime's output shape check."""
    import onnx

    model = onnx.load(path, load_external_data=False)  # weights past 2 GB stay where the exporter put them
    for value in model.graph.output:
        for i, dim in enumerate(value.type.tensor_type.shape.dim):
            if i not in dynamic.get(value.name, {}):
                dim.dim_value = produced[value.name].shape[i]  # a oneof: the dim_param goes
    onnx.save(model, path)


def context_length(model) -> int:
    return int(torch.as_tensor(model.tokenizer(["x"])).shape[1])
