"""The markdown tables of the study (benchmarks/study/run-study.sh; issues 15 and 23) from its evaluation and cost
files.

    python benchmarks/study/study-table.py runs/study --steps 100 300 600 --seeds 0 1 2

1. accuracy after the full schedule: seen / novel-composition / novel-concept mIoU and PQ, mean ± sample standard
   deviation over seeds, each seed's value in brackets;
2. paired comparison of every method against SIMO alone, against the frozen classifier and against the default preset
   (SIMO alone with the weight ensemble), each where the study ran it: the mean over seeds of the
   same-seed difference, marked * where it exceeds the seed spread (every seed's difference has the same sign and the
   mean is larger than either method's standard deviation, and than 0.05; never with one seed);
3. the adaptation-length curve: the same at every evaluated step (mean over seeds);
4. cost: CPU time per step (benchmarks/study/step-cost.py) and the first evaluated step, and the CPU time it takes,
   at which a method's mean novel-concept mIoU reaches the frozen classifier's;
5. the feature-preservation weight's choice (distill-choice.json), where the study made one.
A method gets rows only when every seed's evaluation at every step exists (frozen, FISA and full are required).
"""

import argparse
import glob
import json
import os
import re
import statistics

LABELS = {
    "frozen": "(a) frozen CLIP classifier",
    "full": "(b) full fine-tuning",
    "simo": "FISA (SEVE + SIMO)",
    "simo-only": "SIMO alone (no SEVE)",
    "seve-late": "FISA, SEVE after blocks 3-4",
    "seve-slow-gate": "FISA, SEVE gates at 0.1x the rate",
    "simo-only-wise": "SIMO alone, weight ensemble 0.5",
    "simo-wise": "FISA, weight ensemble 0.5",
}
REQUIRED = ("frozen", "full", "simo")
GROUPS = ("seen", "novel_composition", "novel_concept")
CELLS = [(k, g) for k in ("miou", "pq") for g in GROUPS]
# step-cost.py's variant for each method: seve-slow-gate computes what simo does (only a learning rate differs)
# and the weight-ensembled runs train as their unmixed method does
COST_VARIANT = {"seve-late": "simo-late", "seve-slow-gate": "simo", "simo-only-wise": "simo-only", "simo-wise": "simo"}


def label(method):
    weight = re.fullmatch(r"seve-distill-w(.+)", method)
    return f"FISA + feature preservation (weight {weight.group(1)})" if weight else LABELS[method]


def cost_variant(method):
    return "seve-distill" if method.startswith("seve-distill-w") else COST_VARIANT.get(method, method)


def load(runs, method, seed, step):
    with open(os.path.join(runs, f"{method}-s{seed}.step{step}.eval.json")) as f:
        return json.load(f)


def methods_in(runs, seeds, steps):
    """The table's methods in order: the named ones, then every feature-preservation weight run on all seeds."""
    distilled = sorted({re.sub(r"-s\d+\.step.*", "", os.path.basename(p))
                        for p in glob.glob(os.path.join(runs, "seve-distill-w*-s*.step*.eval.json"))})
    return [m for m in list(LABELS) + distilled if m in REQUIRED or all(
        os.path.exists(os.path.join(runs, f"{m}-s{s}.step{t}.eval.json")) for s in seeds for t in steps)]


def spread_cell(values):
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {statistics.stdev(values):.1f} ({' / '.join(f'{v:.1f}' for v in values)})"


