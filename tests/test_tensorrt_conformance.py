"""The project's TensorRT code against NVIDIA's real Python bindings, without TensorRT's libraries.

The bindings wheel (``tensorrt-cu12-bindings``, the test extra) installs ``tensorrt_bindings/``: the
compiled module ``tensorrt.so`` (importing it needs libnvinfer, which is not here) and the pure-Python
``tensorrt.plugin`` package. From it:

* the compiled module's names: pybind11 registers every class, enum member and method under a
  null-terminated string in the .so. The linker merges a string into the tail of a longer one
  (``float16`` into ``bfloat16``, ``IPluginV3`` into ``nvinfer1::IPluginV3``), so a name is present if
  the trailing identifier of some string equals or ends with it. A few names are thereby over-accepted
  (``INT8`` is the tail of ``UINT8``); none is missed.
* ``tensorrt.plugin`` runs for real, over a stand-in for the compiled module that has exactly those
  names (any other attribute raises AttributeError), so ``register_plugins`` goes through the package's
  own ``register``/``impl``/``aot_impl``/``autotune`` decorators and their validation (``_validate.py``).

Every TensorRT of the deployment matrix (docs/deploy.md) is checked: the installed wheel (test extra, 11.x),
and the pinned wheels of ``MATRIX``, which the test downloads once from PyPI (``pip download --no-deps``,
~1.2 MB each) into ``FISA_TRT_WHEEL_CACHE`` (default ``~/.cache/fisa-rt/tensorrt-bindings``). One pip
cannot install two versions of one package, so the extra cannot carry them; CI reaches PyPI to install the
extra anyway. A wheel that cannot be fetched skips its row with pip's reason, unless PyPI answered that the
pinned version does not exist, which fails. ``FISA_TRT_BINDINGS_WHEELS=a.whl:b.whl`` adds other wheels.
"""

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAILING_IDENTIFIER = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*$")
# The fused flavour (and so these names) needs tensorrt.plugin's AOT plugins: TensorRT >= 10.9.
PLUGIN_ONLY = {"PREFER_AOT_PYTHON_PLUGINS"}
# Names bound to TensorRT objects in the builder and the backend, whose attributes must exist.
TRT_OBJECTS = {"trt", "builder", "network", "parser", "config", "profile", "cache", "logger", "engine", "context"}


def _installed():
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = list(spec.submodule_search_locations)[0]
    files = {}
    for base, _, names in os.walk(folder):
        for name in names:
            if name.endswith((".py", ".so")):
                path = os.path.join(base, name)
                with open(path, "rb") as f:
                    files[os.path.relpath(path, folder).replace(os.sep, "/")] = f.read()
    return [("installed", files)]


def _wheel_files(path: str):
    """The bindings package's .py and .so files: tensorrt_bindings/ (TensorRT) or tensorrt_rtx_bindings/."""
    with zipfile.ZipFile(path) as wheel:
        listed = wheel.namelist()
        prefix = next(p for p in ("tensorrt_bindings/", "tensorrt_rtx_bindings/") if p + "__init__.py" in listed)
        names = [n for n in listed if n.startswith(prefix) and n.endswith((".py", ".so"))]
        return {n[len(prefix):]: wheel.read(n) for n in names}


def _wheels():
    paths = filter(None, os.environ.get("FISA_TRT_BINDINGS_WHEELS", "").split(os.pathsep))
    return [(os.path.basename(path), path) for path in paths]


# The deployment matrix's TensorRTs (docs/deploy.md) -> the bindings wheel of that version on PyPI (11.x
# is the installed one). Desktop 10.x is JetPack 7's 10.13 (>= 10.9, the first with tensorrt.plugin's AOT
# plugins); 10.9 and 10.16 were checked too (docs/design.md): add them with FISA_TRT_BINDINGS_WHEELS.
MATRIX = {
    "jetpack6-trt10.3": "tensorrt-cu12-bindings==10.3.0",  # JetPack 6.x: CUDA 12.6, TensorRT 10.3
    "jetpack7-trt10.13": "tensorrt-cu13-bindings==10.13.3.9",  # JetPack 7.x (and desktop 10.x): CUDA 13
    "tensorrt-rtx-1.7": "tensorrt-rtx-cu13-bindings==1.7.1.116",  # TensorRT for RTX
}


