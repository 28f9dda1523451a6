"""Export of FISA checkpoints to deployable artefacts (installed as ``fisa_rt.export``).

``onnx_export`` writes the image model (portable or fused) and the text encoder; ``onnx_checks`` holds
the graph hygiene TensorRT needs; ``tensorrt_builder`` builds engines where TensorRT exists and
``plugins`` registers the Triton kernels as TensorRT plugins, whose PTX ``driver`` checks the NVIDIA driver
can read; ``manifest`` describes every artefact;
``build_engine.py`` is the command line.
"""
