"""``fisa-rt inspect``: what an artefact is, what it takes and gives, and whether it can run here."""

from __future__ import annotations

import os
from typing import List

from ..errors import CheckpointError, InputError, MissingDependencyError, missing_file_error
from ..kernels.targets import describe as describe_gpu
from .backends import SUFFIXES, backend_for, check_engine_compatibility, resolve_artefact


def _load_onnx(path: str):
    import onnx

    try:
        return onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 -- protobuf's DecodeError and friends: a corrupt file, reported in one line
        raise CheckpointError(f"{path} is not a readable ONNX file ({type(exc).__name__}: {exc}); rebuild it") from None


def _onnx_io(model) -> List[str]:
    import onnx

    graph = model.graph

    def shape(value):
        dims = value.type.tensor_type.shape.dim
        return "x".join(d.dim_param or str(d.dim_value) for d in dims)

    def dtype(value):
        return onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type).lower()

    lines = [
        f"  input  {v.name}: {dtype(v)} [{shape(v)}]"
        for v in graph.input
        if v.name not in {i.name for i in graph.initializer}
    ]
    return lines + [f"  output {v.name}: {dtype(v)} [{shape(v)}]" for v in graph.output]


def _vocabulary_part(model) -> List[str]:
    """What ONNX Runtime runs once per vocabulary rather than once per image (fisa_rt.runtime.vocabulary_graph)."""
    from .vocabulary_graph import split_vocabulary

    try:
        split = split_vocabulary(model)
    except ValueError as exc:
        return [f"  ONNX Runtime runs every node once per image: {exc}"]
    if split is None:
        return ["  ONNX Runtime: every node runs once per image (no vocabulary-only part)"]
    return [
        f"  ONNX Runtime runs {len(split.vocabulary.graph.node)} nodes once per vocabulary, not per image "
        f"({len(split.boundary)} tensors into the image graph; SEVE's keys and values where the model has SEVE)"
    ]


def _precision(m) -> List[str]:
    """What an ONNX graph computes in: the fp16 and Q/DQ builds record it with how they were made; the exported
    graphs, the ONNX Runtime fallback and the text encoder record none, being fp32."""
    precision, mixed, quant = m.get("precision", "fp32"), m.get("mixed_precision"), m.get("quantization")
    if mixed:  # the build's own wording (export/build_engine.py)
        return [f"  precision {precision} (ModelOpt AutoCast; {len(mixed.get('fp32_nodes', []))} of "
                f"{mixed.get('nodes')} nodes kept fp32)"]
    if not quant:
        return [f"  precision {precision}"]
    from fisa_rt.export.parity import summary

    recipe, figures = quant.get("recipe") or {}, quant.get("parity")
    kept = list(recipe.get("scopes_kept") or []) + list(recipe.get("op_types_to_exclude") or [])
    if figures:
        seen = " (calibrated on its images)" if figures.get("calibrated_on_these_images") else ""
        parity = f"  ONNX Runtime check against fp32{seen}: {summary(figures)}"
    else:  # the build could not run the graph on ONNX Runtime's CPU kernels (fp8) and recorded no figures
        parity = "  not checked on ONNX Runtime: it could not run this Q/DQ graph on the CPU"
    return [
        f"  precision {precision} (ModelOpt Q/DQ; {(quant.get('qdq_nodes') or {}).get('QuantizeLinear')} "
        f"QuantizeLinear nodes, {recipe.get('calibration_method')} calibration on "
        f"{(quant.get('calibration') or {}).get('images')} images; kept {recipe.get('high_precision')}: "
        f"{', '.join(kept) or 'nothing'})",
        parity,
    ]


def _kernel_choices() -> List[str]:
    from fisa_rt.kernels.dispatch import describe_choices

    return describe_choices()


