"""Segmenting a whole source (an image, folder, glob, video or camera) into an output folder, with the
guarantees of ``fisa-rt infer``, for the CLI and Python users alike:

- nothing replaced without ``overwrite``, even by a concurrent run (each file's final step refuses an existing
  file atomically, :mod:`fisa_rt.atomic`), and a rerun refused before any work;
- no input of the run replaced by one of its outputs, even with ``overwrite`` (refused before any work);
- every file whole or absent: Ctrl-C and SIGTERM unwind the write in progress, and the temporary files of a
  run that was killed outright are removed by the next run into the folder;
- a bad input skipped with one line and the rest segmented (unless ``fail_fast``), then a
  :class:`~fisa_rt.errors.PartialFailure` (exit code 1, or 2 when nothing was written);
- no empty output folder left behind by a run that wrote nothing.

    seg = Segmenter.from_engine("build"); seg.set_vocabulary(["cat", "dog"])
    report = segment_to_folder(seg, "photos/", "out/", task="semantic", batch=4)
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Union

from ..atomic import output_folder
from ..errors import FisaError, InputError, PartialFailure, path_argument, sigterm_as_interrupt
from .inputs import Source
from .results import OUTPUT_SUFFIXES, SegmentationResult


@dataclass
class RunReport:
    total: int  # inputs in the source (0: unknown, a camera)
    written: List[str] = field(default_factory=list)  # output names whose files were written
    failed: List[FisaError] = field(default_factory=list)  # one error per skipped input


def _entry(path: str) -> str:
    """The folder entry a write to ``path`` replaces (the results' writes rename onto it, replacing a link
    there rather than the file it leads to): ``path`` with its folder resolved."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.normcase(os.path.join(os.path.realpath(folder), name))


def refuse_existing_outputs(folder: str, source: Source, overwrite: bool) -> None:
    """Checked before any work, so a rerun is refused at once rather than after the first result; and, even
    with ``overwrite``, an output that would replace an input of the same run (a folder segmented into itself
    that holds ``a.png`` and the user's ``a_overlay.png``): the user's file would be lost, then read back as
    an input."""
    targets = [os.path.join(folder, name + suffix) for name in source.names for suffix in OUTPUT_SUFFIXES.values()]
    inputs = {_entry(p) for p in source.items} | {os.path.normcase(os.path.realpath(p)) for p in source.items}
    where = os.path.realpath(folder)  # _entry of each target, the folder resolved once
    for target in targets:
        if os.path.normcase(os.path.join(where, os.path.basename(target))) in inputs:
            raise InputError(f"output {target} would replace an input of this run; write the results to another "
                             "folder")
    if overwrite:
        return
    existing = [t for t in targets if os.path.exists(t)]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise InputError(f"{existing[0]} exists{more}; pass overwrite=True (--overwrite) to replace outputs")


def _stderr_line(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)  # above a progress bar, not through it


def segment_to_folder(
    segmenter,
    source: Union[str, Source],
    out: str,
    task: str = "panoptic",
    batch: int = 1,
    overwrite: bool = False,
    fail_fast: bool = False,
    progress: bool = False,
    on_result: Optional[Callable[[str, SegmentationResult], None]] = None,
    log: Callable[[str], None] = _stderr_line,
) -> RunReport:
    """Segments every input of ``source`` (a Source or its spec) with ``segmenter`` and writes each result's
    files into ``out`` (:meth:`SegmentationResult.save`), ``batch`` inputs per engine call. ``on_result(name,
    result)`` is called after each write; ``log`` takes the line naming a skipped input. The time spent
    reading inputs and writing results is added to ``segmenter.timings``."""
    from tqdm import tqdm

    if not isinstance(batch, int) or batch < 1:
        raise InputError(f"batch must be an integer >= 1; got {batch!r}")
    if not callable(getattr(segmenter, "segment_batch", None)):
        raise InputError("segmenter must be a Segmenter (Segmenter.from_engine or Segmenter.from_server); "
                         f"got {type(segmenter).__name__}")
    out = path_argument(out, "out")
    if not isinstance(source, Source):
        source = Source(path_argument(source, "source"), max_pixels=segmenter.max_pixels)
    report = RunReport(total=len(source))
    timings = segmenter.timings
    with output_folder(out), sigterm_as_interrupt():
        refuse_existing_outputs(out, source, overwrite)

        def skip(exc: FisaError) -> None:
            if fail_fast or report.total <= 1:
                raise exc
            report.failed.append(exc)
            log(f"fisa-rt: skipped: {exc}")

        bar = None  # made at the first result, so an input that fails to open prints its error line only
        pending = []

        def flush() -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=report.total or None, unit="img", disable=not progress or report.total <= 1,
                           desc="infer")
            for (name, _), result in zip(pending, segmenter.segment_batch([frame for _, frame in pending], task)):
                start = time.perf_counter()
                try:
                    result.save(out, name, overwrite=overwrite)
                except FisaError as exc:
                    skip(exc)
                    continue
                finally:
                    timings.write += time.perf_counter() - start
                report.written.append(name)
                if on_result is not None:
                    on_result(name, result)
            bar.update(len(pending))
            pending.clear()

        frames = source.frames(skip)
        try:
            while True:
                start = time.perf_counter()
                item = next(frames, None)
                timings.read += time.perf_counter() - start
                if item is None:
                    break
                pending.append(item)
                if len(pending) == batch:
                    flush()
            if pending:
                flush()
        finally:  # an error line after the bar, not inside it
            if bar is not None:
                bar.close()
    if report.failed:
        count = f"{len(report.failed)} of {report.total or len(report.failed) + len(report.written)} inputs failed"
        where = f"the others are in {out}" if report.written else "nothing was written"
        raise PartialFailure(f"{count} (each named above); {where}", written=len(report.written))
    return report
