"""User-facing errors.

Everything a user can cause (a bad image, an unknown model name, a vocabulary of the wrong width, a
checkpoint from elsewhere) raises a subclass of :class:`FisaError`, so the CLI can print one line and
exit non-zero while programming errors still surface as tracebacks.
"""

import contextlib
import os
import re
from typing import Optional


class FisaError(Exception):
    """Base class of every error a user can trigger."""


class ConfigError(FisaError, ValueError):
    """A model configuration is unknown or inconsistent."""


class InputError(FisaError, ValueError):
    """An image, mask or vocabulary tensor has the wrong shape, dtype or size."""


class CheckpointError(FisaError):
    """A checkpoint is missing, unreadable, not a fisa-rt file, or would be overwritten."""


class TrainingDiverged(FisaError):
    """Training's loss became NaN or infinite (most often a learning rate too high for the model)."""


class MissingDependencyError(FisaError, ImportError):
    """An optional dependency is needed for the requested feature."""


class OutOfMemory(FisaError):
    """A device or host allocation fisa-rt itself saw fail (a TensorRT context): the machine, not the input, hence
    exit 1, as for the allocation failures of the libraries (``out_of_memory``)."""

    exit_code = 1


class EngineFailure(FisaError):
    """An engine failed on inputs that passed every check (TensorRT's enqueue returned False; its log says why):
    neither the user's input nor their file, hence exit 1, and over a server not a refused request."""

    exit_code = 1