def describe(path: str) -> List[str]:
    path = resolve_artefact(path)
    if not os.path.isfile(path):
        raise missing_file_error(path, "artefact")
    if os.path.splitext(path)[1].lower() not in SUFFIXES:
        raise InputError(f"cannot tell what {path} is: inspect reads {', '.join(SUFFIXES)} files")
    kind = backend_for(path)
    if kind == "torch":
        from ..checkpoint import read_checkpoint_info

        info = read_checkpoint_info(path)
        cfg = info.config
        return [
            f"{path}: fisa-rt checkpoint (PyTorch backend; on CUDA each fused op runs its measured fastest kernel)",
            f"  model {cfg.name}: CLIP {cfg.clip.model_name}, head {cfg.classifier.head}, image {cfg.image_size}, "
            f"{cfg.mask_generator.num_queries} queries, templates {cfg.text.templates}, synonyms {cfg.text.synonyms}",
            f"  SEVE adapters: {'after ' + str(cfg.seve.layers) if cfg.seve.layers else 'none'}; "
            f"trained by: {', '.join(f'{k} {v}' for k, v in info.extra.items()) or 'not recorded'}",
            f"  trained vocabulary: {len(info.vocabulary)} classes",
        ] + _kernel_choices()
    from fisa_rt.export.manifest import read_manifest, sha256_file

    m = read_manifest(path)
    mismatch = [] if sha256_file(path) == m.get("sha256") else [
        f"  warning: {path} is not the file its manifest describes (sha256 differs); rebuild both"
    ]
    if m.get("kind") == "text-encoder":
        return [
            f"{path}: text encoder of model {m.get('model')} (ONNX Runtime, CPU), templates {m.get('templates')}, "
            f"context {m.get('context_length')} tokens, text dim {m.get('embed_dim')}, tokenizer {m.get('tokenizer')}",
            f"  built {m.get('created')} from {m.get('checkpoint', {}).get('file')}; sha256 {m.get('sha256', '')[:16]}",
        ] + _precision(m) + mismatch + _onnx_io(_load_onnx(path))
    # the backend that runs it, as --backend names it: a manifest's "backend" is "onnx" for the exported graphs
    # and "onnxruntime" for the fallback, both run by ONNX Runtime; the fused graph only in a TensorRT engine
    runs_in = "tensorrt" if kind == "onnxruntime" and m.get("flavour") == "fused" else kind
    lines = [
        f"{path}: {m.get('kind')} for {runs_in} ({m.get('flavour', '-')} graph), model {m.get('model')}",
        f"  image {m.get('image_size')}x{m.get('image_size')} {m.get('input_dtype')}, text dim {m.get('embed_dim')}, "
        f"{m.get('num_queries')} queries, templates {m.get('templates')}, synonyms {m.get('synonyms', 'mean')}, "
        f"in-graph semantic map: {m.get('semantic')}",
        f"  built {m.get('created')} from {m.get('checkpoint', {}).get('file')}; sha256 {m.get('sha256', '')[:16]}",
    ]
    lines += mismatch
    if kind == "onnxruntime":
        model = _load_onnx(path)
        lines += _precision(m) + _onnx_io(model)
        ops = m.get("ops") or {}
        custom = {k: v for k, v in ops.items() if "::" in k}
        if custom:
            lines.append(f"  custom ops (TensorRT plugins): {custom}")
        return lines + (_vocabulary_part(model) if m.get("flavour") != "fused" else [])
    trt = m.get("tensorrt") or {}
    ptx = trt.get("plugin_ptx") or {}
    isa = f" (ISA {ptx['ptx_isa']})" if ptx.get("ptx_isa") else ""  # what the driver must read: deploy.md
    lines.append(
        f"  {trt.get('runtime', 'TensorRT')} {trt.get('version')}, CUDA {trt.get('cuda')}, "
        f"{describe_gpu(trt.get('compute_capability'))}, plugin PTX {ptx.get('arch', '-')}{isa}, "
        f"precision {trt.get('precision')}, profiles {trt.get('profiles')}, plugins {len(trt.get('plugins') or [])}"
    )
    from fisa_rt.export.tensorrt_builder import import_tensorrt, runtime_name

    try:
        trt_module = import_tensorrt()
        installed, runtime = trt_module.__version__, runtime_name(trt_module)
    except MissingDependencyError:
        installed = runtime = None
    try:
        import torch

        capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
    except ImportError:
        capability = None
    if installed is None:
        lines.append("  warning: TensorRT is not installed here; this engine cannot run on this machine")
    else:
        try:
            from fisa_rt.export.driver import driver_cuda

            check_engine_compatibility(m, installed, capability, path, runtime, driver_cuda())
        except Exception as exc:  # noqa: BLE001 -- reported as a warning, not raised: inspect must always describe
            lines.append(f"  warning: {exc}")
    return lines
