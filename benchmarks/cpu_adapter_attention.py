"""SEVE's adapter attention on the CPU, inference: eager (the reference) against SDPA (its fused CPU kernel), over
a grid of batch, visual tokens N, classes K, head size and padded classes. What ``kernels='auto'`` chooses between
on a machine without a GPU (docs/design.md, "Kernel choice by measurement"); each case times eager, then SDPA, each
the median of a fixed number of calls on the wall clock.

    python benchmarks/cpu_adapter_attention.py [--threads 1] [--calls 9]
"""

import argparse
import itertools
import statistics
import time

import torch


def median_ms(run, calls: int) -> float:
    run()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main():
    from fisa_rt.kernels.adapter_attention import adapter_attention_reference, adapter_attention_sdpa

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), fp32, H = 4, one vocabulary per batch")
    print("| B | N | K | Dh | padded classes | eager ms | SDPA ms | eager / SDPA |\n|---|---|---|---|---|---|---|---|")
    ratios = []
    gen = torch.Generator().manual_seed(0)
    for B, N, K, Dh, padded in itertools.product((1, 4), (256, 1024, 4096), (1, 133, 1203), (32, 64), (False, True)):
        if B * N * K > 4 * 1024 * 1203:
            continue
        q = torch.randn(B, 4, N, Dh, generator=gen)
        k, v = (torch.randn(1, 4, K, Dh, generator=gen) for _ in "kv")
        valid = torch.ones(1, K, dtype=torch.bool) if padded else None
        if padded and K > 1:
            valid[0, -1] = False
        with torch.no_grad():
            eager = median_ms(lambda: adapter_attention_reference(q, k, v, valid), args.calls)
            sdpa = median_ms(lambda: adapter_attention_sdpa(q, k, v, valid), args.calls)
        ratios.append(eager / sdpa)
        print(f"| {B} | {N} | {K} | {Dh} | {'yes' if padded else 'no'} | {eager:.3f} | {sdpa:.3f} | "
              f"{eager / sdpa:.2f}x |", flush=True)
    print(f"\neager / SDPA: min {min(ratios):.2f}x, median {statistics.median(ratios):.2f}x, max {max(ratios):.2f}x")


if __name__ == "__main__":
    main()
