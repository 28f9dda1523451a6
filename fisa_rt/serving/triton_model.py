"""The ``model.py`` of the ``fisa_python`` model: fisa-rt's ``Segmenter`` on any artefact inside Triton's Python
backend. ``fisa-rt export-triton`` copies this file into the repository; its config's parameters say where
fisa-rt is installed and how to run it.

The stub process does not see the exporting environment: ``PYTHONPATH`` would put that environment's
site-packages ahead of the standard library (an obsolete PyPI ``typing`` backport there shadows Python's own),
and it skips ``.pth`` files (an editable install). So the site directories are added here with
``site.addsitedir``, after the standard library, and ``prepend_dirs`` (a numpy<2 folder for stubs built against
numpy 1, such as the one in nvidia-pytriton 0.7.0) go ahead of them. This happens when the stub imports this
file: by ``initialize`` the stub has imported numpy already. So the folders are in ``environment.json`` beside
this file, not in the config's parameters.
"""

import json
import os
import site
import sys


def _bootstrap(path):
    with open(path) as f:
        environment = json.load(f)
    for folder in environment.get("site_dirs", []):
        if folder not in sys.path:
            site.addsitedir(folder)
    for folder in reversed(environment.get("prepend_dirs", [])):
        sys.path.insert(0, folder)


_bootstrap(os.path.join(os.path.dirname(os.path.abspath(__file__)), "environment.json"))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})
        import triton_python_backend_utils as pb_utils

        from fisa_rt.runtime.segmenter import Segmenter
        from fisa_rt.serving.handler import Handler, Limits

        def value(key, default=""):
            return parameters.get(key, {}).get("string_value", default)

        folder = os.path.join(args["model_repository"], args["model_version"])
        threads = int(value("threads", "0")) or None
        segmenter = Segmenter.from_engine(
            os.path.join(folder, value("artefact")), backend=value("backend") or None, device=value("device") or None,
            cache_dir=value("cache_dir") or None, threads=threads,
        )
        limits = Limits(max_pixels=int(value("max_pixels", "100000000")), max_classes=int(value("max_classes", "2048")))
        self.handler = Handler(segmenter, limits)
        self.pb_utils = pb_utils

    def execute(self, requests):
        from fisa_rt.serving import protocol
        from fisa_rt.serving.handler import Request

        pb_utils = self.pb_utils
        decoded = []
        for request in requests:
            tensors = {}
            for name in (protocol.IMAGE, protocol.CLASSES):
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                tensors[name] = None if tensor is None else tensor.as_numpy()
            parameters = json.loads(request.parameters() or "{}")
            decoded.append(Request(tensors[protocol.IMAGE], tensors[protocol.CLASSES], parameters))
        responses = []
        for request, outcome in zip(requests, self.handler.execute(decoded)):
            if isinstance(outcome, Exception):  # a user's error: INVALID_ARG (HTTP 400), never INTERNAL
                error = pb_utils.TritonError(str(outcome), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            wanted = set(request.requested_output_names()) or set(outcome)
            tensors = [pb_utils.Tensor(name, array) for name, array in outcome.items() if name in wanted]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
