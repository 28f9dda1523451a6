"""Run the ``tritonserver`` bundled in the ``nvidia-pytriton`` wheel (2.51, Python backend only) on this machine:
for the tests, the load test and ``fisa-rt serve``. Production runs NVIDIA's NGC container instead
(docs/serving.md).

The wheel pins numpy<2, so it is installed with ``--no-deps``; its Python-backend stub is built against numpy 1
and corrupts every TYPE_STRING input under numpy 2 ("Stub process is not healthy"), so the stub is given a
numpy<2 folder of its own (``numpy1_dir``) ahead of this environment's site-packages (README's test command
installs it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from typing import List, Optional

from ..errors import FisaError, MissingDependencyError

INSTALL = (
    'pip install --no-deps nvidia-pytriton==0.7.0 && pip install --no-deps --target "$VIRTUAL_ENV/triton-numpy" '
    '"numpy<2"'
)


def pytriton_dir() -> str:
    """The wheel's install folder (its package is not imported: it needs dependencies not installed)."""
    for folder in sys.path:
        if os.path.isfile(os.path.join(folder, "pytriton", "tritonserver", "bin", "tritonserver")):
            return folder
    raise MissingDependencyError(f"the bundled Triton server is not installed: {INSTALL}")


def numpy1_dir() -> str:
    """A folder holding numpy<2 for the bundled stub (``$VIRTUAL_ENV/triton-numpy``, or FISA_TRITON_NUMPY)."""
    folder = os.environ.get("FISA_TRITON_NUMPY") or os.path.join(sys.prefix, "triton-numpy")
    if not os.path.isfile(os.path.join(folder, "numpy", "__init__.py")):
        raise MissingDependencyError(f"no numpy<2 folder for the bundled Triton's Python stub at {folder}: {INSTALL}")
    return folder


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BundledServer:
    """``with BundledServer(repo) as server:`` a tritonserver on 127.0.0.1 with free ports, stopped on exit,
    whatever happened inside. ``server.http`` / ``server.grpc``: HOST:PORT; ``server.log``: its output file
    (a temporary one, removed on stop, unless ``log`` names one).
    Models load explicitly (``--model-control-mode explicit``) so a client can reload one after the repository
    changes."""

    def __init__(self, repository: str, models: Optional[List[str]] = None, ready_timeout: float = 120.0,
                 log: Optional[str] = None):
        self.repository = os.path.abspath(repository)
        self.models = models
        self.ready_timeout = ready_timeout
        self.log = log
        self._chosen_log = log  # None: the log goes in the scratch folder, made anew at each start
        self.process: Optional[subprocess.Popen] = None
        self._scratch: Optional[str] = None

    def _backends(self, root: str) -> str:
        """A backend folder holding the wheel's Python backend and its stub for this Python (the wheel's own
        folder is left untouched)."""
        bundled = os.path.join(pytriton_dir(), "pytriton", "tritonserver")
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = os.path.join(bundled, "python_backend_stubs", version, "triton_python_backend_stub")
        if not os.path.isfile(stub):
            raise MissingDependencyError(f"nvidia-pytriton has no Python backend stub for Python {version}")
        folder = os.path.join(root, "backends")
        shutil.copytree(os.path.join(bundled, "backends"), folder)
        shutil.copy2(stub, os.path.join(folder, "python"))
        return folder

    def start(self) -> "BundledServer":
        if self.process is not None and self.process.poll() is None:
            raise FisaError(f"this tritonserver is running (http {self.http}); stop() it before starting it again")
        self.process = None
        self._scratch = tempfile.mkdtemp(prefix="fisa-triton-")
        self.log = self._chosen_log or os.path.join(self._scratch, "server.log")
        # everything after the scratch folder is made inside the try: a failed start (no stub, a Popen that fails)
        # left it in /tmp, and a restart after stop() wrote its log into the removed folder
        try:
            backends = self._backends(self._scratch)
            self.http, self.grpc = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
            libs = os.path.join(pytriton_dir(), "nvidia_pytriton.libs")
            env = dict(os.environ)
            # the stub loads whichever libpython3.x the loader finds first: this interpreter's, so its standard library
            # matches the site-packages the model adds
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (libs, sysconfig.get_config_var("LIBDIR"), env.get("LD_LIBRARY_PATH")) if p
            )
            command = [
                os.path.join(pytriton_dir(), "pytriton", "tritonserver", "bin", "tritonserver"),
                f"--model-repository={self.repository}", f"--backend-directory={backends}",
                "--http-address=127.0.0.1", f"--http-port={self.http.rsplit(':', 1)[1]}",
                "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc.rsplit(':', 1)[1]}",
                "--allow-metrics=false", "--exit-timeout-secs=5", "--model-control-mode=explicit",
                *(f"--load-model={m}" for m in (self.models or ["*"])),
            ]
            with open(self.log, "wb") as out:
                self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FisaError(f"tritonserver exited with code {self.process.returncode}; see {self.log}:\n"
                                + self.tail())
            try:
                with urllib.request.urlopen(f"http://{self.http}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise FisaError(f"tritonserver not ready after {self.ready_timeout:.0f} s; see {self.log}:\n" + self.tail())

    def tail(self, lines: int = 20) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the server's process group at once (a crash, for tests)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL of the whole process group (the server and its stubs) after ``timeout``."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        if self.process is not None:
            try:  # stubs left behind by a killed server
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._scratch:  # the log too, unless the caller chose where it goes (``log=``)
            shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> "BundledServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