def _cached_wheel(requirement: str) -> str:
    """The wheel of ``requirement`` from the cache, downloaded from PyPI the first time."""
    cache = os.environ.get("FISA_TRT_WHEEL_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "fisa-rt", "tensorrt-bindings")
    name, version = requirement.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-"
    found = [f for f in os.listdir(cache) if f.startswith(pattern)] if os.path.isdir(cache) else []
    if not found:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", cache,
                   requirement]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if result.returncode:
            reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
            if "No matching distribution" in result.stderr or "Could not find a version" in result.stderr:
                pytest.fail(f"PyPI has no {requirement} (the matrix pins a wheel that does not exist): {reason}")
            pytest.skip(f"cannot download {requirement} from PyPI (offline?): {reason}")
        found = [f for f in os.listdir(cache) if f.startswith(pattern)]
    return os.path.join(cache, found[0])


BINDINGS = _installed() + [(row, None) for row in MATRIX] + _wheels()


class Bindings:
    def __init__(self, files):
        self.files = files
        so = next(v for k, v in files.items() if re.fullmatch(r"tensorrt[^/]*\.so", k))
        tails = (TRAILING_IDENTIFIER.search(s) for s in so.split(b"\0"))
        self.identifiers = {m.group(0).decode() for m in tails if m}
        version = re.search(rb'__version__ = "([\d.]+)', files["__init__.py"]).group(1)
        self.version = tuple(int(p) for p in version.split(b".")[:2])
        self.rtx = "tensorrt_rtx.so" in files  # TensorRT for RTX: versions 1.x, its own API
        self.plugin_files = {k[len("plugin/"):]: v for k, v in files.items() if k.startswith("plugin/")}

    def has(self, name: str) -> bool:
        return name in self.identifiers or any(s.endswith(name) for s in self.identifiers)


@pytest.fixture(scope="module", params=BINDINGS, ids=[name for name, _ in BINDINGS])
def bindings(request):
    name, files = request.param
    if files is None or isinstance(files, str):
        files = _wheel_files(files or _cached_wheel(MATRIX[name]))
    return Bindings(files)


def test_the_matrix_checks_each_deployment_rows_tensorrt():
    """docs/deploy.md's matrix names these versions; each has its row here (and so its wheel checked)."""
    deploy = open(os.path.join(ROOT, "docs", "deploy.md")).read()
    for requirement in MATRIX.values():
        version = requirement.split("==")[1]
        assert ".".join(version.split(".")[:2]) in deploy, requirement


def _attributes(path: str):
    """Attribute names the file reads from TensorRT objects (see TRT_OBJECTS), with their lines."""
    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    used = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain, base = [], node.value
        while isinstance(base, ast.Attribute) and not (isinstance(base.value, ast.Name) and base.value.id == "self"):
            chain.append(base.attr)
            base = base.value
        root = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", None)
        if root in TRT_OBJECTS and not any(n.startswith("__") for n in chain + [node.attr]):  # Python's, not TensorRT's
            used.setdefault(node.attr, node.lineno)
    return used


def test_builder_and_backend_use_only_names_the_compiled_module_has(bindings):
    missing = {}
    for path in ("export/tensorrt_builder.py", "fisa_rt/runtime/backends.py"):
        for name, line in _attributes(path).items():
            if (bindings.rtx or bindings.version < (10, 9)) and name in PLUGIN_ONLY:
                continue  # the fused flavour, which the builder refuses there
            if not bindings.has(name):
                missing[name] = f"{path}:{line}"
    assert not missing, f"TensorRT {bindings.version} has no {missing}"


