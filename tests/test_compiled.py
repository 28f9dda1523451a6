"""``--compile`` (fisa_rt/runtime/compiled.py) on CPU: the embedded fisa-tiny compiled by Inductor gives the
eager backend's outputs, and its cache goes where it is told; the mode the GPU gets is checked apart."""

import os

import torch

import fisa_rt.runtime.compiled as compiled_module
from fisa_rt.runtime.assets import default_checkpoint
from fisa_rt.runtime.backends import TorchBackend

from helpers import random_text


def test_the_backend_compiles_with_the_mode_the_runner_needs(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, **options: calls.append(options) or module)
    TorchBackend(default_checkpoint(), "cpu", cuda_graphs=False, compile=True)
    assert calls == [{"mode": "max-autotune-no-cudagraphs", "dynamic": False}]


def test_the_inductor_cache_is_fisa_rts_unless_the_user_chose_one(monkeypatch, tmp_path):
    """torch writes its /tmp default into TORCHINDUCTOR_CACHE_DIR as soon as torch._dynamo is imported, which the
    kernels do: --compile's cache went to /tmp, not where README says."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    monkeypatch.setattr(torch, "compile", lambda module, **options: module)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    ours = str(tmp_path / "xdg" / "fisa-rt" / "inductor")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    cache_dir()  # what importing torch._dynamo does
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == os.path.abspath(default_cache_dir())
    compiled_module.compile_forward(torch.nn.Identity())
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == ours == cache_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    compiled_module.compile_forward(torch.nn.Identity())
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_compiled_backend_matches_eager_on_cpu(monkeypatch, tmp_path):
    # Inductor's own compile, in its default mode: max-autotune on CPU also times every GEMM template
    # (this test took 107 s of CPU with it; the compile alone, 37 s without, measured here)
    monkeypatch.setattr(compiled_module, "MODE", "default")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    eager = TorchBackend(default_checkpoint(), "cpu", cuda_graphs=False)
    compiled = TorchBackend(default_checkpoint(), "cpu", cuda_graphs=False, compile=True)
    images = torch.randint(0, 256, (1, 3, 128, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    text = random_text(4, eager.embed_dim).numpy()
    want, got = eager.run(images, text), compiled.run(images, text)
    torch.testing.assert_close(got.class_scores, want.class_scores, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(got.mask_logits, want.mask_logits, rtol=1e-3, atol=1e-3)
    assert any((tmp_path / "inductor").iterdir())  # Inductor's caches, for the next process
