"""What ModelOpt logs during a conversion, collected so that build_engine.py can print each message once.

Left alone, ModelOpt's warnings print twice, with timestamps, on stdout. Its ``modelopt.onnx`` logger has a
handler of its own that writes to stdout, and AutoCast also calls ``logging.warning`` on the root logger. A
root logger with no handler configures itself on that call (``logging.basicConfig``). After that, every
ModelOpt record prints twice: once through ModelOpt's handler, and once more when it propagates to the root.
The root handler also stays in the process, for whatever logs after the build.

While a ModelOpt call runs, ``modelopt_messages()`` holds back the records of the ``modelopt`` loggers and of
the root logger, with a filter on each, and collects whatever else reaches the root logger, through a handler
there. The root handler also keeps ``basicConfig`` from running. Then it returns their messages, in order and
without repeats.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator, List, Sequence


class _Collector(logging.Handler):
    """Keeps each message at ``level`` or above once, in order."""

    def __init__(self, level: int):
        super().__init__(level)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().strip()
        if record.levelno >= self.level and text and text not in self.messages:
            self.messages.append(text)

    def hold_back(self, record: logging.LogRecord) -> bool:
        """A logger filter: the record is kept here and goes no further (no handler, no propagation)."""
        self.emit(record)
        return False


@contextlib.contextmanager
def modelopt_messages(quiet: Sequence[str] = (), level: int = logging.WARNING) -> Iterator[List[str]]:
    """Collects what ModelOpt logs at ``level`` and above while the block runs; yields the list it fills.

    The loggers named in ``quiet`` are set to ``level`` first, and stay there: AutoCast and the quantizer log one
    INFO line per node, which the manifest records instead. Setting them creates those not yet created, so they
    get the filter too, and loggers created later under them inherit the level.

    Only the ``modelopt`` loggers that exist on entry get the filter, so import ModelOpt's entry point first.
    A logger created inside the block still prints through ModelOpt's handler, but only once: the root
    handler collects its records and keeps ``basicConfig`` from adding a second handler. If the block raises,
    the messages go to stderr, because they may say why.
    """
    for name in quiet:
        logging.getLogger(name).setLevel(level)
    collector = _Collector(level)
    names = [n for n in list(logging.root.manager.loggerDict) if n == "modelopt" or n.startswith("modelopt.")]
    loggers = [logging.getLogger(n) for n in names]
    for logger in loggers:
        logger.addFilter(collector.hold_back)  # bound methods compare equal: removeFilter finds it again
    logging.root.addHandler(collector)
    # AutoCast's own root-logger call, held back too: where something else configured the root logger earlier in
    # the process (open_clip's logging.info does, loading a ViT-B/16), it printed there as well
    logging.root.addFilter(collector.hold_back)
    try:
        yield collector.messages
    except Exception:  # not on Ctrl-C: the user stopped it, nothing failed
        for message in collector.messages:
            print(f"ModelOpt: {message}", file=sys.stderr)
        raise
    finally:
        logging.root.removeFilter(collector.hold_back)
        logging.root.removeHandler(collector)
        for logger in loggers:
            logger.removeFilter(collector.hold_back)
