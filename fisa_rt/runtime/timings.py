"""Where a Segmenter's (or a server client's) time goes, stage by stage."""

from __future__ import annotations

from dataclasses import dataclass


def rate(per_second: float) -> str:
    """One decimal, or three significant digits below 1/s (a model at 27 s an image printed 0.0 images/s)."""
    return f"{per_second:.1f}" if per_second >= 1 or not per_second else f"{per_second:.3g}"


@dataclass
class Timings:
    """Accumulated seconds per stage and images seen; ``read`` (decoding input files) and ``write`` (result
    files) are counted by whoever does them (fisa_rt.runtime.folder_run), not by ``segment``."""

    preprocess: float = 0.0
    model: float = 0.0
    postprocess: float = 0.0
    images: int = 0
    read: float = 0.0
    write: float = 0.0

    def summary(self) -> str:
        n = max(self.images, 1)
        total = self.read + self.preprocess + self.model + self.postprocess + self.write
        stages = [("read", self.read), ("pre-process", self.preprocess), ("model", self.model),
                  ("post-process", self.postprocess), ("write", self.write)]
        shown = ", ".join(f"{name} {1000 * seconds / n:.1f} ms" for name, seconds in stages)
        fps = self.images / total if total else 0
        images = f"{self.images} image{'' if self.images == 1 else 's'}"
        return f"{images}: {shown} per image; {rate(fps)} FPS end to end"