def paired_cell(mine, theirs):
    differences = [a - b for a, b in zip(mine, theirs)]
    mean = statistics.mean(differences)
    if len(mine) < 2:  # one seed has no spread to exceed: no star
        return f"{mean:+.1f}"
    spread = max(statistics.stdev(mine), statistics.stdev(theirs))
    same_sign = all(d > 0 for d in differences) or all(d < 0 for d in differences)
    # at least 0.05, so a star is never on a difference the table prints as 0.0
    return f"{mean:+.1f}{'*' if same_sign and abs(mean) > max(spread, 0.05) else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="the study's folder (RUNS of run-study.sh): *.eval.json and step-cost.json")
    parser.add_argument("--steps", type=int, nargs="+", required=True, help="evaluated steps; the last is the full run")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="the seeds the study ran")
    args = parser.parse_args()
    present = methods_in(args.runs, args.seeds, args.steps)
    results = {(m, s, t): load(args.runs, m, s, t) for m in present for s in args.seeds for t in args.steps}
    final = args.steps[-1]

    def values(method, step, cell):
        return [results[method, s, step][cell[1]][cell[0]] for s in args.seeds]

    header = [f"{'mIoU' if k == 'miou' else 'PQ'} {g}" for k, g in CELLS]
    print(f"Accuracy after {final} steps (mean ± standard deviation over seeds {args.seeds}; per seed in brackets)\n")
    print("| method | " + " | ".join(header) + " |\n|---|" + "---|" * len(header))
    for method in present:
        print(f"| {label(method)} | " + " | ".join(spread_cell(values(method, final, c)) for c in CELLS) + " |")

    for reference in ("simo-only", "frozen", "simo-only-wise"):
        if reference not in present:
            continue
        print(f"\nPaired with {label(reference)}, after {final} steps: mean same-seed difference; * where it exceeds "
              "the seed spread\n")
        print("| method | " + " | ".join(header) + " |\n|---|" + "---|" * len(header))
        for method in present:
            if method != reference:
                row = [paired_cell(values(method, final, c), values(reference, final, c)) for c in CELLS]
                print(f"| {label(method)} | " + " | ".join(row) + " |")

    print("\nAdaptation-length curve (mean over seeds)\n")
    print("| method | steps | " + " | ".join(header) + " |\n|---|---|" + "---|" * len(header))
    curve = {}
    for method in present:
        for step in args.steps:
            curve[method, step] = {c: statistics.mean(values(method, step, c)) for c in CELLS}
            print(f"| {label(method)} | {step} | " + " | ".join(f"{curve[method, step][c]:.1f}" for c in CELLS) + " |")

    cost_path = os.path.join(args.runs, "step-cost.json")
    if os.path.exists(cost_path):
        with open(cost_path) as f:
            runs = json.load(f)
        step_ms = [(r["variant"], r["forward_cpu_ms"] + r["backward_cpu_ms"] + r["optimizer_cpu_ms"]) for r in runs]
        measured = {v for v, _ in step_ms}
        cpu = {m: statistics.median(ms for v, ms in step_ms if v == cost_variant(m))
               for m in present if cost_variant(m) in measured}
        target = curve["frozen", final]["miou", "novel_concept"]
        print(f"\nCost (CPU time, one thread, benchmarks/study/step-cost.py); target: the frozen classifier's "
              f"novel-concept mIoU, {target:.1f}\n")
        print("| method | CPU ms / step | first evaluated step reaching the target | CPU time to reach it |")
        print("|---|---|---|---|")
        for method in present:
            reached = [t for t in args.steps if curve[method, t]["miou", "novel_concept"] >= target]
            if method not in cpu:
                first = reached[0] if reached else "not reached"
                print(f"| {label(method)} | not in {os.path.basename(cost_path)} | {first} | — |")
                continue
            to_target = f"{reached[0]} | {reached[0] * cpu[method] / 1000:.0f} s" if reached else "not reached | —"
            print(f"| {label(method)} | {cpu[method]:.0f} | {to_target} |")

    choice_path = os.path.join(args.runs, "distill-choice.json")
    if os.path.exists(choice_path):
        with open(choice_path) as f:
            choice = json.load(f)
        print(f"\nFeature-preservation weight, chosen on seed {choice['seed']} at step {choice['step']} by "
              f"{choice['rule']}: {choice['chosen']}\n")
        print("| weight | seen mIoU | seen PQ |\n|---|---|---|")
        for weight, seen in choice["candidates"].items():
            print(f"| {weight} | {seen['seen_miou']:.1f} | {seen['seen_pq']:.1f} |")


if __name__ == "__main__":
    main()
