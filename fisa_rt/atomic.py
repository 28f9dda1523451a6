"""Atomic file writes: every file fisa-rt writes (result PNG/JSON, embeddings, manifests, checkpoints,
training state, benchmark JSON, datasets) appears whole or not at all.

The data goes to a hidden temporary file in the target's folder (same file system, so the final step
is atomic); an interrupted or failed write removes the temporary file and leaves any earlier file at
``path`` untouched. Without ``overwrite`` the final step is ``os.link`` + unlink: it fails if ``path``
exists at that instant, so a concurrent writer's file is never replaced (a check beforehand would leave a
window between check and rename). The temporary name carries the writer's process id, so a later run can
remove the leftovers of one that was killed (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from typing import Any, Iterator, List, Sequence

from .errors import InputError, exists_error, refuse_overwrite

# ".<stem>.fisa-tmp<pid><suffix>": only names of this form are ever removed as stale
TEMPORARY = re.compile(r"^\..+\.fisa-tmp(?P<pid>[0-9]+)(\.[A-Za-z0-9]+)?$")


def _link_no_clobber(tmp: str, path: str) -> None:
    """Move ``tmp`` to ``path`` unless ``path`` exists, in one step."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise exists_error(path) from None
    except OSError as exc:
        # file systems without hard links (FAT, some network mounts): reserve the name with O_EXCL, which is
        # as atomic, then fill it; a crash in between leaves an empty file there, not a replaced one
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV):
            raise
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            raise exists_error(path) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(path: str, overwrite: bool = True) -> Iterator[str]:
    """Yields a temporary path to write to; on success it becomes ``path`` (replacing an existing file only
    when ``overwrite``; else an InputError, even if another process wrote ``path`` meanwhile). The temporary
    name keeps ``path``'s suffix, so writers that choose the format by suffix (PIL, ``np.savez``) behave the
    same. A folder that cannot take the file (missing, read-only, full) is an InputError naming ``path``."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    stem, suffix = os.path.splitext(name)
    tmp = os.path.join(folder, f".{stem}.fisa-tmp{os.getpid()}{suffix}")
    try:
        open(tmp, "wb").close()  # a folder that cannot take the file fails here, in words, whatever the writer
        yield tmp
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_no_clobber(tmp, path)
    except BaseException as exc:  # KeyboardInterrupt and SIGTERM included: never leave the partial file behind
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def refuse_unwritable(path: str, overwrite: bool) -> None:
    """Before a long job whose result goes to ``path``: an InputError now, rather than after the job, if
    ``path`` exists (without ``overwrite``) or its folder is missing, not a folder, or not writable."""
    refuse_overwrite(path, overwrite)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"cannot write {path}: its folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise InputError(f"cannot write {path}: its folder {folder} is not writable")
    if os.path.isdir(path):
        raise InputError(f"cannot write {path}: it is a folder")


@contextlib.contextmanager
def removed_on_failure(paths: Sequence[str]) -> Iterator[None]:
    """For a job that writes several files: if it fails (Ctrl-C and SIGTERM included), those of ``paths`` that
    did not exist when it started are removed, so no partial set is left to block a rerun; files that existed
    are left alone."""
    created = [p for p in paths if not os.path.lexists(p)]
    try:
        yield
    except BaseException:
        for path in created:
            with contextlib.suppress(OSError):
                os.remove(path)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(folder: str) -> List[str]:
    """Removes the temporary files that writers killed mid-write (SIGKILL, power loss) left in ``folder``:
    names of :data:`TEMPORARY`'s form whose process no longer runs; a live writer's are kept. Returns them."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            match = TEMPORARY.match(entry.name)
            if match and entry.is_file(follow_symlinks=False) and not _alive(int(match["pid"])):
                with contextlib.suppress(OSError):
                    os.remove(entry.path)
                    removed.append(entry.path)
    return removed


def write_json(path: str, data: Any, overwrite: bool = True, **dump_options) -> str:
    with atomic_path(path, overwrite) as tmp:
        with open(tmp, "w") as f:
            json.dump(data, f, **dump_options)
    return path


def save_image(image, path: str, overwrite: bool = True, **save_options) -> str:
    """Writes a PIL image (format from ``path``'s suffix; ``save_options`` go to ``Image.save``)."""
    with atomic_path(path, overwrite) as tmp:
        image.save(tmp, **save_options)
    return path
