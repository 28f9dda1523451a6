"""pytest-benchmark JSON -> the markdown report committed under benchmarks/results/.

    pytest benchmarks/ --benchmark-only --benchmark-json bench.json
    python benchmarks/report.py bench.json                # writes benchmarks/results/<date>-<device>.md
    python benchmarks/report.py part.json --append REPORT.md --command "pytest benchmarks/test_x.py ..."
                                                          # adds a partial run's tables to a report
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import defaultdict

KEYS = (
    "backend",
    "precision",
    "device",
    "stage",
    "classes",
    "image",
    "batch",
    "max_abs_mask_logit",
    "max_abs_class_prob",
    "cosine",
    "label_agreement",
    "panoptic_agreement",
    "delta_pq",
    "delta_miou",
    "queries",
    "model_ms",
    "peak_rss_mb",
    "model_size_peak_rss_mb",
    "above_model_mb",
    "wall_s",
    "cpu_s",
    "one_pixel_wall_s",
    "one_pixel_cpu_s",
    "load_average",
    "stages",
    "tflops",
    "gbps",
    "compute_roofline_fraction",
    "memory_roofline_fraction",
)


COMMAND = "pytest benchmarks/ --benchmark-only --benchmark-json bench.json && python benchmarks/report.py bench.json"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def render(data: dict, command: str = COMMAND, title: bool = True) -> str:
    info = data.get("machine_info", {}).get("fisa_rt", {})
    versions = ", ".join(f"{k} {v}" for k, v in (info.get("versions") or {}).items() if v)
    lines = [f"# fisa-rt benchmarks — {info.get('device', 'unknown device')}", ""] if title else ["# Added run", ""]
    lines += [
        f"- date: {info.get('date')}; compute capability: {info.get('capability') or '-'}",
        f"- versions: {versions}",
        f"- command: `{command}`",
        "",
    ]
    groups = defaultdict(list)
    for bench in data.get("benchmarks", []):
        groups[bench["name"].split("[")[0]].append(bench)
    for group, benches in groups.items():
        present = {k for b in benches for k in b.get("extra_info", {})}
        # the known keys in a fixed order, then any other a benchmark recorded: none is dropped
        columns = [k for k in KEYS if k in present] + sorted(present.difference(KEYS))
        lines += [f"## {group}", "", _row(["case", "median ms", "min ms", "rounds", *columns]),
                  "|" + "---|" * (4 + len(columns))]
        for b in benches:
            stats, extra = b["stats"], b.get("extra_info", {})
            case = b["name"][len(group):].strip("[]") or "-"
            times = (f"{stats['median'] * 1e3:.2f}", f"{stats['min'] * 1e3:.2f}", stats["rounds"])
            lines.append(_row([case, *times, *(_fmt(extra.get(k, "")) for k in columns)]))
        lines.append("")
    skipped = data.get("skipped") or []
    if skipped:
        reasons = defaultdict(list)
        for s in skipped:
            reasons[s["reason"]].append(s["test"].split("::")[-1])
        lines += ["## Not measured on this machine", ""]
        for reason, tests in reasons.items():
            cases = f"{len(tests)} case{'s' if len(tests) > 1 else ''}"
            lines.append(f"- {reason}: {cases} ({', '.join(tests[:4])}{', ...' if len(tests) > 4 else ''})")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="pytest-benchmark --benchmark-json output")
    parser.add_argument("--out", help="markdown file (default: benchmarks/results/<date>-<device>.md)")
    parser.add_argument("--append", metavar="REPORT", help="add this run's tables to an existing report instead")
    parser.add_argument("--command", default=COMMAND, help="the command that produced the JSON, as the report shows it")
    args = parser.parse_args(argv)
    try:
        with open(args.json) as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        print(f"report.py: cannot read {args.json} as pytest-benchmark JSON: {error}", file=sys.stderr)
        return 2
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + render(data, args.command, title=False))
        print(f"added {len(data.get('benchmarks', []))} benchmarks to {args.append}")
        return 0
    info = data.get("machine_info", {}).get("fisa_rt", {})
    slug = re.sub(r"[^a-z0-9]+", "-", str(info.get("device", "unknown")).lower()).strip("-")[:40]
    out = args.out or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results", f"{info.get('date', 'undated')}-{slug}.md"
    )
    if os.path.exists(out):
        print(f"report.py: {out} exists; move it away or name another with --out", file=sys.stderr)
        return 2
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        f.write(render(data))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
