"""The NVIDIA GPUs fisa-rt's kernels are compiled, gated and tuned for: one row per compute capability.

Facts and their sources (docs/design.md, "Every current NVIDIA target"):
- shared memory: CCCL's ``cuda/__device/arch_traits.h`` (per-SM capacity minus the 1 KB the driver
  reserves per block = the opt-in per-block limit);
- SM counts: the products' datasheets (a product fact, not a capability fact: the smallest part is listed
  first, because it is the one whose waves a tuning list must fill);
- which ptxas: Triton 3.8 assembles sm_100 and newer with its ``ptxas-blackwell`` (CUDA 13.3), which no
  longer knows sm_101 (renamed sm_110 in CUDA 13); sm_101 is assembled by its CUDA 12.9 ``ptxas``, whose
  PTX ISA 8.8 is also the only one at which Triton's LLVM still selects sm_101a's tcgen05 instructions.
  Triton 3.9 moves sm_90 to ``ptxas-blackwell`` (CUDA 13.4), so the PTX ISA is pinned per row, not left to
  whichever ptxas a Triton bundles.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, Iterator, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Target:
    arch: int  # compute capability x10, as the driver reports it
    name: str  # products
    generation: int  # kernels/tuning.py's list key
    shared_per_block: int  # bytes a block may opt into (dynamic shared memory)
    sms: Tuple[int, ...]  # SM counts of the products named, smallest first
    cuda: str  # CUDA releases whose driver reports this compute capability
    ptx_isa: int  # PTX ISA x10 the PTX declares (declared_isa: lower only where Triton's ptxas reads no higher)
    legacy_ptxas: bool = False  # assembled with Triton's CUDA 12.9 ptxas, not ptxas-blackwell

    @property
    def capability(self) -> Tuple[int, int]:
        return divmod(self.arch, 10)

    @property
    def gpu_name(self) -> str:
        """ptxas's --gpu-name: Triton compiles sm_90 and newer for the architecture-specific ("a") target."""
        return f"sm_{self.arch}a" if self.arch >= 90 else f"sm_{self.arch}"

    def describe(self) -> str:
        major, minor = self.capability
        return f"compute capability {major}.{minor} ({self.name})"


KB = 1024
TARGETS: Dict[int, Target] = {t.arch: t for t in (
    # PTX ISA 8.8 (CUDA 12.9), what Triton 3.8 writes: Triton 3.9 would write 9.4 for sm_90, which only CUDA 13.4
    # drivers JIT, and a fused engine's PTX should not need a newer driver because a newer Triton built it.
    Target(80, "A100", 80, 163 * KB, (108,), "11.0+", ptx_isa=88),
    Target(86, "RTX 30 / A10 / A40", 80, 99 * KB, (28, 72, 84), "11.1+", ptx_isa=88),
    Target(87, "Jetson Orin", 87, 163 * KB, (8, 16), "11.4+ (JetPack 5-7)", ptx_isa=88),
    Target(89, "RTX 40 / L4 / L40S", 80, 99 * KB, (24, 58, 128, 142), "11.8+", ptx_isa=88),
    Target(90, "H100 / H200 / GH200", 90, 227 * KB, (114, 132), "11.8+", ptx_isa=88),
    # Blackwell. PTX ISA: the first one that has the target (8.6 for sm_100/101, 8.7 for sm_120, 8.8 for
    # sm_103/121, 9.0 for sm_110), so the PTX JITs on the oldest driver that knows the GPU; ptxas checks that
    # every instruction exists at that ISA, which the static gate runs.
    Target(100, "B200 / GB200", 100, 227 * KB, (148,), "12.8+", ptx_isa=86),
    Target(101, "Jetson Thor under CUDA 12.8-12.9", 110, 227 * KB, (20,), "12.8-12.9", ptx_isa=86,
           legacy_ptxas=True),
    Target(103, "B300 / GB300", 100, 227 * KB, (148,), "12.9+", ptx_isa=88),
    Target(110, "Jetson Thor (JetPack 7)", 110, 227 * KB, (20,), "13.0+", ptx_isa=90),
    Target(120, "RTX 50 / RTX PRO Blackwell", 120, 99 * KB, (36, 48, 84, 170, 188), "12.8+", ptx_isa=87),
    Target(121, "DGX Spark / GB10", 120, 99 * KB, (48,), "12.9+", ptx_isa=88),
)}
# Thor is one GPU that CUDA 13 renamed: an engine or PTX for one of these is rebuilt, not refused as foreign.
RENAMED = {101: 110, 110: 101}


class UnknownTarget(ValueError):
    """A compute capability that no row describes (a GPU newer than every list, or one older than sm_80)."""


def target(arch: int) -> Target:
    try:
        return TARGETS[int(arch)]
    except KeyError:
        known = ", ".join(f"sm_{a}" for a in TARGETS)
        raise UnknownTarget(f"sm_{arch} is not a target fisa-rt's kernels are compiled for (known: {known})") from None


def arch_of(capability: Sequence[int]) -> int:
    """(major, minor) -> compute capability x10."""
    major, minor = capability
    return 10 * int(major) + int(minor)