class PartialFailure(FisaError):
    """Some inputs of a batch failed (each already reported) while the others were processed: exit code 1,
    apart from the 2 of a run that did nothing (``written == 0``)."""

    def __init__(self, message: str, written: int = 1):
        super().__init__(message)
        self.written = written
        self.exit_code = 1 if written else 2


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it unwinds as for Ctrl-C (temporary files removed)."""

    exit_code = 143  # 128 + SIGTERM, what a shell reports for a process the signal killed


class FisaWarning(UserWarning):
    """Something a user should know that does not stop the job (the CLI prints it as one line)."""


def warn(message: str) -> None:
    import warnings

    warnings.warn(message, FisaWarning, stacklevel=3)


def missing_file_error(path: str, what: str, error: type = InputError) -> FisaError:
    """The error for a ``path`` that should name a readable file and does not, saying which case it is."""
    import os

    if os.path.isdir(path):
        return error(f"{what} {path} is a folder, not a file")
    if os.path.islink(path):
        return error(f"{what} {path} is a symbolic link that loops or leads nowhere")
    if os.path.exists(path):  # a FIFO, socket or device: reading one could block forever
        return error(f"{what} {path} is not a regular file (a pipe, socket or device)")
    return error(f"{what} {path} does not exist")


def path_argument(value, name: str) -> str:
    """``value`` as a path string, or an InputError naming the argument ``name`` (rather than os's TypeError
    or "embedded null byte", which name neither it nor the value)."""
    import os

    if not isinstance(value, (str, os.PathLike)):
        raise InputError(f"{name} must be a path; got {type(value).__name__}")
    path = os.fspath(value)
    if "\0" in path:
        raise InputError(f"{name} {path!r} holds a NUL character, which no file name can")
    return path


def exists_error(path: str, error: type = InputError) -> FisaError:
    """The one error for an output that would replace ``path`` without ``--overwrite``."""
    return error(f"{path} exists; pass overwrite=True (--overwrite) to replace it")


def refuse_overwrite(path: str, overwrite: bool, error: type = InputError) -> None:
    """Nothing is replaced silently: an existing ``path`` is an error unless ``overwrite``."""
    import os

    if os.path.exists(path) and not overwrite:
        raise exists_error(path, error)


def byte_size(count) -> str:
    """``count`` bytes as people read them: 64.5 MiB."""
    size = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024


def first_line(exc: BaseException) -> str:
    """An exception's first line, for a one-line message (a library's may run to many), or its type's name where
    it says nothing."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def out_of_memory(exc: BaseException) -> Optional[str]:
    """What could not be allocated, in a few words, where ``exc`` is an allocation that failed in numpy, PyTorch
    (CPU or CUDA) or ONNX Runtime (CPU or CUDA); None for any other error. By type where the library has one, else
    by its allocator's own words (ONNX Runtime raises one exception type for every failure)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, MemoryError):  # numpy's says what: "Unable to allocate 72.8 TiB for an array with shape ..."
        return text or "host memory"
    found = re.search(r"DefaultCPUAllocator: can't allocate memory: you tried to allocate (\d+) bytes", text)
    if found:  # a RuntimeError in torch 2.14, whatever type a later torch gives it
        return f"PyTorch could not allocate {byte_size(found[1])} of host memory"
    if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError; its advice on fragmentation is cut
        return re.split(r" (?:Including non-PyTorch|Of the allocated|If reserved|See documentation)", text)[0]
    if type(exc).__module__.startswith("onnxruntime"):
        found = re.search(r"Failed to allocate memory for requested buffer of size (\d+)", text)
        if found:
            return f"ONNX Runtime could not allocate {byte_size(found[1])}"
        if "bad_alloc" in text or "out of memory" in text:  # std::bad_alloc; the CUDA EP's "CUDA failure 2: ..."
            return "ONNX Runtime could not allocate memory"
    if isinstance(exc, RuntimeError) and text.startswith("can't start new thread"):  # threading's words for both
        return "could not start a thread: no memory for its stack, or the limit on threads reached"
    if "pthread_create failed" in text and "Cannot allocate memory" in text:  # ONNX Runtime's pool, as RuntimeError
        return "ONNX Runtime could not start a thread"
    if isinstance(exc, ImportError) and text.endswith("failed to map segment from shared object") and not (
        _on_noexec_mount(exc.path)  # glibc gives a noexec mount the same words
    ):
        return f"could not map {os.path.basename(exc.path or '') or 'a compiled module'} into memory"
    return None


def _on_noexec_mount(path: Optional[str]) -> bool:
    """Whether ``path`` lies on a file system mounted noexec (False where that cannot be told)."""
    try:
        return bool(path) and bool(os.statvfs(path).f_flag & os.ST_NOEXEC)
    except (OSError, AttributeError):  # gone, or no ST_NOEXEC (not Linux)
        return False


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) instead of killing the
    process where it stands, so writes in progress are undone as for Ctrl-C. Only the main thread can take
    signals, and a handler someone else installed is kept: elsewhere, and then, this changes nothing."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) not in (
        signal.SIG_DFL, None
    ):
        yield
        return

    def terminate(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


RUN_SMALLER = "use a smaller batch, fewer classes or smaller images, or free memory"


def run_reporting_errors(job, debug: bool, prog: str, out_of_memory_advice: str = RUN_SMALLER) -> int:
    """Run ``job()``; a FisaError becomes one ``prog: error: ...`` line on stderr and exit code 2, an allocation
    that failed one line with ``out_of_memory_advice`` and exit code 1 (the traceback only with ``debug``). Shared
    by every command-line entry point."""
    import sys
    import traceback
    import warnings

    def one_line(message, category, *args, **kwargs):
        if issubclass(category, FisaWarning):
            print(f"{prog}: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, *args, **kwargs)

    try:
        with warnings.catch_warnings(), sigterm_as_interrupt():
            shown = warnings.showwarning
            if not debug:
                warnings.showwarning = one_line
            with contextlib.redirect_stdout(_GuardedOutput(sys.stdout)):
                job()
                sys.stdout.flush()  # a closed pipe fails here, inside the handlers, not at the interpreter's exit
    except FisaError as exc:
        if isinstance(exc, OutputLost):
            _silence_stdout()
        if debug:  # the traceback, and still the exit code of a user error
            traceback.print_exc()
        else:
            print(f"{prog}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: files are written atomically, nothing is half-done
        if debug:
            traceback.print_exc()
        terminated = isinstance(exc, Terminated)
        print(f"{prog}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return Terminated.exit_code if terminated else 130
    except BrokenPipeError:  # `fisa-rt models | head -1`: the reader left; say nothing, as other tools do
        _silence_stdout()
        return 141  # 128 + SIGPIPE
    except Exception as exc:  # noqa: BLE001 -- only allocation failures are handled; anything else is re-raised
        what = out_of_memory(exc)
        if what is None:
            raise
        if debug:
            traceback.print_exc()
        else:
            print(f"{prog}: error: out of memory ({what}): {out_of_memory_advice}", file=sys.stderr)
        return 1
    return 0


class OutputLost(FisaError):
    """Standard output cannot be written (``> /dev/full``, a full disk): not the user's input, hence exit 1."""

    exit_code = 1


class _GuardedOutput:
    """sys.stdout whose write errors, other than a closed pipe, become OutputLost."""

    def __init__(self, stream):
        self._stream = stream

    def _guarded(self, call, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputLost(f"cannot write standard output: {exc.strerror or exc}") from None

    def write(self, text: str) -> int:
        return self._guarded(self._stream.write, text)

    def flush(self) -> None:
        self._guarded(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of the closed pipe does not print
    "Exception ignored ... BrokenPipeError" (Python's documented recipe, docs.python.org, signal module)."""
    import os
    import sys

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
