import json
import pathlib
import subprocess
import sys

import pytest

# The installed console script of the interpreter running the tests: the real entry point.
EXE = pathlib.Path(sys.executable).parent / "fisa-rt"


def run(*args):
    return subprocess.run([str(EXE), *args], capture_output=True, text=True, timeout=300)


def test_models_lists_every_config():
    result = run("models")
    assert result.returncode == 0, result.stderr
    for name in ("fisa-tiny", "fisa-vit-b16", "fisa-convnext-l"):
        assert name in result.stdout


def test_config_prints_valid_json():
    result = run("config", "fisa-tiny")
    assert result.returncode == 0
    assert json.loads(result.stdout)["name"] == "fisa-tiny"


def test_user_error_is_one_line_without_traceback():
    result = run("config", "fisa-huge")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "unknown model config 'fisa-huge'" in result.stderr and "Traceback" not in result.stderr


def test_debug_shows_the_traceback():
    result = run("--debug", "config", "fisa-huge")
    assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.parametrize("verb", ["models", "config"])
def test_every_verb_has_help_with_an_example(verb):
    result = run(verb, "--help")
    assert result.returncode == 0 and "example:" in result.stdout