def test_the_scan_sees_the_weakly_typed_api_tensorrt_11_removed(bindings):
    # The check can fail: TensorRT 11 dropped the FP16 builder flag and OBEY_PRECISION_CONSTRAINTS
    # (10.x has both), which the builder used before it went strongly typed.
    assert bindings.has("STRONGLY_TYPED") and bindings.has("execute_async_v3")
    weak = bindings.version < (11, 0) and not bindings.rtx  # TensorRT-RTX 1.x is strongly typed only
    assert bindings.has("FP16") == bindings.has("OBEY_PRECISION_CONSTRAINTS") == weak
    assert {"FP16", "OBEY_PRECISION_CONSTRAINTS"}.isdisjoint(_attributes("export/tensorrt_builder.py"))


STAND_IN = r'''
"""tensorrt stand-in: exactly the compiled module's names, each a class whose attributes are checked too."""
import json, os, sys
NAMES = set(json.load(open(os.environ["FISA_TRT_NAMES"])))
__version__ = os.environ["FISA_TRT_VERSION"]
_classes = {}

def _has(name):
    return name in NAMES or any(s.endswith(name) for s in NAMES)

def _get(name):
    if name.startswith("__") or not _has(name):
        raise AttributeError(f"tensorrt has no attribute {name!r}")
    if name not in _classes:
        _classes[name] = _Meta(name, (_Stub,), {})
    return _classes[name]

class _Meta(type):
    def __getattr__(cls, name):
        return _get(name)

class _Stub(metaclass=_Meta):
    def __init__(self, *args, **kwargs):
        pass
    def __getattr__(self, name):
        return _get(name)
    def __call__(self, *args, **kwargs):
        return self

def __getattr__(name):
    return _get(name)
'''

REGISTER = r'''
import json, sys
import tensorrt.plugin as trtp
from tensorrt.plugin import _lib
from fisa_rt.export.plugins import PLUGINS, register_plugins
register_plugins(arch=90)
defs = {k: v for k, v in _lib.QDP_REGISTRY.items()}
json.dump({
    "public": sorted(trtp.__all__),
    "plugins": {k: {"tensors": d.input_tensor_names, "attrs": list(d.input_attrs), "outputs": d.num_outputs,
                    "aot": d.aot_impl_func is not None, "jit": d.impl_func is not None,
                    "tune": d.autotune_func is not None,
                    "aot_attrs": d.aot_impl_attr_names, "jit_attrs": d.impl_attr_names}
                for k, d in defs.items()},
}, sys.stdout)
'''


def _run_plugin_package(bindings, tmp_path, script):
    package = tmp_path / "tensorrt"
    (package / "plugin").mkdir(parents=True)
    (package / "__init__.py").write_text(STAND_IN)
    for name, data in bindings.plugin_files.items():
        (package / "plugin" / name).write_bytes(data)
    names = tmp_path / "names.json"
    names.write_text(json.dumps(sorted(bindings.identifiers)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
           "FISA_TRT_NAMES": str(names), "FISA_TRT_VERSION": ".".join(map(str, bindings.version))}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=str(tmp_path))


def test_plugins_register_through_tensorrt_plugins_own_validation(bindings, tmp_path):
    if not bindings.plugin_files:
        pytest.skip(f"TensorRT {bindings.version} has no tensorrt.plugin (the fused flavour needs >= 10.9)")
    result = _run_plugin_package(bindings, tmp_path, REGISTER)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    from fisa_rt.export.plugins import PLUGINS

    assert set(report["plugins"]) == {f"fisa_rt::{p}" for p in PLUGINS}
    for plugin in report["plugins"].values():
        assert plugin["aot"] and plugin["jit"] and plugin["tune"] and plugin["outputs"] == 1
    attention = report["plugins"]["fisa_rt::MaskAttention"]
    assert attention["tensors"] == ["q", "k_img", "v_img", "k_self", "v_self", "mask_logits"]
    assert attention["attrs"] == attention["aot_attrs"] == attention["jit_attrs"] == ["grid_h", "grid_w", "threshold"]
    # every tensorrt.plugin name the plugin code reads is public API
    used = {n.attr for n in ast.walk(ast.parse(open(os.path.join(ROOT, "export/plugins.py")).read()))
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "trtp"}
    assert used and used <= set(report["public"]), used - set(report["public"])


