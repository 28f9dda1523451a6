"""User-facing errors.

Everything a user can cause (a bad image, an unknown model name, a vocabulary of the wrong width, a
checkpoint from elsewhere) raises a subclass of :class:`FisaError`, so the CLI can print one line and
exit non-zero while programming errors still surface as tracebacks.
"""


class FisaError(Exception):
    """Base class of every error a user can trigger."""


class ConfigError(FisaError, ValueError):
    """A model configuration is unknown or inconsistent."""


class InputError(FisaError, ValueError):
    """An image, mask or vocabulary tensor has the wrong shape, dtype or size."""


class CheckpointError(FisaError):
    """A checkpoint is missing, unreadable, not a fisa-rt file, or would be overwritten."""


class MissingDependencyError(FisaError, ImportError):
    """An optional dependency is needed for the requested feature."""


class PartialFailure(FisaError):
    """Some inputs of a batch failed (each already reported) while the others were processed: exit code 1,
    apart from the 2 of a run that did nothing."""

    exit_code = 1


class FisaWarning(UserWarning):
    """Something a user should know that does not stop the job (the CLI prints it as one line)."""


def warn(message: str) -> None:
    import warnings

    warnings.warn(message, FisaWarning, stacklevel=3)


def refuse_overwrite(path: str, overwrite: bool, error: type = InputError) -> None:
    """Nothing is replaced silently: an existing ``path`` is an error unless ``overwrite``."""
    import os

    if os.path.exists(path) and not overwrite:
        raise error(f"{path} exists; pass --overwrite to replace it")


def run_reporting_errors(job, debug: bool, prog: str) -> int:
    """Run ``job()``; a FisaError becomes one ``prog: error: ...`` line on stderr and exit code 2
    (the traceback only with ``debug``). Shared by every command-line entry point."""
    import sys
    import warnings

    def one_line(message, category, *args, **kwargs):
        if issubclass(category, FisaWarning):
            print(f"{prog}: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, *args, **kwargs)

    try:
        with warnings.catch_warnings():
            shown = warnings.showwarning
            if not debug:
                warnings.showwarning = one_line
            job()
    except FisaError as exc:
        if debug:
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:  # Ctrl-C: files are written atomically, so there is nothing half-done to report
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0
