"""Split an exported image model into the part that depends only on the vocabulary and the rest.

A graph takes the vocabulary (``text``, ``seen``) with every image, and recomputes from it, on every run, what
depends on nothing else: SEVE's key and value projections of the K class embeddings (and their reshapes and
transposes, in build_engine.py's ONNX Runtime-optimised graph, whose shapes are folded), the classifier's normalised
text. Their cost grows with K while the vocabulary stays the same for thousands of images.
``split_vocabulary`` moves those nodes into a vocabulary graph, run once per vocabulary, whose outputs become inputs
of the image graph: the same arithmetic on the same values. ONNX Runtime may fuse nodes differently on either side
of the cut, so outputs agree with the unsplit graph's to rounding (fp32: equal on the embedded model; fp16: ~1e-3 on
class probabilities, from where ORT's CPU places its fp32 casts).
Measured cost and gain: docs/design.md, "Stage and vocabulary cost on CPU".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

import numpy as np
import onnx
from onnx import helper

VOCABULARY_INPUTS = ("text", "seen")
# Nodes whose every run draws anew: never computed once for the image graph to reuse
RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


@dataclass
class VocabularySplit:
    """What ``split_vocabulary`` moved out of a model, which it leaves as the image graph: the original inputs but
    the vocabulary-only ones, plus the boundary tensors."""

    vocabulary: onnx.ModelProto  # vocabulary inputs -> boundary tensors
    boundary: List[str]  # tensors the vocabulary graph hands the image graph, in the vocabulary graph's output order
    vocabulary_inputs: List[str]  # the original inputs the vocabulary graph reads
    image_inputs: List[str]  # the original inputs the image graph still reads (the image, maybe ``seen``)


def _subgraph_names(node: onnx.NodeProto) -> Set[str]:
    """Every tensor name the node's subgraphs (If/Loop/Scan bodies) read, which may come from the outer scope."""
    names: Set[str] = set()
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        for graph in graphs:
            for inner in graph.node:
                names.update(inner.input)
                names.update(_subgraph_names(inner))
    return names


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _reads(node: onnx.NodeProto) -> Set[str]:
    return set(node.input) | _subgraph_names(node)


def _needed(nodes: Dict[int, onnx.NodeProto], wanted: Iterable[str]) -> List[int]:
    """The indices of ``nodes`` that produce ``wanted``, directly or through each other, in order."""
    want, chosen = set(wanted), []
    for index in sorted(nodes, reverse=True):
        if set(nodes[index].output) & want:
            chosen.append(index)
            want.update(nodes[index].input)
    return chosen[::-1]


def _keep_only(field, keep) -> None:
    """Delete, in place, the entries of a repeated protobuf field for which ``keep(index, entry)`` is false."""
    for i in reversed([i for i, entry in enumerate(field) if not keep(i, entry)]):
        del field[i]


