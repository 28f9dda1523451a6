"""Choosing between kernels and references: config switch, automatic choice, clear refusals."""

import dataclasses

import pytest
import torch

from fisa_rt import ConfigError, create_model
from fisa_rt.config import get_model_config
from fisa_rt.kernels import KernelUnavailableError, use_triton

from kernel_checks import DEVICE, assert_close


def test_auto_picks_triton_only_for_cuda_tensors():
    cpu = torch.zeros(1)
    assert not use_triton("auto", cpu)
    assert not use_triton("reference", cpu)
    if torch.cuda.is_available():
        assert use_triton("auto", cpu.cuda())
        assert not use_triton("auto", cpu.cuda(), cpu)  # mixed devices: the reference raises its own error


def test_forcing_triton_on_cpu_without_the_interpreter_says_what_to_do(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(KernelUnavailableError, match="TRITON_INTERPRET=1"):
        use_triton("triton", torch.zeros(1))


def test_config_rejects_unknown_backends():
    with pytest.raises(ConfigError, match="kernels must be one of"):
        dataclasses.replace(get_model_config("fisa-tiny"), kernels="cuda")


@pytest.mark.parametrize("name", ["fisa-tiny", "fisa-tiny-convnext"])
def test_model_with_kernels_matches_model_with_references(name):
    """Forward and the SIMO gradients of a whole model (SEVE gates open) agree between the two paths."""
    torch.manual_seed(0)
    model = create_model(name).to(DEVICE)
    with torch.no_grad():
        for adapter in model.backbone.seve.values():
            adapter.gate.fill_(0.5)
    model.apply_simo()
    images = torch.randn(2, 3, 64, 64, device=DEVICE)
    text = torch.nn.functional.normalize(torch.randn(5, model.embed_dim, device=DEVICE), dim=-1)
    results = {}
    for backend in ("reference", "triton"):
        model.set_kernels(backend)
        model.zero_grad()
        out = model(images, text)
        out.class_logits.exp().sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[backend] = (out.class_logits.detach(), grads)
    ref_logits, ref_grads = results["reference"]
    logits, grads = results["triton"]
    assert model.cfg.kernels == "triton" and all(a.kernels == "triton" for a in model.backbone.seve.values())
    assert_close(logits, ref_logits.double(), 1e-4, what="class logits")
    assert grads.keys() == ref_grads.keys() and any("seve" in n for n in grads)
    for n in grads:
        assert_close(grads[n], ref_grads[n].double(), 1e-3 * max(1.0, float(ref_grads[n].abs().max())), what=n)
