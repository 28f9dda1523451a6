"""export/tensorrt_builder.py's timing cache against a stand-in builder config (TensorRT cannot run here):
a cache TensorRT refuses is replaced by an empty one, and the build's cache is written whole."""

import pytest

from fisa_rt.errors import FisaWarning
from fisa_rt.export.tensorrt_builder import save_timing_cache, use_timing_cache


class Cache:
    def __init__(self, data: bytes):
        self.data = data

    def serialize(self) -> bytes:
        return self.data + b"+timings"


class Config:
    """``set_timing_cache`` answers False for a cache of another GPU (TensorRT's ``bool`` return)."""

    def __init__(self, accepts=lambda data: True, keeps=True):
        self.accepts, self.keeps, self.cache = accepts, keeps, None

    def create_timing_cache(self, data: bytes):
        return Cache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False
        if not self.accepts(cache.data):
            return False
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache if self.keeps else None


def test_a_cache_of_another_gpu_is_replaced_by_an_empty_one_and_the_build_s_is_saved(tmp_path):
    path = tmp_path / "timing.cache"
    path.write_bytes(b"h100")
    config = Config(accepts=lambda data: data != b"h100")
    with pytest.warns(FisaWarning, match="timing cache of another GPU or TensorRT, or damaged: starting a new one"):
        use_timing_cache(config, str(path))
    assert config.cache.data == b""
    save_timing_cache(config, str(path))
    assert path.read_bytes() == b"+timings" and [p.name for p in tmp_path.iterdir()] == ["timing.cache"]


def test_an_accepted_cache_is_used_and_none_is_written_where_the_runtime_keeps_none(tmp_path, recwarn):
    path = tmp_path / "timing.cache"
    path.write_bytes(b"orin")
    config = Config()
    use_timing_cache(config, str(path))
    assert config.cache.data == b"orin" and not recwarn.list
    save_timing_cache(Config(keeps=False), str(path))  # TensorRT-RTX: timing-cache calls are no-ops
    assert path.read_bytes() == b"orin"
    use_timing_cache(config, None)  # --timing-cache "": an empty cache, nothing read or written
    save_timing_cache(config, None)
    assert config.cache.data == b"" and path.read_bytes() == b"orin"


def test_the_fused_plugins_without_triton_are_one_clear_line():
    """In a fresh process where Triton cannot be imported (Jetson's torch wheels may come without it)."""
    import subprocess
    import sys

    script = """
import sys
sys.modules["triton"] = None
from fisa_rt.errors import MissingDependencyError
from fisa_rt.export.tensorrt_builder import plugin_registration
try:
    plugin_registration("m.engine")
except MissingDependencyError as exc:
    print(exc)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == ("m.engine uses fisa-rt's fused TensorRT plugins, which need triton: pip install "
                                     "triton (or build the portable flavour: --flavour portable)")
