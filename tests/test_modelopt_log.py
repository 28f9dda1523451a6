"""export/modelopt_log.py: what ModelOpt logs during a conversion is collected, each message once, and the
process's logging is left as it was.

The fake loggers are laid out as ModelOpt's: a parent with its own stdout handler, children that log, records
propagating to the root. AutoCast's root-logger call (``logging.warning``) is what configured a bare root
logger and printed every later record twice.
"""

import contextlib
import logging
import sys

import pytest

from fisa_rt.export.modelopt_log import modelopt_messages


@contextlib.contextmanager
def modelopt_like(name: str):
    """``name``'s child logger; ``name`` prints to the stdout of the moment (made in the test body, that is
    capsys's, so what it prints is seen)."""
    handler = logging.StreamHandler(sys.stdout)
    logging.getLogger(name).addHandler(handler)
    child = logging.getLogger(f"{name}.autocast")
    child.setLevel(logging.INFO)
    try:
        yield child
    finally:
        logging.getLogger(name).removeHandler(handler)


@pytest.fixture
def bare_root(monkeypatch):
    """Called in the test body: a root logger with no handler, as in a script that never configured logging
    (pytest gives the root a handler of its own for each test phase)."""
    return lambda: monkeypatch.setattr(logging.root, "handlers", [])


def test_each_message_is_kept_once_and_nothing_is_printed(bare_root, capsys):
    bare_root()
    with modelopt_like("modelopt.fake_onnx") as logger:
        with modelopt_messages() as messages:
            logger.warning("Shared constants were detected and duplicated accordingly.")
            logging.warning("3 ops are not supported in 'float16' in opset 17")
            logger.warning("Shared constants were detected and duplicated accordingly.")
            logger.error("Failed to get GPU count: NVML Shared Library Not Found")
            logger.info("one line per node kept in fp32")  # below the level: neither kept nor printed
        assert messages == [
            "Shared constants were detected and duplicated accordingly.",
            "3 ops are not supported in 'float16' in opset 17",
            "Failed to get GPU count: NVML Shared Library Not Found",
        ]
        assert capsys.readouterr() == ("", "")
        assert logging.root.handlers == []  # no handler left behind by basicConfig, nor by the collector
        assert not logger.filters and not logging.getLogger("modelopt.fake_onnx").filters
        logger.warning("after the conversion")  # ModelOpt's own handler prints again, once
        assert capsys.readouterr() == ("after the conversion\n", "")


def test_a_logger_made_during_the_conversion_prints_once_and_is_still_collected(bare_root, capsys):
    bare_root()
    with modelopt_like("modelopt.fake_late"):
        with modelopt_messages() as messages:
            logging.warning("root first")  # would configure the root logger without the collector there
            logging.getLogger("modelopt.fake_late.made_inside").warning("made inside")
    assert messages == ["root first", "made inside"]
    assert capsys.readouterr() == ("made inside\n", "")
    assert logging.root.handlers == []


def test_a_root_logger_configured_before_the_conversion_prints_none_of_it(bare_root, capsys):
    """open_clip's ``logging.info`` (loading a ViT-B/16) configured the root logger before AutoCast ran, so
    AutoCast's root-logger warning printed there as well: fisa-vit-b16's fp16 build showed it as WARNING:root."""
    bare_root()
    logging.info("Loaded ViT-B-16 model config.")  # below the root's level, but configures it
    assert len(logging.root.handlers) == 1
    logging.root.handlers[0].setStream(sys.stdout)  # capsys's, so that what it prints is seen
    with modelopt_like("modelopt.fake_configured") as logger:
        with modelopt_messages() as messages:
            logging.warning("3 ops are not supported in 'float16' in opset 17")
            logger.warning("Shared constants were detected and duplicated accordingly.")
    assert messages == ["3 ops are not supported in 'float16' in opset 17",
                        "Shared constants were detected and duplicated accordingly."]
    assert capsys.readouterr() == ("", "")
    assert len(logging.root.handlers) == 1 and not logging.root.filters
    logging.warning("after the conversion")
    assert capsys.readouterr() == ("WARNING:root:after the conversion\n", "")


def test_quiet_loggers_are_made_at_the_level_and_collected(bare_root, capsys):
    """AutoCast's and the quantizer's INFO line per node: their loggers are set to WARNING, made if ModelOpt has
    not made them yet (so they get the filter), and stay there for the rest of the run."""
    bare_root()
    with modelopt_like("modelopt.fake_quiet"):
        with modelopt_messages(["modelopt.fake_quiet.not_yet_made"]) as messages:
            quiet = logging.getLogger("modelopt.fake_quiet.not_yet_made")
            quiet.info("one line per node")
            quiet.getChild("later").info("one line per node, from a logger made inside")
            quiet.warning("kept")
    assert messages == ["kept"] and capsys.readouterr() == ("", "")
    assert quiet.level == logging.WARNING and not quiet.filters


def test_a_failing_conversion_shows_what_modelopt_said(capsys):
    with modelopt_like("modelopt.fake_failing") as logger:
        with pytest.raises(RuntimeError, match="conversion failed"):
            with modelopt_messages():
                logger.error("Failed to get GPU count")
                raise RuntimeError("conversion failed")
        assert capsys.readouterr() == ("", "ModelOpt: Failed to get GPU count\n")
        assert not logger.filters
