"""Dockerfile (desktop) and Dockerfile.jetson: parsed by BuildKit's own parser (the ``dockerfile`` package
wraps moby/buildkit's Go parser), base images pinned by tag and named in docs/deploy.md, and nothing
installed that the base image has (TensorRT, CUDA) or that must come from elsewhere (Jetson's torch).
Building them needs Docker on a GPU machine; docs/deploy.md says so."""

import os
import re

import pytest

dockerfile = pytest.importorskip("dockerfile", reason="pip install -e '.[test]' (the dockerfile parser)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTRUCTIONS = {"ARG", "FROM", "ENV", "WORKDIR", "RUN", "COPY", "CMD", "LABEL", "SHELL", "USER", "EXPOSE"}
# The pinned tags, as docs/deploy.md's matrix gives them (JetPack 6: L4T r36.4; JetPack 7 and desktops:
# the CUDA 13 TensorRT container, which NVIDIA's CUDA 13 unification makes one image for SBSA and Thor)
BASES = {"Dockerfile": "nvcr.io/nvidia/tensorrt:25.08-py3", "Dockerfile.jetson": "nvcr.io/nvidia/l4t-jetpack:r36.4.0"}


def parse(name):
    return dockerfile.parse_file(os.path.join(ROOT, name))


def args(commands):
    return dict(c.value[0].split("=", 1) for c in commands if c.cmd == "ARG" and "=" in c.value[0])


@pytest.mark.parametrize("name", sorted(BASES))
def test_dockerfile_parses_and_uses_known_instructions(name):
    commands = parse(name)
    assert {c.cmd for c in commands} <= INSTRUCTIONS, name
    assert sum(c.cmd == "FROM" for c in commands) == 1 and commands[-1].cmd == "CMD"
    assert commands[-1].json  # exec form: signals reach fisa-rt


@pytest.mark.parametrize("name", sorted(BASES))
def test_base_image_is_pinned_by_tag_and_documented(name):
    commands = parse(name)
    image = next(c.value[0] for c in commands if c.cmd == "FROM")
    image = re.sub(r"\$\{(\w+)\}", lambda m: args(commands)[m.group(1)], image)
    assert image == BASES[name]
    repository, _, tag = image.rpartition(":")
    assert repository.startswith("nvcr.io/nvidia/") and tag and tag != "latest" and "/" not in tag
    assert image in open(os.path.join(ROOT, "docs", "deploy.md")).read()


def test_the_jetson_image_installs_nothing_the_container_has():
    runs = [c.value[0] for c in parse("Dockerfile.jetson") if c.cmd == "RUN"]
    installs = [r.split("pip install", 1)[1].split("&&")[0] for r in runs if "pip install" in r]  # their arguments
    # no TensorRT wheel (JetPack's own is in the image); fisa-rt's "[tensorrt]" extra is ModelOpt, not TensorRT
    assert not any(re.search(r"\btensorrt", re.sub(r"\.\[[\w,]+\]", "", i)) for i in installs)
    apt = [p for r in runs for p in re.findall(r"apt-get install ([^&|;)]*)", r)]
    assert [p.split()[-1] for p in apt] == ["python3-pip"]  # only pip, and only where the image lacks it
    torch = [i for i in installs if re.search(r"\btorch\b", i)]
    # torch from the Jetson index only (PyPI's aarch64 torch is a CPU build), before fisa-rt asks for it
    assert len(torch) == 1 and '--index-url "${TORCH_INDEX}"' in torch[0]
    assert args(parse("Dockerfile.jetson"))["TORCH_INDEX"].startswith("https://pypi.jetson-ai-lab.io/jp6/")
    assert installs.index(torch[0]) < next(n for n, i in enumerate(installs) if '".[tensorrt]"' in i)
    # the JetPack 7 build documented in the file's header uses the tags docs/deploy.md gives
    header = open(os.path.join(ROOT, "Dockerfile.jetson")).read()
    assert "BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.08-py3" in header and "jetson-ai-lab.io/sbsa/cu130" in header


def test_the_images_copy_what_setup_py_installs():
    import ast

    setup = open(os.path.join(ROOT, "setup.py")).read()
    package_dir = next(ast.literal_eval(k.value) for node in ast.walk(ast.parse(setup)) if isinstance(node, ast.Call)
                       for k in node.keywords if k.arg == "package_dir")
    for name in BASES:
        copied = {c.value[0] for c in parse(name) if c.cmd == "COPY"}
        assert set(package_dir.values()) <= copied and "setup.py" in copied, name
