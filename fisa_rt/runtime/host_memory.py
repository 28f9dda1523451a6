"""What a run will hold in host memory at least, checked against what the machine has before it starts: past it,
Linux's out-of-memory killer ends the process without a word (an allocation that fails outright is reported by
``errors.out_of_memory``)."""

from __future__ import annotations

from typing import Optional

from ..errors import InputError


def available_memory() -> Optional[int]:
    """Bytes the kernel can still give this process without swapping (Linux's MemAvailable), else None."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def host_bytes(batch: int, classes: int, image_size: int, embed_dim: int, queries: int, on_cpu: bool,
               text_bytes: int = 4) -> int:
    """A lower bound of the host bytes a run holds at once: the uint8 images and their float copy, the text
    embeddings (``text_bytes`` a value; bench's random ones, drawn in float64 and kept in float32, 12), the outputs
    (mask logits at stride 4 and class scores, on the device and copied back) and, where the model runs on the
    CPU, the (B, Q, K, D) product of the class head (for K = 1,000,000 on fisa-tiny, 5.1 GB of the 13.8 GB peak
    `fisa-rt bench` measured)."""
    images = batch * 3 * image_size**2 * (1 + 4)
    text = classes * embed_dim * text_bytes
    outputs = batch * queries * ((image_size // 4) ** 2 + classes + 1) * 4 * 2
    head = batch * queries * classes * embed_dim * 4 if on_cpu else 0
    return images + text + outputs + head


def refuse_beyond_memory(engine, batch: int, classes: int, text_bytes: int = 4) -> None:
    """A batch or vocabulary too large for this machine is refused with the estimate, before the allocation
    that would have the kernel's out-of-memory killer end the process without a word."""
    queries = int(engine.manifest.get("num_queries", 100))
    needed = host_bytes(batch, classes, engine.image_size, engine.embed_dim, queries, engine.device.type == "cpu",
                        text_bytes)
    available = available_memory()
    if available is not None and needed > available:
        raise InputError(
            f"--batch {batch} with {classes} classes needs at least {needed / 2**30:.1f} GiB of memory; "
            f"{available / 2**30:.1f} GiB are available: use a smaller --batch or fewer classes"
        )
