"""The markdown tables of issue 15's study (benchmarks/study/run-study.sh) from its evaluation and cost files.

    python benchmarks/study/study-table.py runs/study --steps 100 300 600 --seeds 0 1

1. accuracy after the full schedule: seen / novel-composition / novel-concept mIoU and PQ, mean over
   seeds with each seed's value;
2. the adaptation-length curve: the same at every evaluated step (mean over seeds);
3. cost: CPU time per step (benchmarks/study/step-cost.py) and, for a fixed held-out accuracy — the lower of FISA's
   and full fine-tuning's best mean novel-concept mIoU, so both reach it — the first evaluated step that
   reaches it and the CPU time that many steps take.
"""

import argparse
import json
import os
import statistics

METHODS = (("frozen", "(a) frozen CLIP classifier"), ("full", "(b) full fine-tuning"), ("simo", "FISA (SEVE + SIMO)"),
           ("simo-only", "SIMO alone (no SEVE)"))
REQUIRED = ("frozen", "full", "simo")  # simo-only is a later run: a row when its evaluations exist
GROUPS = ("seen", "novel_composition", "novel_concept")


def load(runs, method, seed, step):
    with open(os.path.join(runs, f"{method}-s{seed}.step{step}.eval.json")) as f:
        return json.load(f)


def cell(values):
    mean = statistics.mean(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ({' / '.join(f'{v:.1f}' for v in values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="the study's folder (RUNS of run-study.sh): *.eval.json and step-cost.json")
    parser.add_argument("--steps", type=int, nargs="+", required=True, help="evaluated steps; the last is the full run")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="the seeds the study ran")
    args = parser.parse_args()
    present = [(m, label) for m, label in METHODS if m in REQUIRED or all(
        os.path.exists(os.path.join(args.runs, f"{m}-s{s}.step{t}.eval.json")) for s in args.seeds for t in args.steps)]
    results = {(m, s, t): load(args.runs, m, s, t) for m, _ in present for s in args.seeds for t in args.steps}
    final = args.steps[-1]

    print(f"Accuracy after {final} steps (mean over seeds {args.seeds}; per seed in brackets)\n")
    header = [f"mIoU {g}" for g in GROUPS] + [f"PQ {g}" for g in GROUPS]
    print("| method | " + " | ".join(header) + " |\n|---|" + "---|" * len(header))
    for method, label in present:
        row = [cell([results[method, s, final][g][k] for s in args.seeds]) for k in ("miou", "pq") for g in GROUPS]
        print(f"| {label} | " + " | ".join(row) + " |")

    print("\nAdaptation-length curve (mean over seeds)\n")
    print("| method | steps | " + " | ".join(header) + " |\n|---|---|" + "---|" * len(header))
    curve, cells = {}, [(k, g) for k in ("miou", "pq") for g in GROUPS]
    for method, label in present:
        for step in args.steps:
            row = {(k, g): statistics.mean(results[method, s, step][g][k] for s in args.seeds) for k, g in cells}
            curve[method, step] = row
            print(f"| {label} | {step} | " + " | ".join(f"{row[c]:.1f}" for c in cells) + " |")

    cost_path = os.path.join(args.runs, "step-cost.json")
    if not os.path.exists(cost_path):
        return
    with open(cost_path) as f:
        runs = json.load(f)
    step_ms = [(r["variant"], r["forward_cpu_ms"] + r["backward_cpu_ms"] + r["optimizer_cpu_ms"]) for r in runs]
    measured = {v for v, _ in step_ms}
    cpu = {m: statistics.median(ms for v, ms in step_ms if v == m) for m, _ in present if m in measured}
    target = min(max(curve[m, t]["miou", "novel_concept"] for t in args.steps) for m in ("simo", "full"))
    print(f"\nCost (CPU time, one thread, benchmarks/study/step-cost.py); target: novel-concept mIoU {target:.1f}\n")
    print("| method | CPU ms / step | first evaluated step reaching the target | CPU time to reach it |")
    print("|---|---|---|---|")
    for method, label in present:
        reached = [t for t in args.steps if curve[method, t]["miou", "novel_concept"] >= target]
        if method not in cpu:
            first = reached[0] if reached else "not reached"
            print(f"| {label} | not in {os.path.basename(cost_path)} | {first} | — |")
            continue
        to_target = f"{reached[0]} | {reached[0] * cpu[method] / 1000:.0f} s" if reached else "not reached | —"
        print(f"| {label} | {cpu[method]:.0f} | {to_target} |")


if __name__ == "__main__":
    main()
