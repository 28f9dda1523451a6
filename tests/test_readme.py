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


def test_main_command_job_runs(tmp_path):
    main = README.read_text().split("<!-- main-command -->", 1)[1]
    command = re.search(r"```bash\n(.*?)```", main, flags=re.S).group(1).strip()
    job = command.rsplit("&&", 1)[1].strip()  # the part after installing
    assert job == "fisa-rt demo --out demo-out"
    # The venv's own script, whether or not the venv is activated; the output folder in a temp dir.
    exe = pathlib.Path(sys.executable).parent / "fisa-rt"
    out = tmp_path / "demo-out"
    result = subprocess.run([str(exe), "demo", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert list(out.glob("*_overlay.png"))
