"""The README's examples are run, so they cannot rot."""

import os
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
    """Everything after the install, as written, in a scratch folder (the build script by its repo path)."""
    main = README.read_text().split("<!-- main-command -->", 1)[1]
    command = re.search(r"```bash\n(.*?)```", main, flags=re.S).group(1).strip()
    job = command.split("pip install -e . && ", 1)[1]
    assert job.startswith("python export/build_engine.py && fisa-rt infer --engine build")
    job = job.replace("export/build_engine.py", str(README.parent / "export" / "build_engine.py"))
    env = {
        **os.environ,
        "PATH": f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "XDG_CACHE_HOME": str(tmp_path),
    }
    result = subprocess.run(job, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list((tmp_path / "demo-out").glob("*_overlay.png"))) == 4
    assert (tmp_path / "build" / "fisa-tiny-synthetic.portable.onnx.manifest.json").is_file()
