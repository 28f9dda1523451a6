"""The table of benchmarks/test_gpu_e2e.py: one row per (model, batch, way of running it), each against
eager fp32 of the same model and batch. Plain functions on recorded rows, so tests/test_gpu_e2e_report.py
checks them without a GPU."""

from __future__ import annotations

from typing import Dict, List, Sequence

# The ways of running a model, in the table's order; "eager fp32" is what FC-CLIP's own code does.
RUNS = ("eager fp32", "eager fp16", "torch.compile max-autotune", "fisa-rt default", "fisa-rt --compile")
BASELINE = RUNS[0]
# Pixels whose label a run may change against eager fp32 (fp16 moves near-ties).
MIN_AGREEMENT = 0.995


def _baselines(rows: Sequence[Dict[str, object]]) -> Dict[tuple, Dict[str, object]]:
    return {(r["model"], r["batch"]): r for r in rows if r["run"] == BASELINE}


def disagreements(rows: Sequence[Dict[str, object]], minimum: float = MIN_AGREEMENT) -> List[str]:
    """One line per row whose label agreement with eager fp32 is below ``minimum``, or that has no baseline."""
    baselines, lines = _baselines(rows), []
    for r in rows:
        if (r["model"], r["batch"]) not in baselines:
            lines.append(f"{r['model']} batch {r['batch']}: no {BASELINE} row to compare {r['run']} with")
        elif r["agreement"] < minimum:
            lines.append(f"{r['model']} batch {r['batch']} {r['run']}: labels agree on {100 * r['agreement']:.2f} % "
                         f"of pixels with {BASELINE} (at least {100 * minimum:.1f} % asked)")
    return lines


def render(rows: Sequence[Dict[str, object]]) -> str:
    """Markdown: model ms, end-to-end ms (host uint8 in, host label map out), images/s, peak GPU memory, the
    ratio of each to eager fp32 (its time over this row's: above 1 is faster), label agreement."""
    baselines = _baselines(rows)
    order = {run: i for i, run in enumerate(RUNS)}
    lines = [
        "| model | input | batch | run | model ms | end-to-end ms | images/s | peak GiB | model x | end-to-end x "
        "| labels agree |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["model"], r["batch"], order.get(r["run"], len(RUNS)))):
        base = baselines.get((r["model"], r["batch"]))
        speedup = (lambda key: f"{base[key] / r[key]:.2f}x") if base else (lambda key: "-")
        lines.append(
            f"| {r['model']} | {r['input']} | {r['batch']} | {r['run']} | {r['model_ms']:.2f} | {r['e2e_ms']:.2f} "
            f"| {1000 * r['batch'] / r['e2e_ms']:.0f} | {r['peak_gib']:.2f} | {speedup('model_ms')} "
            f"| {speedup('e2e_ms')} | {100 * r['agreement']:.2f} % |"
        )
    skipped = sorted({s for r in rows for s in r.get("notes", [])})
    return "\n".join(lines + [f"- {s}" for s in skipped]) + "\n"
