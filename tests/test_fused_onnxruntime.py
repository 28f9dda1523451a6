"""The fused ONNX end to end on ONNX Runtime, every fisa_rt:: node running its TensorRT plugin kernel in
Triton's interpreter with exactly TensorRT's parameters (export/fused_onnxruntime.py), against the portable
ONNX: the real graph wiring (input order, attributes, shapes) and the real plugin kernels.

Thresholds: both graphs are fp32 and differ only in summation order inside the fused ops (the kernels
accumulate in fp32 blocks, ONNX Runtime in its own order), as in tests/test_export.py's ONNX Runtime vs
PyTorch check: max |delta mask logit| <= 1e-4 and max |delta probability| <= 1e-5 (measured 3e-5, 5e-7).
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fisa_rt.kernels import plugin_launches
from fisa_rt.kernels.onnx_ops import DOMAIN

from test_export import _photos

pytest.importorskip("onnxruntime_extensions", reason="in the test extra: pip install -e '.[test]'")


@pytest.fixture(autouse=True)
def interpreter():
    if torch.cuda.is_available():
        pytest.skip("runs the plugin kernels in Triton's CPU interpreter; on a GPU the engine build runs their PTX")


@pytest.fixture
def launches(monkeypatch):
    """Counts the plugin kernels launched, by kernel."""
    counts = {}
    launch_jit = plugin_launches.launch_jit

    def counting(launch, inputs, outputs):
        counts[launch.spec.kernel] = counts.get(launch.spec.kernel, 0) + 1
        launch_jit(launch, inputs, outputs)

    monkeypatch.setattr(plugin_launches, "launch_jit", counting)
    return counts


def _compare(fused_path, portable_path, feed, launches):
    from fisa_rt.export.fused_onnxruntime import fused_session

    fused = fused_session(fused_path).run(None, feed)
    portable = ort.InferenceSession(portable_path, providers=["CPUExecutionProvider"]).run(None, feed)
    nodes = [n.op_type for n in onnx.load(fused_path).graph.node if n.domain == DOMAIN]
    kernels = {"AdapterAttention": "adapter_attention_plugin", "MaskAttention": "mask_attention_plugin",
               "MaskPool": "mask_pool_plugin"}
    assert launches == {kernels[n]: nodes.count(n) for n in set(nodes)}  # one launch per node, none skipped
    assert np.isfinite(fused[0]).all() and np.isfinite(fused[1]).all()  # outputs start poisoned (NaN)
    assert np.abs(fused[0] - portable[0]).max() <= 1e-4
    assert np.abs(fused[1] - portable[1]).max() <= 1e-5
    return nodes


def test_fused_onnx_with_the_plugin_kernels_equals_the_portable_onnx(artefacts, launches):
    from fisa_rt.checkpoint import load_model
    from fisa_rt.runtime.assets import default_checkpoint

    model, info = load_model(default_checkpoint())
    images = _photos(model.cfg.image_size)[[0, 3, 4, 5, 6]]  # a photograph (astronaut) and the bundled scenes
    feed = {"image": images.numpy(), "text": model.encode_vocabulary(info.vocabulary).numpy()}
    nodes = _compare(artefacts["fused"], artefacts["portable"], feed, launches)
    assert {"AdapterAttention", "MaskAttention"} <= set(nodes)


def test_mask_pool_plugin_in_the_fused_graph_of_a_mask_average_model(tmp_path, launches, capfd):
    """fisa-tiny-convnext's mask-average head: pool-only plugin, normalisation and logits as ONNX ops; with a mask
    threshold past 0, which the node's attribute must carry to the kernel (the shipped configs' 0.0 would hide a
    dropped one)."""
    from fisa_rt import create_model
    from fisa_rt.config import get_model_config
    from fisa_rt.export.onnx_export import export_image_model

    torch.manual_seed(0)
    cfg = get_model_config("fisa-tiny-convnext")
    cfg.classifier.mask_threshold = 0.3
    model = create_model(cfg).eval()
    paths = {f: export_image_model(model, str(tmp_path / f"{f}.onnx"), f) for f in ("portable", "fused")}
    # the exporter's C++ warnings (a custom node with no output type, say) reach the user's terminal
    assert "] Warning: " not in capfd.readouterr().err
    assert ("fisa_rt", 1) in {(o.domain, o.version) for o in onnx.load(paths["fused"]).opset_import}
    S = model.cfg.image_size
    images = _photos(S)[[1, 4]]  # a photograph (coffee) and a scene
    text = torch.nn.functional.normalize(torch.randn(7, model.embed_dim), dim=-1)
    seen = np.array([True, False, True, True, False, False, True])  # both ensemble branches in use
    feed = {"image": images.numpy(), "text": text.numpy(), "seen": seen}
    nodes = _compare(paths["fused"], paths["portable"], feed, launches)
    assert "MaskPool" in nodes
    pool = next(n for n in onnx.load(paths["fused"]).graph.node if n.op_type == "MaskPool")
    assert len(pool.input) == 2  # the text never reaches the plugin: TensorRT's GEMM does the logits
