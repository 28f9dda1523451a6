"""The checkout's top-level ``kernels/`` never shadows another package named ``kernels``
(``python -m pytest`` puts the checkout first on ``sys.path``; transformers imports the PyPI ``kernels``)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _import_kernels(extra_path: str, *flags: str) -> subprocess.CompletedProcess:
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.append({extra_path!r}); import kernels; "
        "print(kernels.__file__); print(sorted(k for k in sys.modules if k.startswith('kernels')))"
    )
    return subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, cwd=ROOT)


def test_the_checkout_hands_the_name_to_the_installed_package(tmp_path):
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "__init__.py").write_text("CUDAProperties = 1\n")
    done = _import_kernels(str(tmp_path), "-S")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(tmp_path / "kernels" / "__init__.py"), "['kernels']"]


def test_without_another_package_the_import_fails_as_if_the_folder_were_not_there(tmp_path):
    done = _import_kernels(str(tmp_path), "-S")
    assert done.returncode == 1
    assert "ModuleNotFoundError: No module named 'kernels'" in done.stderr
    assert "fisa_rt.kernels" in done.stderr


def test_the_package_still_imports_as_fisa_rt_kernels():
    import fisa_rt.kernels

    assert Path(fisa_rt.kernels.__file__).parent == ROOT / "kernels"
    assert callable(fisa_rt.kernels.adapter_attention)


@pytest.mark.parametrize("first", ["import fisa_rt.kernels.mask_attention, fisa_rt.kernels.adapter_attention",
                                   "from fisa_rt.kernels import MaskLayout, adapter_attention_reference"])
def test_an_op_s_name_stays_the_op_when_its_module_is_imported_first(first):
    # each of the two ops shares its name with its module, which the import system binds on the package
    code = (f"{first}; from fisa_rt.kernels import mask_attention, adapter_attention; import fisa_rt.kernels as k; "
            "print(type(mask_attention).__name__, type(adapter_attention).__name__, type(k.mask_attention).__name__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["function", "function", "function"]
