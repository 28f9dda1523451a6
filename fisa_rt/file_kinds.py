"""What a file is by its first bytes, for messages about a file that failed to load: NumPy takes anything that
is neither .npz nor .npy for a pickle, and torch's legacy loader reads any bytes as a pickle's opcodes, so their
own errors name the wrong thing (a pickle) or nothing at all (a KeyError of one byte)."""

from __future__ import annotations

from typing import Optional

MAGICS = ((b"PK\x03\x04", "zip"), (b"\x93NUMPY", "npy"))


def file_kind(path: str) -> Optional[str]:
    """"zip" (.npz, torch.save's format), "npy", "pickle" (protocols 2 to 5), or None: none of these."""
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, kind in MAGICS:
        if head.startswith(magic):
            return kind
    # the PROTO opcode that starts every pickle of protocol 2 or later
    return "pickle" if head[:1] == b"\x80" and head[1:2] in bytes(range(2, 6)) else None
