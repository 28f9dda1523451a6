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
    """``stage`` (a config parameter): ``segment`` (fisa_python), or ``pre`` / ``vocab`` / ``post``, the Python
    steps of the production ensemble (fisa_rt.serving.stages)."""

    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        config = json.loads(args["model_config"])
        parameters = config.get("parameters", {})

        def value(key, default=""):
            return parameters.get(key, {}).get("string_value", default)

        self.pb_utils = pb_utils
        self.stage = value("stage", "segment")
        folder = os.path.join(args["model_repository"], args["model_version"])
        artefact = os.path.join(folder, value("artefact"))
        threads = int(value("threads", "0")) or None
        from fisa_rt.serving.handler import Limits

        self.limits = Limits(max_pixels=int(value("max_pixels", "100000000")),
                             max_classes=int(value("max_classes", "2048")))
        if self.stage != "segment":
            from fisa_rt.runtime.threads import apply_torch_threads, resolve_threads
            from fisa_rt.serving.stages import Stages

            apply_torch_threads(resolve_threads(threads))
            self.stages = Stages(artefact)
            return
        from fisa_rt.runtime.segmenter import Segmenter
        from fisa_rt.serving.handler import Handler

        segmenter = Segmenter.from_engine(
            artefact, backend=value("backend") or None, device=value("device") or None,
            cache_dir=value("cache_dir") or None, threads=threads,
        )
        self.handler = Handler(segmenter, self.limits)

    def _inputs(self, request, names):
        tensors = {}
        for name in names:
            tensor = self.pb_utils.get_input_tensor_by_name(request, name)
            tensors[name] = None if tensor is None else tensor.as_numpy()
        return tensors

    def _response(self, request, outcome):
        pb_utils = self.pb_utils
        if isinstance(outcome, Exception):
            from fisa_rt.errors import EngineFailure, OutOfMemory

            # a user's error: INVALID_ARG (HTTP 400); short of memory: UNAVAILABLE (503), which clients retry, as
            # for an overloaded server; the engine failing on a checked request: INTERNAL (500)
            code = (pb_utils.TritonError.UNAVAILABLE if isinstance(outcome, OutOfMemory) else
                    pb_utils.TritonError.INTERNAL if isinstance(outcome, EngineFailure) else
                    pb_utils.TritonError.INVALID_ARG)
            error = pb_utils.TritonError(str(outcome), code)
            return pb_utils.InferenceResponse(output_tensors=[], error=error)
        wanted = set(request.requested_output_names()) or set(outcome)
        return pb_utils.InferenceResponse([pb_utils.Tensor(n, a) for n, a in outcome.items() if n in wanted])

    def execute(self, requests):
        if self.stage != "segment":
            return [self._response(r, self._stage(r)) for r in requests]
        from fisa_rt.serving import protocol
        from fisa_rt.serving.handler import Request

        decoded = []
        for request in requests:
            tensors = self._inputs(request, (protocol.IMAGE, protocol.CLASSES))
            parameters = json.loads(request.parameters() or "{}")
            decoded.append(Request(tensors[protocol.IMAGE], tensors[protocol.CLASSES], parameters))
        return [self._response(r, o) for r, o in zip(requests, self.handler.execute(decoded))]

    def _stage(self, request):
        from fisa_rt.serving import protocol
        from fisa_rt.serving.handler import failure
        from fisa_rt.serving.stages import names_of

        try:
            if self.stage == "pre":  # the ensemble's first step: fisa_python's checks, one error per request
                from fisa_rt.serving.handler import Request, check_request

                t = self._inputs(request, ("image", "classes"))
                checked = check_request(Request(t["image"], t["classes"], {}), self.limits)
                return self.stages.pre(checked.picture, checked.names)
            if self.stage == "vocab":
                t = self._inputs(request, ("classes", "embeddings"))
                return self.stages.vocabulary(names_of(t["classes"]), t["embeddings"])
            t = self._inputs(request, ("image", "classes", "content", "mask_logits", "class_scores"))
            task, labels, max_side = protocol.check_parameters(json.loads(request.parameters() or "{}"))
            return self.stages.post(t["image"][0], names_of(t["classes"]), t["content"], t["mask_logits"],
                                    t["class_scores"], task, labels, max_side)
        except Exception as exc:  # noqa: BLE001 -- a user's error or memory, as fisa_python's; a bug is raised
            return failure(exc)
