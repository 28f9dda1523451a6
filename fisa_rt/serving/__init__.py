"""Serving fisa-rt on NVIDIA Triton Inference Server: the model repository (``repository``), the Python-backend
model it holds (``triton_model`` over ``handler``), the wire format both ends share (``protocol``), the client
(``client``) and a launcher for the ``tritonserver`` bundled in the ``nvidia-pytriton`` wheel (``bundled``).
docs/serving.md."""
