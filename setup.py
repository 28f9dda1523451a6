from setuptools import setup

MODELOPT = [
    "nvidia-modelopt>=0.40",
    "onnx-graphsurgeon>=0.6.1",
    "ml_dtypes",
    "onnxslim>=0.1.76",
    "polygraphy>=0.53.4",
    "lief",
]

setup(
    name="fisa-rt",
    version="0.1.0",
    description="FISA open-vocabulary segmentation: PyTorch training, Triton kernels, ONNX/TensorRT deployment",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[
        "fisa_rt", "fisa_rt.data", "fisa_rt.train", "fisa_rt.runtime", "fisa_rt.serving", "fisa_rt.vocab",
        "fisa_rt.kernels", "fisa_rt.export",
    ],
    # `kernels/` and `export/` sit at the top of the repository beside the model (the folders show the
    # pipeline), but install as fisa_rt.kernels / fisa_rt.export so their names cannot clash with
    # other packages.
    package_dir={"fisa_rt": "fisa_rt", "fisa_rt.kernels": "kernels", "fisa_rt.export": "export"},
    package_data={
        "fisa_rt": ["model_configs/*.json", "vocabularies/*.json", "assets/*.safetensors", "assets/samples/*.png"]
    },
    install_requires=[
        # torch/torchvision are pinned by the README's install line (local wheels on the project machines).
        "torch>=2.4",
        "torchvision",
        "open_clip_torch>=2.24",
        "timm>=1.0",
        "safetensors>=0.4",
        "numpy",
        "pillow>=9.4",  # ImageOps.exif_transpose(in_place=True)
        "scipy",  # Hungarian matching in training
        "tqdm",
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "onnxscript",  # torch.onnx needs it
    ],
    # cityscapesscripts ships panopticapi's PQ code: the independent reference our PQ is tested against.
    extras_require={
        # video files and cameras for `fisa-rt infer --input`
        "video": ["opencv-python-headless"],
        # `fisa-rt infer --server`, Segmenter.from_server and export-triton's config checks (Triton's model_config_pb2)
        "serve": ["tritonclient[http,grpc]>=2.51"],
        # build_engine.py's fp16 ONNX (AutoCast) and int8/fp8 Q/DQ: NVIDIA ModelOpt without its [onnx] extra,
        # which pins onnx~=1.21 and onnxruntime-gpu (clashing with onnxruntime); only what AutoCast imports.
        "tensorrt": MODELOPT,
        # scikit-image ships the real photographs the parity tests use; pytest-benchmark runs benchmarks/;
        # the TensorRT bindings wheel installs without TensorRT's libraries (tests/test_tensorrt_conformance.py
        # reads it, nothing imports it); onnxruntime-extensions runs the fused ONNX's plugin kernels on CPU;
        # transformers: HF's Mask2Former is the independent reference for the deformable pixel decoder
        # (tested with 5.24; installs in ~20 s, pure Python).
        "test": [
            "pytest>=8",
            "pytest-benchmark>=4",
            "cityscapesscripts",
            "scikit-image",
            "opencv-python-headless",
            "tensorrt-cu12-bindings>=11,<12",
            "onnxruntime-extensions>=0.13",
            "transformers>=5,<6",
            # BuildKit's Dockerfile parser (Go, in a wheel): tests/test_dockerfiles.py parses the Dockerfiles
            # as `docker build` would, where no Docker engine runs
            "dockerfile>=3.4",
            # the serving tests' client; the server itself (nvidia-pytriton) installs --no-deps (README)
            "tritonclient[http,grpc]>=2.51",
            *MODELOPT,
        ],
    },
    entry_points={"console_scripts": ["fisa-rt=fisa_rt.cli:main"]},
)