def split_vocabulary(model: onnx.ModelProto) -> Optional[VocabularySplit]:
    """The vocabulary graph, leaving ``model`` as the image graph (in place: a ViT-B's 450 MB of weights are never
    copied); None, with ``model`` untouched, where no node depends on the vocabulary alone.

    Nodes are taken in the graph's (topological) order. A node moves when it reads at least one vocabulary
    tensor and nothing but vocabulary tensors and constants; nodes with subgraphs and random nodes stay, which is
    always correct."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    vocabulary_inputs = [i.name for i in graph.input if i.name in VOCABULARY_INPUTS]
    # an initializer that is also a graph input is a default the caller may override: not a constant
    constant: Set[str] = (set(initializers) - {i.name for i in graph.input}) | {""}  # "": an omitted optional input
    vocabulary: Set[str] = set(vocabulary_inputs)
    moved, kept = {}, {}  # by index in the graph
    for index, node in enumerate(graph.node):
        reads = set(node.input)
        if _has_subgraph(node) or node.op_type in RANDOM_OPS:
            kept[index] = node
        elif reads <= constant:
            constant.update(node.output)  # a Constant and what folds from it: copied where used, never a boundary
            moved[index] = node
        elif reads & vocabulary and reads <= constant | vocabulary:
            vocabulary.update(node.output)
            moved[index] = node
        else:
            kept[index] = node
    kept_reads = {name for node in kept.values() for name in _reads(node)} | {o.name for o in graph.output}
    # "" names an omitted optional input or output, never a tensor
    boundary = [n for node in moved.values() for n in node.output if n and n in vocabulary and n in kept_reads]
    if not boundary:
        return None
    vocabulary_nodes = [moved[index] for index in _needed(moved, boundary)]
    vocabulary_model = _vocabulary_model(model, vocabulary_nodes, vocabulary_inputs, boundary)
    used_inputs = [i.name for i in vocabulary_model.graph.input]
    typed = {o.name: o for o in vocabulary_model.graph.output}

    constants = {index: node for index, node in moved.items() if not set(node.output) & vocabulary}
    image_nodes = set(_needed(constants, kept_reads)) | set(kept)
    image_reads = {name for index in image_nodes for name in _reads(graph.node[index])}
    image_reads |= {o.name for o in graph.output}
    _keep_only(graph.node, lambda index, _: index in image_nodes)
    _keep_only(graph.input, lambda _, i: i.name not in vocabulary_inputs or i.name in image_reads)
    image_inputs = [i.name for i in graph.input]
    graph.input.extend(_free_shape(typed[name]) for name in boundary)
    _keep_only(graph.value_info, lambda _, v: v.name not in typed)
    _keep_only(graph.initializer, lambda _, t: t.name in image_reads or t.name in image_inputs)
    return VocabularySplit(vocabulary_model, boundary, used_inputs, image_inputs)


def _free_shape(value: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    """``value`` with its rank but no sizes: ONNX Runtime checks a graph input's sizes, while a size the exporter
    recorded for an inner tensor (a class count fixed by tracing, say) is only a hint it warns about."""
    free = onnx.ValueInfoProto()
    free.CopyFrom(value)
    for i, dim in enumerate(free.type.tensor_type.shape.dim):
        dim.Clear()
        dim.dim_param = f"{value.name}_{i}"
    return free


def _vocabulary_model(model: onnx.ModelProto, nodes: List[onnx.NodeProto], inputs: List[str],
                      outputs: List[str]) -> onnx.ModelProto:
    """``nodes`` as a model of their own, its outputs typed (shape inference on these few nodes where the
    exporter or ONNX Runtime's optimiser left a tensor without a type)."""
    graph = model.graph
    reads = {name for node in nodes for name in node.input}
    produced = {name for node in nodes for name in node.output}
    info = {v.name: v for v in list(graph.value_info) + list(graph.output) if v.name in produced}
    typed = [
        info[name] if name in info and info[name].type.HasField("tensor_type") else onnx.ValueInfoProto(name=name)
        for name in outputs
    ]
    vocabulary = helper.make_model(
        helper.make_graph(
            nodes, f"{graph.name}_vocabulary", [i for i in graph.input if i.name in inputs and i.name in reads],
            typed, initializer=[t for t in graph.initializer if t.name in reads],
            value_info=[v for name, v in info.items() if name not in outputs],
        ),
        opset_imports=model.opset_import, ir_version=model.ir_version,
    )
    vocabulary.functions.extend(model.functions)
    untyped = [o.name for o in vocabulary.graph.output if not o.type.HasField("tensor_type")]
    if untyped:
        inferred = onnx.shape_inference.infer_shapes(vocabulary)
        found = {v.name: v for v in inferred.graph.value_info if v.type.HasField("tensor_type")}
        missing = [name for name in untyped if name not in found]
        if missing:
            raise ValueError(f"cannot split the vocabulary part off: no type for {missing}")
        for output in vocabulary.graph.output:
            if output.name in found:
                output.CopyFrom(found[output.name])
    # a copy of its own: protobuf (upb) may join the memory of messages built from each other's parts, which would
    # keep the whole model's weights alive as long as this small graph
    return onnx.load_model_from_string(vocabulary.SerializeToString())


class VocabularyCache:
    """The vocabulary graph's session and its outputs for the few vocabularies used last, found by their values
    (never by identity: a caller may refill its array in place), so switching back and forth between vocabularies,
    as a server with several clients does, runs the vocabulary graph once per vocabulary."""

    KEPT = 4  # a handful: each holds K x 2 x width floats per SEVE adapter (15 MB for fisa-vit-b16 at K = 1203)

    def __init__(self, split: VocabularySplit, session, run_options=None):
        """``session`` runs ``split.vocabulary`` (ONNX Runtime, or anything with its ``run``), with ``run_options``."""
        self.session, self.run_options = session, run_options
        self.boundary, self.inputs, self.image_inputs = split.boundary, split.vocabulary_inputs, split.image_inputs
        self._entries: List[Tuple[List[Tuple[Any, ...]], Dict[str, np.ndarray]]] = []

    def image_feed(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """``feed`` (the unsplit graph's inputs) as the image graph takes it."""
        key = [feed[name] for name in self.inputs]
        # each input's shape, type and bits, taken once per call: -0.0 is not 0.0 to a graph that divides by it,
        # and a NaN vocabulary is its own
        signature = [(k.shape, k.dtype, k.tobytes()) for k in key]
        entries = self._entries  # one read: a concurrent call may replace the list, never change it
        hit = next((entry for entry in entries if entry[0] == signature), None)
        if hit is None:
            outputs = self.session.run(self.boundary, dict(zip(self.inputs, key)), self.run_options)
            hit = signature, dict(zip(self.boundary, outputs))
        self._entries = [hit] + [entry for entry in entries if entry is not hit][: self.KEPT - 1]  # most recent first
        # an input the caller leaves out keeps its default (an initializer listed as an input)
        return {**{name: feed[name] for name in self.image_inputs if name in feed}, **hit[1]}
