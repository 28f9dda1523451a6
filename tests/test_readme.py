"""The README's examples are run, so they cannot rot."""

import pathlib
import re
import subprocess
import sys

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def test_python_example_runs():
    (example,) = _blocks("python")
    exec(compile(example, "README.md", "exec"), {})


def test_main_command_job_runs():
    main = README.read_text().split("<!-- main-command -->", 1)[1]
    command = re.search(r"```bash\n(.*?)```", main, flags=re.S).group(1).strip()
    job = command.rsplit("&&", 1)[1].strip()  # the part after installing
    assert job.startswith("fisa-rt ")
    # The venv's own script, whether or not the venv is activated.
    exe = pathlib.Path(sys.executable).parent / "fisa-rt"
    result = subprocess.run([str(exe)] + job.split()[1:], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "trainable" in result.stdout
