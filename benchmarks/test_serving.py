"""Load test of the Triton serving path: 8 concurrent clients x 25 requests with mixed vocabularies against the
bundled tritonserver (fisa_python, the embedded model, CPU), and the same requests through local ``Segmenter``
calls at the same concurrency (one Segmenter behind a lock: on a CPU, one model call at a time, each using every
core, is the best local set-up; serial is slower still). Records errors (must be 0), p50/p90/p99 latency,
throughput, the ratio, and that every server result equals the local one. The report goes to
benchmarks/results/<date>-serving-<cores>-cores.md.

    pytest benchmarks/test_serving.py --benchmark-only -s
"""

from __future__ import annotations

import concurrent.futures
import datetime
import os
import textwrap
import threading
import time

import numpy as np
import pytest

from fisa_rt.errors import MissingDependencyError
from fisa_rt.runtime.bench import percentiles

CLIENTS, REQUESTS = 8, 25
VOCABULARIES = [["red star", "blue circle", "wavy wall"], ["green triangle", "yellow square"],
                ["red star", "purple hexagon", "orange ring", "striped floor"], ["blue circle"]]


def run_load(call, jobs):
    """``call(client, job)`` from CLIENTS threads, REQUESTS each; (latencies, errors, seconds, results)."""
    latencies, errors, results = [], [], {}
    lock = threading.Lock()

    def client(c):
        for r in range(REQUESTS):
            index = c * REQUESTS + r
            start = time.perf_counter()
            try:
                result = call(c, jobs[index])
            except Exception as exc:  # noqa: BLE001 - counted, the load goes on
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                latencies.append(time.perf_counter() - start)
                results[index] = result

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    return latencies, errors, time.perf_counter() - start, results


def test_serving_load(benchmark, tmp_path):
    pytest.importorskip("tritonclient.http")
    from PIL import Image

    from fisa_rt.runtime.assets import default_checkpoint, sample_images
    from fisa_rt.runtime.segmenter import Segmenter
    from fisa_rt.runtime.threads import available_cores
    from fisa_rt.serving import bundled
    from fisa_rt.serving.repository import PythonModelOptions, write_python_model

    try:
        numpy1 = bundled.numpy1_dir()
        bundled.pytriton_dir()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    cores = available_cores()
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sample_images()]
    jobs = [(images[i % len(images)], VOCABULARIES[i % len(VOCABULARIES)]) for i in range(CLIENTS * REQUESTS)]
    # instances x threads = cores (the measurement: 1 torch + 1 ORT thread per instance was best)
    options = PythonModelOptions(prepend_dirs=[numpy1], instances=cores, threads=1, queue_delay_us=2000)
    write_python_model(str(tmp_path), default_checkpoint(), None, options)

    local = Segmenter.from_engine(default_checkpoint(), cache_dir="", threads=cores)
    local_lock = threading.Lock()

    def local_call(_, job):
        with local_lock:
            local.set_vocabulary(job[1])
            return local.segment(job[0])

    run_load(local_call, jobs[: CLIENTS * 2])  # warm: every vocabulary encoded once
    local_run = run_load(local_call, jobs)

    with bundled.BundledServer(str(tmp_path)) as server:
        clients = [Segmenter.from_server(server.http) for _ in range(CLIENTS)]

        def server_call(c, job):
            clients[c].set_vocabulary(job[1])
            return clients[c].segment(job[0])

        run_load(server_call, jobs[: CLIENTS * 2])
        server_run = benchmark.pedantic(run_load, args=(server_call, jobs), rounds=1, iterations=1)
        import tritonclient.http as http

        stats = http.InferenceServerClient(server.http).get_inference_statistics("fisa_python")
        batch_sizes = {int(s["batch_size"]): int(s["compute_infer"]["count"])
                       for s in stats["model_stats"][0]["batch_stats"]}

    mismatches = sum(
        not (np.array_equal(r.semantic, local_run[3][i].semantic) and r.segments() == local_run[3][i].segments())
        for i, r in server_run[3].items() if i in local_run[3]
    )
    rows = []
    for name, (latencies, errors, seconds, _) in (("local Segmenter", local_run), ("Triton fisa_python", server_run)):
        p = percentiles(latencies)
        rows.append((name, len(errors), p["p50"], p["p90"], p["p99"], len(latencies) / seconds))
    ratio = rows[1][5] / rows[0][5]
    lines = [
        f"# Serving load test, {datetime.date.today()} ({cores} cores)",
        "",
        f"`pytest benchmarks/test_serving.py --benchmark-only -s`: {CLIENTS} concurrent clients x {REQUESTS} requests,"
        f" {len(VOCABULARIES)} vocabularies mixed, the bundled sample scenes, the embedded model (fisa-tiny, PyTorch"
        f" backend, CPU). Server: bundled tritonserver 2.51, fisa_python with {options.instances} instances x"
        f" {options.threads} thread, dynamic batching ({options.queue_delay_us} us queue delay), HTTP. Local: one"
        f" Segmenter ({cores} threads) behind a lock, called by the same {CLIENTS} client threads.",
        "",
        "| path | errors | p50 ms | p90 ms | p99 ms | requests/s |",
        "|---|---|---|---|---|---|",
        *(f"| {n} | {e} | {a:.1f} | {b:.1f} | {c:.1f} | {t:.1f} |" for n, e, a, b, c, t in rows),
        "",
        f"Server throughput / local: **{ratio:.2f}x**. Server results differing from local: {mismatches} of "
        f"{len(server_run[3])}. Executions by batch size: {dict(sorted(batch_sizes.items()))}.",
        "",
        "Shared machine: other jobs ran on the same cores; figures vary run to run.",
    ]
    report = "\n".join(line if line.startswith("|") else textwrap.fill(line, 118) for line in lines) + "\n"
    print(report)
    folder = os.path.join(os.path.dirname(__file__), "results")
    with open(os.path.join(folder, f"{datetime.date.today()}-serving-{cores}-cores.md"), "w") as f:
        f.write(report)
    assert not server_run[1] and not local_run[1], (server_run[1][:3], local_run[1][:3])
    assert mismatches == 0
