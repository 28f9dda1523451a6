"""The deploy path runs one way: every module imports only from its own layer or the layers below it, and
no import cycle exists, counting the imports written inside functions (docs/design.md, "Layout").

Read from the source (AST), so an import that only runs on a GPU, on TensorRT or in one CLI verb counts too.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
# folder -> the package it installs as (setup.py's package_dir)
FOLDERS = {"kernels": "fisa_rt.kernels", "export": "fisa_rt.export", "fisa_rt": "fisa_rt"}

# From the bottom. A module may import its own layer and the layers before it, never one after it.
LAYERS = (
    "kernels",  # kernels/: the fused ops, their references and their tools (aot, gate, traffic); nothing else
    "model",  # fisa_rt/ outside the layers below: config, model, vocab, data, checkpoint, post-processing
    "export",  # export/: ONNX, TensorRT, plugins, manifests
    "runtime",  # fisa_rt/runtime/: backends over export's artefacts and the model, Segmenter
    "tools",  # training and evaluation, on top of the runtime
    "cli",  # the programs: `fisa-rt` and export/build_engine.py
)
# Modules whose folder does not tell their layer, with the reason.
PLACED = {
    # the export's command line: a program like cli.py, it takes the runtime's bundled checkpoint and sample
    # images (calibration) and the vocabulary tokenizer; nothing imports it
    "fisa_rt.export.build_engine": "cli",
    # the deprecated aliases of runtime.assets / runtime.images (one release)
    "fisa_rt.predictor": "runtime",
    "fisa_rt.evaluation": "tools",
    # int8 calibration pre-processes its images with the runtime's own Segmenter, so it calibrates on the
    # pixels an engine sees; only build_engine.py (cli) and the scripts import it
    "fisa_rt.export.quantization": "tools",
    # the client of a served model is a runtime backend seen from Python (Segmenter.from_server) and decodes
    # the server's responses into the runtime's results; the rest of serving/ sits on top of the runtime
    "fisa_rt.serving.client": "runtime",
    "fisa_rt.serving.protocol": "runtime",
    "fisa_rt.cli": "cli",
}
PREFIXES = (("fisa_rt.kernels", "kernels"), ("fisa_rt.export", "export"), ("fisa_rt.runtime", "runtime"),
            ("fisa_rt.train", "tools"), ("fisa_rt.serving", "tools"))


def layer_of(module: str) -> str:
    if module in PLACED:
        return PLACED[module]
    for prefix, layer in PREFIXES:
        if module == prefix or module.startswith(prefix + "."):
            return layer
    return "model"


def modules(folders=None, root=ROOT):
    """Dotted name -> (path, is_package) of every module under the folders."""
    found = {}
    for folder, package in (folders or FOLDERS).items():
        for path in sorted((root / folder).rglob("*.py")):
            parts = list(path.relative_to(root / folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join([package] + parts[:-1 if is_package else None])] = (path, is_package)
    return found


def _type_checking_only(tree) -> set:
    """The nodes under ``if TYPE_CHECKING:``: annotations for type checkers, never run."""
    return {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for statement in node.body
        for inner in ast.walk(statement)
    }


def imports(name: str, path: pathlib.Path, is_package: bool, known) -> set:
    """(imported module, line) of every import in the file that runs, at any depth, resolved to modules in
    ``known``: ``from package import submodule`` is an edge to the submodule, other from-imports one to the
    module."""
    edges = set()
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".")[: None if is_package else -1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([node.module] if node.module else []))
            submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
            targets = submodules if len(submodules) == len(node.names) else [base] + submodules
        else:
            continue
        edges |= {(target, node.lineno) for target in targets if target in known}
    return edges


def graph(folders=None, root=ROOT):
    known = modules(folders, root)
    return {name: imports(name, path, is_package, known) for name, (path, is_package) in known.items()}


def upward_edges(edges) -> list:
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    return sorted(
        f"{source}:{line} ({layer_of(source)}) imports {target} ({layer_of(target)})"
        for source, targets in edges.items()
        for target, line in targets
        if rank[layer_of(target)] > rank[layer_of(source)]
    )


def cycles(edges) -> list:
    """The strongly connected components of more than one module, and modules importing themselves (Tarjan)."""
    succ = {source: sorted({t for t, _ in targets if t != source}) for source, targets in edges.items()}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(succ):
        if v not in index:
            visit(v)
    found += [[source] for source, targets in edges.items() if any(t == source for t, _ in targets)]
    return sorted(found)


def test_no_import_points_up_the_stack():
    assert upward_edges(graph()) == []


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_every_module_has_a_layer_and_the_walk_sees_lazy_imports():
    edges = graph()
    assert {layer_of(name) for name in edges} == set(LAYERS)
    # a function-level import (TorchBackend's), and one from a package to its submodule (the gate's)
    assert "fisa_rt.inference" in {t for t, _ in edges["fisa_rt.runtime.backends"]}
    assert "fisa_rt.kernels.plugin_launches" in {t for t, _ in edges["fisa_rt.kernels.gate"]}


def test_the_checks_catch_an_upward_lazy_import_and_a_cycle_but_not_type_checking_imports(tmp_path):
    package = tmp_path / "fisa_rt"
    (package / "runtime").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "runtime" / "__init__.py").write_text("")
    (package / "runtime" / "backends.py").write_text("from .. import model\n")
    (package / "model.py").write_text("def f():\n    from .runtime import backends\n")
    (package / "config.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .runtime import backends\n"
    )
    edges = graph({"fisa_rt": "fisa_rt"}, tmp_path)
    assert upward_edges(edges) == ["fisa_rt.model:2 (model) imports fisa_rt.runtime.backends (runtime)"]
    assert cycles(edges) == [["fisa_rt.model", "fisa_rt.runtime.backends"]]
