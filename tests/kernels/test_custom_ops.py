"""The fused ops as torch.library operators: fake implementations, and one graph node under torch.compile."""

import os
import subprocess
import sys
from functools import partial

import torch

from fisa_rt.kernels.adapter_attention_triton import forward as adapter_attention_fwd
from fisa_rt.kernels.mask_attention import mask_attention_layout
from fisa_rt.kernels.mask_attention_triton import forward_op as mask_attention_fwd
from fisa_rt.kernels.mask_pooling_triton import cosine_forward

from kernel_checks import DEVICE, assert_close


def small_inputs():
    """On the GPU where there is one (the ops' real kernels), else on CPU in Triton's interpreter."""
    randn = partial(torch.randn, device=DEVICE)
    q = randn(1, 2, 9, 16)
    k, v = (randn(1, 2, 5, 16) for _ in "kv")
    valid = torch.tensor([[True, True, False, True, True]], device=DEVICE)
    masks = randn(1, 5, 8, 8)
    layout = mask_attention_layout(masks, (4, 4), 0.0, "triton")
    mask_args = (q[:, :, :5], *(randn(1, 2, 16, 16) for _ in "kv"), *(randn(1, 2, 5, 16) for _ in "kv"),
                 layout.inside, layout.block_counts, layout.block_indices, layout.block_q, layout.block_n, None)
    return (q, k, v, valid), mask_args, (masks, randn(1, 8, 4, 4), randn(3, 8), "binary", 0.0)


def test_fake_implementations_and_schemas():
    """opcheck: schema, fake tensor and AOT dispatch agree with the real op (on CPU, in Triton's interpreter)."""
    adapter, mask, pooling = small_inputs()
    for op, args in ((adapter_attention_fwd, adapter), (mask_attention_fwd, mask), (cosine_forward, pooling)):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


def test_compile_sees_one_node_per_op_with_no_graph_break():
    adapter, _, _ = small_inputs()
    adapter = [t.requires_grad_() if t.is_floating_point() else t for t in adapter]

    def f(q, k, v, valid):
        return adapter_attention_fwd(q, k, v, valid)[0] * 2

    explained = torch._dynamo.explain(f)(*adapter)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    out = compiled(*adapter)
    assert_close(out, f(*adapter).double(), 1e-5, what="compiled op")
    out.sum().backward()  # the registered autograd runs the backward op
    assert adapter[0].grad is not None and adapter[1].grad.abs().sum() > 0


def test_export_keeps_each_op_as_one_node():
    adapter, _, _ = small_inputs()

    class Adapter(torch.nn.Module):
        def forward(self, q, k, v, valid):
            return adapter_attention_fwd(q, k, v, valid)[0]

    program = torch.export.export(Adapter(), tuple(adapter))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count("fisa_rt.adapter_attention_fwd.default") == 1
    assert_close(program.module()(*adapter), Adapter()(*adapter).double(), 1e-6, what="exported op")


GPU_REGISTRATION = """
import os
import subprocess
import sys

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch._subclasses.functional_tensor import dispatch_functionalize
from torch.fx.experimental.proxy_tensor import make_fx
from fisa_rt.kernels import tuning
tuning.generation = lambda device: 90  # no GPU to ask: sm_90's config lists
from fisa_rt.kernels.adapter_attention_triton import forward

assert type(forward).__name__ == "CustomOpDef"
with FakeTensorMode():
    q = torch.empty(1, 12, 1600, 64, device="cuda", dtype=torch.float16)
    k = torch.empty(1, 12, 133, 64, device="cuda", dtype=torch.float16)
    graph = make_fx(dispatch_functionalize(lambda q, k: forward(q, k, k, None)[0]), tracing_mode="fake")(q, k)
print(sorted({str(n.target) for n in graph.graph.nodes if n.op == "call_function"}))
"""


def test_on_a_gpu_compile_traces_into_the_op_down_to_its_triton_kernels():
    """Without the interpreter the ops are triton_ops: AOT's functional decomposition (what torch.compile
    runs) sees the Triton kernel itself as a graph node, on fake CUDA tensors (no GPU needed)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", GPU_REGISTRATION], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "triton_kernel_wrapper_functional" in done.stdout and "fisa_rt" not in done.stdout
