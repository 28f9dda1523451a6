"""DRAM traffic of the pixel decoder's deformable attention: grid_sample path against a fused kernel.

    python benchmarks/deformable_attention_traffic.py            # FC-CLIP shapes at 1088 px, fp16
    python benchmarks/deformable_attention_traffic.py --size 800 --bytes 4

A model, not a measurement: each op of the grid_sample path (as exported to ONNX, one kernel per op)
reads its inputs from and writes its output to DRAM; a fused kernel reads the values (bilinear
re-reads assumed to hit L2), sampling offsets and attention logits once and writes the output once.
Linear projections are common to both and left out. The best case for an unfused engine (TensorRT
fusing every elementwise op and the weighted sum into GridSample's consumer) still writes and
re-reads GridSample's (S, heads, levels * points, head_dim) output; it is given as its own row.
"""

from __future__ import annotations

import argparse

# Peak DRAM bandwidth, GB/s (vendor figures).
BANDWIDTH = {"H100 SXM": 3350.0, "Jetson AGX Orin": 204.8}


def traffic(size: int, dim: int = 256, heads: int = 8, levels: int = 3, points: int = 4, strides=(8, 16, 32)):
    """Elements moved per encoder layer (per image) by each path."""
    S = sum((size // s) ** 2 for s in strides)
    off, att = heads * levels * points * 2, heads * levels * points
    sampled = heads * levels * points * (dim // heads)  # grid_sample outputs per query
    unfused = S * (
        2 * dim  # value reshaped to (B*M, Dh, h, w) per level
        + 2 * att  # softmax of the attention logits
        + 2 * off + 2 * off + 2 * off  # locations = ref + off / (w, h); grids = 2 loc - 1; per-level slices
        + dim + off + sampled  # grid_sample: values, grids in; samples out
        + 2 * sampled  # stack + flatten
        + 2 * att  # weights transposed
        + 2 * sampled + att  # samples x weights
        + sampled + dim  # sum over levels x points
        + 2 * dim  # heads back to channels-last
    )
    best_unfused = S * (dim + off + att + 2 * sampled + dim)
    fused = S * (dim + off + att + dim)
    return S, {"grid_sample graph": unfused, "grid_sample, elementwise fused": best_unfused, "fused kernel": fused}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1088, help="square input side (fcclip-convnext-l: 1088)")
    parser.add_argument("--layers", type=int, default=6, help="deformable encoder layers (FC-CLIP: 6)")
    parser.add_argument("--bytes", type=int, default=2, help="bytes per element (2: fp16 engine, 4: fp32)")
    args = parser.parse_args()
    S, paths = traffic(args.size)
    print(f"{args.size} px: {S} tokens on strides 8/16/32, {args.layers} layers, {args.bytes} B/element")
    print(f"{'path':32s} {'GB/image':>9s} " + " ".join(f"{name + ' ms':>20s}" for name in BANDWIDTH))
    for name, elements in paths.items():
        gb = elements * args.layers * args.bytes / 1e9
        print(f"{name:32s} {gb:9.3f} " + " ".join(f"{gb / bw * 1e3:20.2f}" for bw in BANDWIDTH.values()))


if __name__ == "__main__":
    main()