def describe(capability: Optional[Sequence[int]]) -> str:
    """A compute capability in words, for messages: '9.0 (H100 / H200 / GH200)', or '13.0 (unknown GPU)'."""
    if capability is None:
        return "no compute capability (built without a GPU)"
    arch = arch_of(capability)
    row = TARGETS.get(arch)
    return row.describe() if row else f"compute capability {arch // 10}.{arch % 10} (not in fisa-rt's table)"


def gated_arches() -> Tuple[int, ...]:
    return tuple(TARGETS)


@contextmanager
def ptxas_for(row: Target) -> Iterator[None]:
    """Make Triton assemble ``row`` with the ptxas that knows it (Triton picks ptxas-blackwell for every
    arch >= 100; sm_101 needs the CUDA 12.9 one). Scoped: other arches keep Triton's choice."""
    check_assembles(row)
    if not row.legacy_ptxas:
        yield
        return
    from triton import knobs

    with knobs.nvidia.scope():
        os.environ["TRITON_PTXAS_BLACKWELL_PATH"] = knobs.nvidia.ptxas.path
        yield


def ptxas_path(row: Target) -> str:
    from triton import knobs
    from triton.backends.nvidia.compiler import get_ptxas

    return knobs.nvidia.ptxas.path if row.legacy_ptxas else get_ptxas(row.arch).path


@lru_cache(maxsize=None)
def _gpu_names(ptxas: str) -> frozenset:
    """The --gpu-name values ``ptxas --help`` lists as allowed (empty where it does not run or lists none)."""
    try:
        text = subprocess.run([ptxas, "--help"], capture_output=True, text=True).stdout
    except OSError:
        return frozenset()
    allowed = text.partition("--gpu-name")[2].partition("Allowed values for this option:")[2].split("\n\n")[0]
    return frozenset(re.findall(r"'([^']+)'", allowed))


def isa_of_cuda(release: str) -> int:
    """The highest PTX ISA (x10) CUDA ``release`` (11.0 or newer) reads ("12.9" -> 88): Triton's map, written
    out rather than taken from Triton's private ``ptx_get_version`` (the tests compare the two), and without
    Triton, which a portable engine's load does not need."""
    major, minor = (int(part) for part in release.split(".")[:2])
    if major >= 13:
        return 90 + (major - 13) * 10 + minor
    if major == 12:
        return 80 + minor - (minor >= 6)  # CUDA 12.6 shipped ISA 8.5, 12.8 ISA 8.7
    return 70 + minor


def cuda_of_isa(isa: int) -> str:
    """The first CUDA 12 or newer release that reads PTX ISA ``isa`` (x10): 88 -> "12.9", 90 -> "13.0"."""
    return next(f"{major}.{minor}" for major in range(12, 20) for minor in range(10)
                if isa_of_cuda(f"{major}.{minor}") >= isa)


@lru_cache(maxsize=None)
def _ptxas_isa(ptxas: str) -> Optional[int]:
    """The highest PTX ISA (x10) ``ptxas`` reads; None where its --version names no CUDA release."""
    from triton.knobs import NvidiaTool

    tool = NvidiaTool.from_path(ptxas)
    return None if tool is None else isa_of_cuda(tool.version)


def declared_isa(row: Target) -> int:
    """The PTX ISA (x10) the PTX for ``row`` declares: the row's, or the highest the ptxas that assembles it reads
    where that is lower (Triton 3.6's CUDA 12.8 ptxas: 8.7 for sm_80-90, as Triton itself would write). A ptxas
    whose release cannot be read lowers nothing: its compile is the judge, as in ``check_assembles``."""
    readable = _ptxas_isa(ptxas_path(row))
    return row.ptx_isa if readable is None else min(row.ptx_isa, readable)


class TritonTooOld(RuntimeError):
    """The installed Triton's ptxas does not know a target of the table."""


def check_assembles(row: Target) -> None:
    """Refuse ``row`` where the installed Triton's ptxas does not list it, naming the ptxas and the Triton to use;
    else ptxas's own "Value 'sm_110a' is not defined" surfaces from inside Triton's compiler (Triton 3.6's
    ptxas-blackwell, CUDA 12.9, has no sm_110, so Jetson Thor under JetPack 7 needs Triton 3.8 or newer). A help
    text that cannot be read refuses nothing, and Triton's compile is the judge."""
    ptxas = ptxas_path(row)
    known = _gpu_names(ptxas)
    if known and row.gpu_name not in known:
        import triton

        raise TritonTooOld(
            f"Triton {triton.__version__}'s ptxas ({ptxas}) cannot assemble {row.gpu_name} for {row.name}: "
            "use a Triton whose ptxas knows it (Triton 3.8 or newer, as torch 2.14 installs)"
        )


def exit_unless_assembled(parser: argparse.ArgumentParser, arches: Sequence[int]) -> None:
    """The command-line tools' refusal: one line and exit 2, before any compile or file (not after minutes of
    compiling the targets ptxas knows)."""
    try:
        for arch in arches:
            check_assembles(target(arch))
    except TritonTooOld as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
