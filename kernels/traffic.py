"""A traffic model of the fused kernels and the eager chains they replace: bytes that cross DRAM, FLOPs,
launches, and the time those take at a GPU's bandwidth and tensor-core peaks. A model, not a measurement.

Counting rules, derived from each kernel's loop structure (the launchers in ``*_triton.py``):
- Every tensor a kernel (or eager op) reads is read from DRAM once and every output written once. Re-reads
  *within* a kernel (k/v re-read by every row-block program, the int8 mask re-read by every head) hit L2:
  at these shapes they are < 10 MB, against 50 MB of L2 on an H100. They are reported apart (``l2_bytes``).
- Anything that crosses a kernel boundary (the layout, the split-K partials, the pooling weights, an eager
  op's output) is written and read again in full: no L2 credit across launches.
- Bilinear mask sampling touches 2 source rows per output row and whole 32-byte sectors of them (the same
  for F.interpolate and for the kernels), ``bilinear_tap_bytes``.
- FLOPs are matrix products only (2 per multiply-add); elementwise work is hidden under memory time.
- The floor of an op: its inputs read once, its outputs written once, nothing else (masks read once per
  forward, scores never written), and only the FLOPs of the products that the math needs.

``python -m fisa_rt.kernels.traffic --out benchmarks/results/traffic-model-h100.md`` writes the table;
``tests/kernels/test_traffic.py`` checks the counts by hand on small shapes and that the table is current.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

SECTOR = 32  # bytes per DRAM/L2 sector


@dataclass(frozen=True)
class Peaks:
    name: str
    dram_bytes_per_s: float
    tensor_flops_per_s: float  # dense fp16/bf16


# NVIDIA H100 SXM5 datasheet: 3.35 TB/s HBM3, 989.4 dense fp16 tensor TFLOP/s; 132 SMs.
H100 = Peaks("H100 SXM (datasheet peaks)", 3.35e12, 989.4e12)
H100_SMS = 132


@dataclass
class Traffic:
    """What one kernel or op moves and computes; summed over a chain with ``+``."""

    read: float = 0.0
    write: float = 0.0
    flops: float = 0.0
    launches: int = 0
    l2_bytes: float = 0.0  # loads served by L2 within a kernel (re-reads), not in ``read``
    parts: List[str] = field(default_factory=list)

    @property
    def dram_bytes(self) -> float:
        return self.read + self.write

    def __add__(self, other: "Traffic") -> "Traffic":
        return Traffic(self.read + other.read, self.write + other.write, self.flops + other.flops,
                       self.launches + other.launches, self.l2_bytes + other.l2_bytes, self.parts + other.parts)

    def scaled(self, factor: float) -> "Traffic":
        """This traffic shared by ``1 / factor`` calls (a per-forward cost amortised over layers)."""
        return Traffic(self.read * factor, self.write * factor, self.flops * factor, self.launches,
                       self.l2_bytes * factor, self.parts)

    def seconds(self, peaks: Peaks) -> float:
        return max(self.dram_bytes / peaks.dram_bytes_per_s, self.flops / peaks.tensor_flops_per_s)


def op(name: str, read: float = 0.0, write: float = 0.0, flops: float = 0.0, l2_bytes: float = 0.0) -> Traffic:
    return Traffic(read, write, flops, 1, l2_bytes, [name])


def bilinear_tap_bytes(masks: int, out_hw: Tuple[int, int], in_hw: Tuple[int, int], elem: int) -> float:
    """Bytes of mask logits a bilinear resize of ``masks`` maps from ``in_hw`` to ``out_hw`` touches."""
    rows = min(in_hw[0], 2 * out_hw[0])
    sectors = min(math.ceil(in_hw[1] * elem / SECTOR), 2 * out_hw[1])
    return float(masks * rows * sectors * SECTOR)


# ---- adapter attention: q (B, H, N, D), k/v (1, H, K, D) shared by the batch --------------------------------

def adapter_floor(B, H, N, K, D, e) -> Traffic:
    return op("floor", read=B * H * N * D * e + 2 * H * K * D * e, write=B * H * N * D * e,
              flops=4.0 * B * H * N * K * D)


def adapter_fused(B, H, N, K, D, e, block_n=128) -> Traffic:
    programs = math.ceil(N / block_n) * B * H
    return op(
        "adapter_attention_fwd", read=B * H * N * D * e + 2 * H * K * D * e, write=B * H * N * D * e + B * H * N * 4,
        flops=4.0 * B * H * N * math.ceil(K / 16) * 16 * D, l2_bytes=(programs - H) * 2 * K * D * e,
    )


def adapter_eager(B, H, N, K, D, e) -> Traffic:
    q, kv, o, s = B * H * N * D * e, H * K * D * e, B * H * N * D * e, B * H * N * K * e
    return (op("matmul q k^T", read=q + kv, write=s, flops=2.0 * B * H * N * K * D) + op("* scale", read=s, write=s)
            + op("softmax", read=s, write=s) + op("matmul p v", read=s + kv, write=o, flops=2.0 * B * H * N * K * D))


# ---- masked attention of mask tokens ----------------------------------------------------------------------

@dataclass(frozen=True)
class MaskStats:
    """What the masks look like to the kernel: inside fraction, and the fractions of (mask block, token
    block) tiles and of token blocks (for any mask block) that hold an inside token."""

    coverage: float
    tiles_visited: float
    blocks_visited: float


def box_mask_stats(Q: int, grid: Tuple[int, int], tiles: Tuple[int, int], cover=(0.05, 0.3), seed: int = 0
                   ) -> MaskStats:
    """MaskStats of Q random boxes covering ``cover`` of the image each (aspect 0.6-1.6), seeded."""
    import torch

    from .mask_attention import build_mask_layout

    gen = torch.Generator().manual_seed(seed)
    gh, gw = grid
    inside = torch.zeros(1, Q, gh, gw, dtype=torch.bool)
    for q in range(Q):
        area = float(torch.empty(1).uniform_(*cover, generator=gen)) * gh * gw
        h = max(1, min(gh, round(math.sqrt(area) * float(torch.empty(1).uniform_(0.6, 1.6, generator=gen)))))
        w = max(1, min(gw, round(area / h)))
        y = int(torch.randint(0, gh - h + 1, (1,), generator=gen))
        x = int(torch.randint(0, gw - w + 1, (1,), generator=gen))
        inside[0, q, y : y + h, x : x + w] = True
    logits = inside.float() * 2 - 1  # +1 inside, -1 outside: threshold 0 at the grid's own resolution
    layout = build_mask_layout(logits, grid, 0.0, tiles)
    QB, NB = layout.block_indices.shape[1:]
    counts = layout.block_counts[0]
    occupied_blocks = set()
    for qb in range(QB):
        occupied_blocks.update(layout.block_indices[0, qb, : int(counts[qb])].tolist())
    return MaskStats(float(inside.float().mean()), float(counts.sum()) / (QB * NB), len(occupied_blocks) / NB)


def mask_attention_floor(B, H, Q, N, D, e, taps, stats: MaskStats, layers: int) -> Traffic:
    return op(
        "floor", read=3 * B * H * Q * D * e + 2 * B * H * N * D * e + taps / layers,
        write=B * H * Q * D * e, flops=4.0 * B * H * Q * stats.coverage * N * D,
    )


def mask_layout_build(B, Q, N, taps, e_mask, tiles: Tuple[int, int]) -> Traffic:
    """``build_mask_layout``: PyTorch ops, once per forward (shared by every layer and head); N a multiple
    of the token block (no padding pass), the int8 mask a view of the bool one."""
    bq, bn = tiles
    QB, NB = math.ceil(Q / bq), math.ceil(N / bn)
    per_mask, small = B * Q * NB, B * QB * NB
    return (op("interpolate", read=taps, write=B * Q * N * e_mask)
            + op("> threshold", read=B * Q * N * e_mask, write=B * Q * N)
            + op("any (token block)", read=B * Q * N, write=per_mask) + op("pad", read=per_mask, write=B * QB * bq * NB)
            + op("any (mask block)", read=B * QB * bq * NB, write=small) + op("sort", read=small, write=small * 8)
            + op("count", read=small, write=small * 4) + op("indices to int32", read=small * 8, write=small * 4))


def mask_attention_splits(B, H, Q, N, tiles: Tuple[int, int], sms: int = H100_SMS) -> int:
    """``mask_attention_triton.num_splits`` on a GPU with ``sms`` SMs."""
    bq, bn = tiles
    programs = math.ceil(Q / bq) * B * H
    return max(1, min(math.ceil(N / bn), math.ceil(sms / programs)))


def mask_attention_fused(B, H, Q, N, D, e, taps, e_mask, stats: MaskStats, layers: int, tiles=(64, 64), splits=None
                         ) -> Traffic:
    bq, bn = tiles
    QB, NB = math.ceil(Q / bq), math.ceil(N / bn)
    splits = mask_attention_splits(B, H, Q, N, tiles) if splits is None else splits
    qkv_self, out = 3 * B * H * Q * D * e, B * H * Q * D * e
    kv = 2 * B * H * N * D * e * stats.blocks_visited
    lists = B * QB * (NB + 1) * 4
    visited = stats.tiles_visited * QB * NB
    attend = op(
        "mask_attention_sparse_fwd", read=qkv_self + kv + B * Q * N + lists,
        write=splits * B * H * Q * (D * e + 4) if splits > 1 else out + B * H * Q * 4,
        flops=4.0 * B * H * visited * bq * bn * D,
        l2_bytes=B * H * visited * (2 * bn * D * e + bq * bn) - kv - B * Q * N,
    )
    chain = mask_layout_build(B, Q, N, taps, e_mask, tiles).scaled(1.0 / layers) + attend
    if splits > 1:
        chain = chain + op("mask_attention_combine", read=splits * B * H * Q * (D * e + 4), write=out + B * H * Q * 4)
    return chain


def mask_attention_eager(B, H, Q, N, D, e, taps, e_mask) -> Traffic:
    q, kv, s, s1 = B * H * Q * D * e, B * H * N * D * e, B * H * Q * N * e, B * H * Q * (N + 1) * e
    return (op("interpolate", read=taps, write=B * Q * N * e_mask)
            + op("> threshold", read=B * Q * N * e_mask, write=B * Q * N)
            + op("matmul q k^T", read=q + kv, write=s, flops=2.0 * B * H * Q * N * D) + op("* scale", read=s, write=s)
            + op("masked_fill", read=s + B * H * Q * N, write=s) + op("q . k_self", read=2 * q, write=B * H * Q * e)
            + op("* scale", read=B * H * Q * e, write=B * H * Q * e) + op("cat", read=s + B * H * Q * e, write=s1)
            + op("softmax", read=s1, write=s1) + op("matmul p v", read=s + kv, write=q, flops=2.0 * B * H * Q * N * D)
            + op("p_self * v_self", read=B * H * Q * e + q, write=q) + op("add", read=2 * q, write=q))


# ---- mask-average pooling -> cosine logits ---------------------------------------------------------------

def pooling_floor(B, Q, C, HW, K, e, taps) -> Traffic:
    return op("floor", read=taps + B * C * HW * e + K * C * e, write=B * Q * K * e, flops=2.0 * B * Q * C * (HW + K))


def pooling_fused(B, Q, C, HW, K, e, taps, block_q=128, block_m=128) -> Traffic:
    w, pooled = B * Q * HW * e, B * Q * C * 4
    return (op("mask_weights", read=taps, write=w)
            + op("mask_pool_fwd", read=w + B * C * HW * e, write=pooled + B * Q * 4, flops=2.0 * B * Q * C * HW,
                 l2_bytes=(math.ceil(Q / block_q) - 1) * B * C * HW * e)
            + op("cosine_logits", read=pooled + K * C * e, write=B * Q * K * e, flops=2.0 * B * Q * C * K,
                 l2_bytes=(math.ceil(B * Q / block_m) - 1) * K * C * e))


def pooling_eager(B, Q, C, HW, K, e, taps, e_mask) -> Traffic:
    m, w, p, t, lg = B * Q * HW * e_mask, B * Q * HW * e, B * Q * C * e, K * C * e, B * Q * K * e
    return (op("interpolate", read=taps, write=m) + op("> threshold", read=m, write=B * Q * HW)
            + op("to dtype", read=B * Q * HW, write=w) + op("sum", read=w, write=B * Q * e)
            + op("+ eps", read=B * Q * e, write=B * Q * e) + op("divide", read=w + B * Q * e, write=w)
            + op("einsum (bmm)", read=w + B * C * HW * e, write=p, flops=2.0 * B * Q * C * HW)
            + op("norm pooled", read=p, write=B * Q * e) + op("clamp", read=B * Q * e, write=B * Q * e)
            + op("divide", read=p + B * Q * e, write=p)
            + op("norm text", read=t, write=K * e) + op("clamp", read=K * e, write=K * e)
            + op("divide", read=t + K * e, write=t)
            + op("matmul", read=p + t, write=lg, flops=2.0 * B * Q * C * K) + op("* scale", read=lg, write=lg))


# ---- the table -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    op: str
    shape: str
    floor: Traffic
    fused: Traffic
    eager: Traffic

    def times(self, peaks: Peaks) -> Tuple[float, float, float]:
        return self.floor.seconds(peaks), self.fused.seconds(peaks), self.eager.seconds(peaks)


FP16 = 2
MASK_LAYERS = 3  # FisaConfig.num_mask_layers: the layers that share one MaskLayout


def rows() -> List[Row]:
    out = []
    for N, K in ((1600, 133), (1600, 1203), (16384, 133), (16384, 1203)):
        B, H, D = 1, 12, 64
        out.append(Row("adapter attention", f"N={N} K={K} C=768 H=12", adapter_floor(B, H, N, K, D, FP16),
                       adapter_fused(B, H, N, K, D, FP16), adapter_eager(B, H, N, K, D, FP16)))
    for Q in (100, 250):
        B, H, D, grid, mask = 1, 12, 64, (40, 40), (160, 160)
        N = grid[0] * grid[1]
        taps = bilinear_tap_bytes(B * Q, grid, mask, FP16)
        stats = box_mask_stats(Q, grid, (64, 64))
        out.append(Row(
            "masked attention",
            f"Q={Q} N={N} C=768 H=12, masks {mask[0]}² covering 5-30 % ({stats.coverage:.0%} mean), "
            f"layout shared by {MASK_LAYERS} layers",
            mask_attention_floor(B, H, Q, N, D, FP16, taps, stats, MASK_LAYERS),
            mask_attention_fused(B, H, Q, N, D, FP16, taps, FP16, stats, MASK_LAYERS),
            mask_attention_eager(B, H, Q, N, D, FP16, taps, FP16),
        ))
    B, Q, C, grid, mask, K = 1, 250, 768, (40, 40), (256, 256), 133
    HW = grid[0] * grid[1]
    taps = bilinear_tap_bytes(B * Q, grid, mask, FP16)
    out.append(Row("pooling -> logits", f"Q={Q} masks {mask[0]}², C={C} on {grid[0]}², K={K}",
                   pooling_floor(B, Q, C, HW, K, FP16, taps),
                   pooling_fused(B, Q, C, HW, K, FP16, taps), pooling_eager(B, Q, C, HW, K, FP16, taps, FP16)))
    return out


def markdown(table: Sequence[Row], peaks: Peaks = H100) -> str:
    lines = [
        f"# Traffic model of the fused kernels, at {peaks.name}",
        "",
        "**A model, not a measurement** (`python -m fisa_rt.kernels.traffic`; counting rules in",
        "`kernels/traffic.py`): DRAM bytes and tensor-core FLOPs from each kernel's loop structure, forward pass,",
        f"fp16, batch 1; time = max(bytes / {peaks.dram_bytes_per_s / 1e12:.2f} TB/s, FLOPs / "
        f"{peaks.tensor_flops_per_s / 1e12:.0f} TFLOP/s), launch latency not included (the eager chains",
        "launch 4-15 kernels, the fused paths 1-3). A GPU run (`scripts/gpu-check.sh`) replaces it with measurements.",
        "",
        "| op | shape | floor MB | fused MB | eager MB | fused GFLOP | launches fused / eager | floor µs | fused µs "
        "| eager µs | fused / floor | eager / fused |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        floor_t, fused_t, eager_t = r.times(peaks)
        lines.append(
            f"| {r.op} | {r.shape} | {r.floor.dram_bytes / 1e6:.2f} | {r.fused.dram_bytes / 1e6:.2f} | "
            f"{r.eager.dram_bytes / 1e6:.2f} | {r.fused.flops / 1e9:.2f} | {r.fused.launches} / {r.eager.launches} | "
            f"{floor_t * 1e6:.2f} | {fused_t * 1e6:.2f} | "
            f"{eager_t * 1e6:.2f} | {fused_t / floor_t:.2f} | {eager_t / fused_t:.1f} |"
        )
    lines += ["", "Target: every fused path within 1.5x of its floor and ahead of the eager chain.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write the traffic model's table (a model, not a measurement).")
    parser.add_argument("--out", help="markdown file to write (default: print)")
    args = parser.parse_args(argv)
    text = markdown(rows())
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
