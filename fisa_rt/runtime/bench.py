"""``fisa-rt bench``: latency percentiles of the engine call on device-resident inputs, with the
host->device copy of the images and the device->host copy of the outputs timed apart (a pipeline that
keeps frames on the GPU pays only the first number)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import numpy as np
import torch

from .backends import open_backend, resolve_artefact
from .host_memory import refuse_beyond_memory
from .timings import rate


@dataclass
class BenchReport:
    backend: str
    device: str
    batch: int
    classes: int
    iterations: int
    model_ms: Dict[str, float]
    upload_ms: float
    download_ms: float
    throughput: float  # images per second, model only

    def format(self) -> str:
        m = self.model_ms
        return (
            f"{self.backend} on {self.device}, batch {self.batch}, {self.classes} classes, {self.iterations} runs\n"
            f"  model   p50 {m['p50']:.2f} ms  p90 {m['p90']:.2f} ms  p99 {m['p99']:.2f} ms  mean {m['mean']:.2f} ms\n"
            f"  copies  host->device {self.upload_ms:.2f} ms  device->host {self.download_ms:.2f} ms "
            "(per call, median)\n"
            f"  throughput {rate(self.throughput)} images/s"
        )

    def to_dict(self) -> Dict:
        return asdict(self)


def percentiles(samples: List[float]) -> Dict[str, float]:
    ms = np.asarray(samples) * 1000
    return {
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
    }


def benchmark(
    path: str, backend: Optional[str], batch: int, classes: int, warmup: int, iterations: int,
    cuda_graphs: Optional[bool] = None, compile: bool = False,
) -> BenchReport:
    engine = open_backend(resolve_artefact(path, backend), backend, cuda_graphs=cuda_graphs, compile=compile)
    refuse_beyond_memory(engine, batch, classes, text_bytes=12)  # the random text below: float64, then float32
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)
    S = engine.image_size
    rng = np.random.default_rng(0)
    host = torch.from_numpy(rng.integers(0, 256, (batch, 3, S, S), dtype=np.uint8))
    text = rng.standard_normal((classes, engine.embed_dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    images = host.to(engine.device)
    for _ in range(warmup):
        engine.run(images, text)
    sync()
    model, upload, download = [], [], []
    for _ in range(iterations):
        t0 = time.perf_counter()
        images = host.to(engine.device)
        sync()
        t1 = time.perf_counter()
        out = engine.run(images, text)
        sync()
        t2 = time.perf_counter()
        out.mask_logits.cpu(), out.class_scores.cpu()
        t3 = time.perf_counter()
        upload.append(t1 - t0)
        model.append(t2 - t1)
        download.append(t3 - t2)
    stats = percentiles(model)
    return BenchReport(
        backend=engine.name,
        device=str(engine.device),
        batch=batch,
        classes=classes,
        iterations=iterations,
        model_ms=stats,
        upload_ms=float(np.median(upload) * 1000),
        download_ms=float(np.median(download) * 1000),
        throughput=batch / (stats["mean"] / 1000),
    )
