"""Atomic file writes: every file fisa-rt writes (result PNG/JSON, embeddings, manifests, checkpoints,
training state, benchmark JSON, datasets) appears whole or not at all, and so does a folder that is one
result (``eval --predictions``, :func:`atomic_folder`).

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
import shutil
from typing import Any, Dict, Iterator, List, Optional, Sequence

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


def _cannot_write(path: str, exc: OSError) -> InputError:
    return InputError(f"cannot write {path}: {exc.strerror or exc}")


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
            raise _cannot_write(path, exc) from None
        raise


@contextlib.contextmanager
def atomic_folders(parent: str, names: Sequence[str], overwrite: bool = False,
                   staging_parent: Optional[str] = None) -> Iterator[str]:
    """Yields a hidden temporary folder in ``parent`` (which must exist) to write the folders ``names`` into; on
    success each becomes ``parent/name``, an earlier one replaced wholly (no file of it stays beside the new
    ones). An existing, non-empty ``parent/name`` is an InputError before the caller writes anything, unless
    ``overwrite``. On any failure, the swap, Ctrl-C and SIGTERM included, every ``parent/name`` is as it was and
    nothing of the new ones remains; a ``parent`` that cannot take them is an InputError naming it. A name may
    be a path below ``parent`` (``images/val``, missing folders on its way are made) and a file, so that
    several parts of one result swap as one (a dataset split: its image folders and annotation files). A name
    the caller did not write is a part the new result lacks (a build's artefacts depend on what is installed):
    an earlier ``parent/name`` goes with the rest of the earlier result.
    The hidden staging folder, and the earlier folders while they are swapped, live in ``staging_parent`` (default
    ``parent``; it must be on ``parent``'s file system): a reader that takes every folder of ``parent`` for
    an item, hidden ones too, must never see them there (a Triton model repository, serving.repository)."""
    for name in names:
        if not _empty_folder(os.path.join(parent, name)):
            refuse_overwrite(os.path.join(parent, name), overwrite)
    where = staging_parent or parent
    # TEMPORARY's form, so the next run removes it if this one is killed
    staging = os.path.join(where, f".{os.path.basename(names[0])}.fisa-tmp{os.getpid()}")
    try:
        remove_stale_temporaries(where)
        shutil.rmtree(staging, ignore_errors=True)  # a killed run's of the same id: a container's ids repeat
        os.mkdir(staging)
    except OSError as exc:
        raise _cannot_write(parent, exc) from None
    try:
        try:
            yield staging
        except OSError as exc:
            raise _cannot_write(parent, exc) from None
        _swap_folders(staging, parent, names, overwrite, staging_parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(path: str, overwrite: bool = False) -> Iterator[str]:
    """:func:`atomic_folders` for one folder that is one result (``eval --predictions``): yields the temporary
    folder to fill, which becomes ``path`` (through a link, the folder it leads to); ``path``'s parent is made
    if missing."""
    parent, name = os.path.split(os.path.realpath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {path}: {exc.strerror or exc}") from None
    with atomic_folders(parent, [name], overwrite) as staging:
        os.mkdir(os.path.join(staging, name))
        yield os.path.join(staging, name)


def _empty_folder(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path)


def _set_aside(parent: str, name: str, where: Optional[str]) -> str:
    folder, base = os.path.split(os.path.join(parent, name))
    return os.path.join(where or folder, f".{base}.fisa-old{os.getpid()}")


def missing_folders(folder: str) -> List[str]:
    """``folder`` and those of its parents that do not exist, outermost first."""
    missing = []
    while not os.path.lexists(folder) and folder != os.path.dirname(folder):
        missing.insert(0, folder)
        folder = os.path.dirname(folder)
    return missing


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)


def _swap_folders(staging: str, parent: str, names: Sequence[str], overwrite: bool, where: Optional[str]) -> None:
    """Each ``staging/name`` (where written) -> ``parent/name``; earlier folders are set aside under a name
    remove_stale_temporaries never matches (a crash between the renames loses nothing) and removed once every
    new one is in place; a failure puts them back and removes the folders made on the way."""
    moved, placed, made = [], [], []
    try:
        for name in names:
            target, new = os.path.join(parent, name), os.path.join(staging, name)
            if os.path.lexists(target):
                if not overwrite and not _empty_folder(target):  # made by someone else since the check
                    raise exists_error(target)
                os.rename(target, _set_aside(parent, name, where))
                moved.append(name)
            if not os.path.lexists(new):
                continue
            missing = missing_folders(os.path.dirname(target))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            made += missing
            os.rename(new, target)
            placed.append(name)
    except BaseException as exc:
        for name in reversed(placed):
            os.rename(os.path.join(parent, name), os.path.join(staging, name))
        for name in moved:
            os.rename(_set_aside(parent, name, where), os.path.join(parent, name))
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        if isinstance(exc, OSError):
            raise _cannot_write(parent, exc) from None
        raise
    for name in moved:
        _remove(_set_aside(parent, name, where))


@contextlib.contextmanager
def output_folder(path: str) -> Iterator[str]:
    """Creates ``path`` (an InputError if it cannot be made or written to) and removes the temporary files
    killed runs left there; on leaving, the folders this call created (``path`` and any missing parents) are
    removed again where they stayed empty."""
    if os.path.exists(path) and not os.path.isdir(path):  # makedirs' reason would be "File exists"
        raise InputError(f"output folder {path} is a file, not a folder")
    created = missing_folders(os.path.abspath(path))
    try:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create output folder {path}: {exc.strerror or exc}") from None
        if not os.access(path, os.W_OK):
            raise InputError(f"output folder {path} is not writable")
        remove_stale_temporaries(path)
        yield path
    finally:
        for folder in reversed(created):  # deepest first, the order they can be removed in
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only succeeds while empty


def refuse_unwritable(path: str, overwrite: bool, reads: Optional[Dict[str, Optional[str]]] = None,
                      within: Optional[Dict[str, Optional[str]]] = None, error: type = InputError) -> None:
    """Before a long job whose result goes to ``path``: an InputError now, rather than after the job, if
    ``path`` exists (without ``overwrite``) or its folder is missing, not a folder, or not writable. Whatever
    ``overwrite`` says, ``path`` may not be a file the job ``reads``, nor lie ``within`` a folder it reads
    (flag -> path; `eval --json` onto its own checkpoint, or onto the dataset's annotations, replaced them).
    ``error``: the class raised."""
    if os.path.isdir(path):  # first: "pass --overwrite" would not help
        raise error(f"cannot write {path}: it is a folder")
    target = os.path.realpath(path)
    for flag, read in (reads or {}).items():
        if read and target == os.path.realpath(read):
            raise error(f"cannot write {path}: it is {flag} {read}, which this run reads; choose another path")
    for flag, folder in (within or {}).items():
        root = os.path.realpath(folder) if folder else None
        if root and os.path.commonpath([target, root]) == root:
            raise error(f"cannot write {path}: it is inside {flag} {folder}, which this run reads; choose a path "
                        "outside it")
    refuse_overwrite(path, overwrite, error)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise error(f"cannot write {path}: its folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise error(f"cannot write {path}: its folder {folder} is not writable")


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
    """Removes the temporary files and folders (:func:`atomic_folder`) that writers killed mid-write (SIGKILL,
    power loss) left in ``folder``: names of :data:`TEMPORARY`'s form whose process no longer runs; a live
    writer's are kept. Returns them."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            match = TEMPORARY.match(entry.name)
            if not match or _alive(int(match["pid"])):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    os.remove(entry.path)
                else:
                    continue
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
