"""pytest-benchmark JSON -> the markdown report committed under benchmarks/results/.

    pytest benchmarks/ --benchmark-only --benchmark-json bench.json
    python benchmarks/report.py bench.json                # writes benchmarks/results/<date>-<device>.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import defaultdict

KEYS = ("backend", "precision", "device", "stage", "classes", "image", "batch", "max_abs_mask_logit", "max_abs_class_prob", "cosine",
        "label_agreement", "panoptic_agreement", "delta_pq", "delta_miou", "queries", "model_ms", "peak_rss_mb",
        "model_size_peak_rss_mb", "above_model_mb", "tflops", "gbps", "compute_roofline_fraction", "memory_roofline_fraction")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def render(data: dict) -> str:
    info = data.get("machine_info", {}).get("fisa_rt", {})
    versions = ", ".join(f"{k} {v}" for k, v in (info.get("versions") or {}).items() if v)
    lines = [
        f"# fisa-rt benchmarks — {info.get('device', 'unknown device')}",
        "",
        f"- date: {info.get('date')}; compute capability: {info.get('capability') or '-'}",
        f"- versions: {versions}",
        "- command: `pytest benchmarks/ --benchmark-only --benchmark-json bench.json && python benchmarks/report.py bench.json`",
        "",
    ]
    groups = defaultdict(list)
    for bench in data.get("benchmarks", []):
        groups[bench["name"].split("[")[0]].append(bench)
    for group, benches in groups.items():
        columns = [k for k in KEYS if any(k in b.get("extra_info", {}) for b in benches)]
        lines += [f"## {group}", "", "| case | median ms | min ms | rounds | " + " | ".join(columns) + " |",
                  "|---|---|---|---|" + "---|" * len(columns)]
        for b in benches:
            case = b["name"][len(group):].strip("[]") or "-"
            stats, extra = b["stats"], b.get("extra_info", {})
            cells = [_fmt(extra.get(k, "")) for k in columns]
            lines.append(f"| {case} | {stats['median'] * 1e3:.2f} | {stats['min'] * 1e3:.2f} | {stats['rounds']} | " + " | ".join(cells) + " |")
        lines.append("")
    skipped = data.get("skipped") or []
    if skipped:
        reasons = defaultdict(list)
        for s in skipped:
            reasons[s["reason"]].append(s["test"].split("::")[-1])
        lines += ["## Not measured on this machine", ""]
        for reason, tests in reasons.items():
            lines.append(f"- {reason}: {len(tests)} cases ({', '.join(tests[:4])}{', ...' if len(tests) > 4 else ''})")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="pytest-benchmark --benchmark-json output")
    parser.add_argument("--out", help="markdown file (default: benchmarks/results/<date>-<device>.md)")
    args = parser.parse_args(argv)
    with open(args.json) as f:
        data = json.load(f)
    info = data.get("machine_info", {}).get("fisa_rt", {})
    slug = re.sub(r"[^a-z0-9]+", "-", str(info.get("device", "unknown")).lower()).strip("-")[:40]
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"{info.get('date', 'undated')}-{slug}.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(render(data))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