CREATE = r'''
import json, sys
from types import SimpleNamespace as Field
import numpy as np
import tensorrt as trt
from tensorrt.plugin import _lib
from fisa_rt.export.plugins import register_plugins
register_plugins(arch=90)
made = {}
# the fields as TensorRT hands them to the creator (from the ONNX node's attributes): one-element arrays
for name, fields in (("MaskAttention", {"grid_h": np.array([40], np.int64), "grid_w": np.array([24], np.int64),
                                        "threshold": np.array([0.25], np.float64)}),
                     ("MaskPool", {"sigmoid": np.array([1], np.int64), "threshold": np.array([0.0], np.float64)})):
    desc = _lib.QDP_REGISTRY["fisa_rt::" + name]
    creator = _lib._TemplatePluginCreator(name, "fisa_rt", {k: (False, np.int64) for k in desc.input_attrs})
    plugin = creator.create_plugin(name, "fisa_rt", [Field(name=k, data=v) for k, v in fields.items()], None,
                                   trt.QuickPluginCreationRequest.STRICT_AOT)
    made[name] = {k: [type(v).__name__, v.tolist()] for k, v in plugin.attrs.items()}
json.dump(made, sys.stdout)
'''


def test_the_plugins_are_created_from_the_fields_tensorrt_passes(bindings, tmp_path):
    """TensorRT 10.x's plugin code made an `int`/`float` attribute with int(field), which NumPy >= 2.4 refuses
    for the one-element array a field holds: the creation of every plugin with attributes failed there."""
    if not bindings.plugin_files:
        pytest.skip(f"TensorRT {bindings.version} has no tensorrt.plugin (the fused flavour needs >= 10.9)")
    result = _run_plugin_package(bindings, tmp_path, CREATE)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == {
        "MaskAttention": {"grid_h": ["ndarray", [40]], "grid_w": ["ndarray", [24]], "threshold": ["ndarray", [0.25]]},
        "MaskPool": {"sigmoid": ["ndarray", [1]], "threshold": ["ndarray", [0.0]]},
    }


def test_the_validation_rejects_what_the_old_plugin_code_did(bindings, tmp_path):
    """Postponed annotations (strings) and an aot_impl without a return annotation both fail the
    package's checks: the conformance run above would catch either."""
    if not bindings.plugin_files:
        pytest.skip(f"TensorRT {bindings.version} has no tensorrt.plugin")
    script = r'''
from typing import Tuple
import tensorrt.plugin as trtp
@trtp.register("fisa_check::Op")
def desc(x: trtp.TensorDesc, alpha: float) -> trtp.TensorDesc:
    return x.like()
try:
    @trtp.aot_impl("fisa_check::Op")
    def aot(x: trtp.TensorDesc, alpha: float, outputs: Tuple[trtp.TensorDesc], tactic: int):
        pass
except ValueError as exc:
    print("aot:", exc)
try:
    @trtp.register("fisa_check::Strings")
    def strings(x: "trtp.TensorDesc") -> "trtp.TensorDesc":
        return x
except (ValueError, TypeError) as exc:  # 10.x's check raises TypeError from issubclass
    print("strings:", exc)
'''
    result = _run_plugin_package(bindings, tmp_path, script)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "aot: No return annotation found for aot_impl" in result.stdout
    assert "strings: " in result.stdout
