# syntax=docker/dockerfile:1
# fisa-rt on a desktop or server GPU (x86-64 or Arm SBSA): NVIDIA's TensorRT container (NGC 25.08:
# CUDA 13.0, TensorRT 10.13; its Python module included), torch's CUDA 13 build, fisa-rt on top (docs/deploy.md).
#   docker build -t fisa-rt .
#   docker run --rm -it --gpus all -v $PWD/build:/build fisa-rt \
#     python3 export/build_engine.py --flavour fused --precision fp32 --out /build
ARG BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.08-py3
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
# Ubuntu 24.04 bases mark the system Python externally managed (PEP 668); this image is the environment
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PIP_BREAK_SYSTEM_PACKAGES=1
WORKDIR /opt/fisa-rt

RUN python3 -c "import tensorrt; print('TensorRT', tensorrt.__version__)" \
    && (python3 -m pip --version || (apt-get update && apt-get install -y --no-install-recommends python3-pip \
        && rm -rf /var/lib/apt/lists/*))
RUN python3 -m pip install --index-url "${TORCH_INDEX}" torch torchvision
COPY setup.py README.md ./
COPY fisa_rt ./fisa_rt
COPY kernels ./kernels
COPY export ./export
# a CUDA build of torch (docker build has no GPU to ask, torch.version.cuda says which build it is)
RUN python3 -m pip install ".[tensorrt]" \
    && python3 -c "import torch, fisa_rt; assert torch.version.cuda, torch.__version__"
CMD ["fisa-rt", "--help"]
