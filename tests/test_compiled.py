"""``--compile`` (fisa_rt/runtime/compiled.py) on CPU: the embedded fisa-tiny compiled with Inductor
(max-autotune-no-cudagraphs) gives the eager backend's outputs, and its cache goes where it is told."""

import numpy as np
import torch

from fisa_rt.predictor import default_checkpoint
from fisa_rt.runtime.backends import TorchBackend
from fisa_rt.runtime.compiled import MODE

from helpers import random_text


def test_compiled_backend_matches_eager_on_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    eager = TorchBackend(default_checkpoint(), "cpu", cuda_graphs=False)
    compiled = TorchBackend(default_checkpoint(), "cpu", cuda_graphs=False, compile=True)
    assert MODE == "max-autotune-no-cudagraphs"
    images = torch.randint(0, 256, (1, 3, 128, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    text = random_text(4, eager.embed_dim).numpy()
    want, got = eager.run(images, text), compiled.run(images, text)
    torch.testing.assert_close(got.class_scores, want.class_scores, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(got.mask_logits, want.mask_logits, rtol=1e-3, atol=1e-3)
    assert any((tmp_path / "inductor").iterdir())  # Inductor's caches, for the next process
    assert np.array_equal(got.mask_logits.argmax(1).numpy(), want.mask_logits.argmax(1).numpy())
