"""The traffic model (fisa_rt.kernels.traffic): hand counts on small shapes, the committed table is the
model's current output, and the fused paths meet the issue's targets in it."""

import os

import pytest

from fisa_rt.kernels import traffic
from fisa_rt.kernels.traffic import MaskStats

TABLE = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "results", "traffic-model-h100.md")


def test_bilinear_taps_touch_two_rows_per_output_row_in_whole_sectors():
    # 8x8 fp32 -> 2x2: 4 of 8 rows, each 32 bytes = one sector
    assert traffic.bilinear_tap_bytes(1, (2, 2), (8, 8), 4) == 4 * 32
    # upsampling 2x2 fp16 -> 8x8 touches both rows, one sector each; 3 masks
    assert traffic.bilinear_tap_bytes(3, (8, 8), (2, 2), 2) == 3 * 2 * 32
    # 160x160 fp16 -> 40x40: 80 rows of 10 sectors
    assert traffic.bilinear_tap_bytes(1, (40, 40), (160, 160), 2) == 80 * 10 * 32


def test_adapter_counts_by_hand():
    B, H, N, K, D, e = 1, 1, 4, 2, 2, 2  # q 16 B, k and v 8 B each, o 16 B, scores 16 B
    eager = traffic.adapter_eager(B, H, N, K, D, e)
    assert (eager.read, eager.write, eager.flops, eager.launches) == (24 + 16 + 16 + 24, 16 * 3 + 16, 64.0, 4)
    floor, fused = traffic.adapter_floor(B, H, N, K, D, e), traffic.adapter_fused(B, H, N, K, D, e, block_n=2)
    assert (floor.read, floor.write) == (32, 16)
    assert (fused.read, fused.write, fused.launches) == (32, 16 + 4 * 4, 1)  # + the fp32 log-sum-exp
    assert fused.l2_bytes == (2 - 1) * 16  # the second row block re-reads k and v


def test_masked_attention_counts_by_hand():
    B, H, Q, N, D, e = 1, 1, 2, 4, 2, 2
    stats = MaskStats(coverage=0.5, tiles_visited=1.0, blocks_visited=1.0)
    fused = traffic.mask_attention_fused(
        B, H, Q, N, D, e, taps=100, e_mask=2, stats=stats, layers=1, tiles=(2, 4), splits=1
    )
    # layout: interpolate 100 -> 16, > 16 -> 8, any 8 -> 2, pad 2 -> 2, any 2 -> 1, sort 1 -> 8, count 1 -> 4,
    # int32 8 -> 4
    layout_read, layout_write = 100 + 16 + 8 + 2 + 2 + 1 + 1 + 8, 16 + 8 + 2 + 2 + 1 + 8 + 4 + 4
    # attention: q, k_self, v_self 24, k and v 32, int8 mask 8, lists 8; writes out 8 and the log-sum-exp 8
    assert (fused.read, fused.write) == (layout_read + 24 + 32 + 8 + 8, layout_write + 8 + 8)
    assert fused.flops == 4.0 * 2 * 4 * 2
    split = traffic.mask_attention_fused(B, H, Q, N, D, e, 100, 2, stats, 1, (2, 4), splits=3)
    # three partials of (out 4 B + lse 4 B) per token written, read back by the combine, which writes out + lse
    assert split.write - fused.write == 3 * 2 * (4 + 4) - 16 + 16 and split.launches == fused.launches + 1
    floor = traffic.mask_attention_floor(B, H, Q, N, D, e, taps=100, stats=stats, layers=2)
    assert (floor.read, floor.write, floor.flops) == (24 + 32 + 50, 8, 4.0 * 2 * 2 * 2)


def test_pooling_counts_by_hand():
    B, Q, C, HW, K, e = 1, 2, 4, 8, 3, 2
    fused = traffic.pooling_fused(B, Q, C, HW, K, e, taps=64, block_q=2, block_m=2)
    # weights 64 -> 32; pool 32 + 64 -> 32 (fp32 pooled) + 8 (areas); logits 32 + 24 -> 12
    assert (fused.read, fused.write, fused.launches) == (64 + 96 + 56, 32 + 40 + 12, 3)
    assert fused.flops == 2.0 * Q * C * (HW + K)
    assert traffic.pooling_floor(B, Q, C, HW, K, e, taps=64).dram_bytes == 64 + 64 + 24 + 12


def test_box_masks_cover_what_the_issue_asks():
    stats = traffic.box_mask_stats(100, (40, 40), (64, 64))
    assert 0.05 <= stats.coverage <= 0.3 and 0 < stats.tiles_visited <= stats.blocks_visited <= 1


@pytest.fixture(scope="module")
def rows():
    return traffic.rows()


def test_committed_table_is_the_models_output(rows):
    with open(TABLE) as f:
        assert f.read() == traffic.markdown(
            rows
        ), "regenerate: python -m fisa_rt.kernels.traffic --out benchmarks/results/traffic-model-h100.md"


def test_every_fused_path_is_within_1_5x_of_its_floor_and_ahead_of_eager(rows):
    for row in rows:
        floor, fused, eager = row.times(traffic.H100)
        assert fused <= 1.5 * floor, (row.op, row.shape, fused / floor)
        assert fused < eager, (row.op, row.shape)
