import os
import random

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU, tests that force the Triton kernels run them in Triton's CPU interpreter, which is
    # chosen when a kernel is defined, so before any fisa_rt.kernels.*_triton module is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fisa_rt import create_model
from helpers import open_gates


@pytest.fixture(autouse=True)
def _cpu_runs_the_references(monkeypatch):
    """kernels 'auto' measures CPU inference on the wall clock (kernels/dispatch.py); in tests two buckets could
    then pick implementations ~1e-7 apart by timing noise, so in-process tests run the references on CPU as
    before, and the tests of measuring opt back in (tests/kernels/test_dispatch.py)."""
    from fisa_rt.kernels import dispatch

    monkeypatch.setattr(dispatch, "measurable", lambda tensors, grad: all(t.is_cuda for t in tensors))


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_vit():
    torch.manual_seed(0)
    return create_model("fisa-tiny").eval()


@pytest.fixture(scope="session")
def tiny_convnext():
    torch.manual_seed(0)
    return create_model("fisa-tiny-convnext").eval()


@pytest.fixture(params=["fisa-tiny", "fisa-tiny-convnext"])
def tiny_model(request):
    """A fresh tiny model of each head (fresh, because tests may change gates or parameters)."""
    torch.manual_seed(0)
    model = create_model(request.param).eval()
    open_gates(model, 0.5)
    return model


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """A small synthetic dataset: 24 training and 8 validation scenes of 64 px."""
    from fisa_rt.data.synthetic import generate

    root = str(tmp_path_factory.mktemp("synthetic"))
    generate(root, "train", 24, seed=1, image_size=64)
    generate(root, "val", 8, seed=1, image_size=64)
    return root


@pytest.fixture(scope="session")
def clip_weights(synthetic_data, tmp_path_factory):
    """CLIP weights after a few steps of the contrastive stage."""
    from fisa_rt.train.trainer import TrainConfig, train

    clip = str(tmp_path_factory.mktemp("clip") / "clip.safetensors")
    train(TrainConfig(stage="clip", data=synthetic_data, out=clip, steps=2, batch_size=4, progress=False))
    return clip


@pytest.fixture(scope="session")
def generator_checkpoint(synthetic_data, clip_weights, tmp_path_factory):
    """A stage-2 checkpoint after a few steps of the generator stage."""
    from fisa_rt.train.trainer import TrainConfig, train

    generator = str(tmp_path_factory.mktemp("generator") / "generator.safetensors")
    train(
        TrainConfig(
            stage="generator",
            data=synthetic_data,
            out=generator,
            init=clip_weights,
            steps=2,
            batch_size=4,
            progress=False,
        )
    )
    return generator


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory):
    """`python export/build_engine.py` on the embedded default model, once per session (no TensorRT here:
    ONNX files, the ONNX Runtime fallback and the manifests)."""
    import contextlib
    import io
    import warnings

    from fisa_rt.export.build_engine import build, parse_args

    out = str(tmp_path_factory.mktemp("build"))
    log = io.StringIO()
    with contextlib.redirect_stdout(log), warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        written = build(parse_args(["--out", out]))
    return {"out": out, "log": log.getvalue(), "warnings": [str(w.message) for w in said], **written}


@pytest.fixture
def old_ptxas_blackwell(tmp_path, monkeypatch):
    """Triton 3.6's ptxas-blackwell (CUDA 12.9) as Triton finds it (TRITON_PTXAS_BLACKWELL_PATH): it lists
    sm_101a but no sm_110a, Jetson Thor's name under JetPack 7."""
    ptxas = tmp_path / "ptxas-blackwell"
    ptxas.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = --version ]; then echo "Cuda compilation tools, release 12.9, V12.9.86"; exit 0; fi\n'
        "cat <<'EOF'\n--gpu-name <gpu name>    (-arch)\n    Specify name of NVIDIA GPU.\n"
        "    Allowed values for this option:  'compute_100','sm_100a','sm_101a',\n    'sm_120a','sm_90a'\n\n"
        "--opt-level <N>    (-O)\n    'sm_110a' is not in the gpu-name list\nEOF\n"
    )
    ptxas.chmod(0o755)
    monkeypatch.setenv("TRITON_PTXAS_BLACKWELL_PATH", str(ptxas))
    return ptxas
