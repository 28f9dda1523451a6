"""Cost of one stage-3 training step, per trainable preset and per way of running the frozen part.

Each variant runs in its own process (so peak memory is its own), variants interleaved round by round so
that load from other users of a shared machine falls on all of them alike; the table gives medians.
Per step: forward, backward and optimiser time (data loading excluded: the batch is read beforehand), as
wall-clock and as CPU time of the process (all threads; what the step costs, nearly independent of other
load on a shared machine),
bytes autograd keeps for backward (activations, parameters excluded), weight-gradient and AdamW-state
bytes, and the peak resident memory the steps add (Linux VmHWM, reset before timing).

Variants — the presets of `fisa-rt train adapt --trainable`, then FISA run differently:
  frozen, simo, full       as trained
  simo-only                FISA's SIMO parameters without SEVE (no gradient into the image encoder)
  simo-late                SEVE adapters moved from layers 1, 2 to 3, 4 (gradient crosses fewer blocks; the study's
                           seve-late)
  seve-distill             FISA with the feature-preservation term (`--feature-distill`; the cost does not depend on
                           its weight; the study's seve-slow-gate costs what simo does: only a learning rate differs)
  simo-nograd-prefix       the blocks before the first adapter under torch.no_grad
  simo-checkpoint          blocks after the first adapter recomputed in backward (activation checkpointing)
  simo-detach-generator    no gradient through the frozen mask generator into the adapters

Usage (the embedded model's weights stand in for a stage-2 checkpoint; cost does not depend on them):

    nice -n 19 python benchmarks/study/step-cost.py --data runs/data --steps 8 --rounds 2 [--json cost.json]
"""

import argparse
import copy
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

VARIANTS = ("frozen", "simo", "full", "simo-only",
            "simo-late", "seve-distill", "simo-nograd-prefix", "simo-checkpoint", "simo-detach-generator")
EMBEDDED = os.path.join(os.path.dirname(__file__), "..", "..", "fisa_rt", "assets", "fisa-tiny-synthetic.safetensors")


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _apply_variant(model, variant: str) -> None:
    """Rewire the FISA model for ``variant`` (every change here keeps the step's loss the same function,
    except simo-detach-generator and simo-late, which change what is trained)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    blocks = model.backbone.visual.transformer.resblocks
    first = min(int(k) for k in model.backbone.seve)
    if variant == "simo-late":
        template = model.backbone.seve[str(first)]
        model.backbone.seve = torch.nn.ModuleDict({str(i): copy.deepcopy(template) for i in (3, 4)})
    elif variant == "simo-nograd-prefix":
        for block in blocks[:first + 1]:  # the adapter comes after its block, so block `first` is frozen too
            block.forward = torch.no_grad()(block.forward)
    elif variant == "simo-checkpoint":
        for block in blocks[first + 1:]:
            block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
    elif variant == "simo-detach-generator":
        generator_forward = model.mask_generator.forward
        model.mask_generator.forward = lambda features: generator_forward({k: v.detach() for k, v in features.items()})


def measure_one(variant: str, data: str, init: str, batch_size: int, steps: int) -> dict:
    import torch

    from fisa_rt.config import TRAINABLE_PRESETS
    from fisa_rt.simo import select_trainable
    from fisa_rt.train.trainer import Distributed, TrainConfig, _Stage, batch_keys

    preset = variant if variant in TRAINABLE_PRESETS else "simo"  # the others are FISA rewired
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(stage="adapt", data=data, init=init, out=os.path.join(tmp, "x.safetensors"), trainable=preset,
                          batch_size=batch_size, steps=steps, progress=False,
                          feature_distill=1.0 if variant == "seve-distill" else 0.0)
        torch.manual_seed(0)
        stage = _Stage(cfg, Distributed())
    model = stage.model
    if preset == "simo":
        _apply_variant(model, variant)
        select_trainable(model, model.cfg.simo.trainable)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    batches = [batch_keys(s, len(stage.data), batch_size, 0, 0, 1) for s in range(steps + 2)]
    samples = {k: stage.data[k] for keys in batches for k in keys}
    stage.data = samples  # the batch is read before timing: stage.loss indexes it
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    times = {f"{phase}_{clock}": [] for phase in ("forward", "backward", "optimizer") for clock in ("ms", "cpu_ms")}
    saved = 0
    for step, keys in enumerate(batches):
        if step == 2:  # two warm-up steps (allocator, optimiser state), then peak memory counts from here
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            base_kib = _rss_kib("VmRSS")
        kept = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in param_storages:
                kept[ptr] = t.untyped_storage().nbytes()
            return t

        clocks = [(time.perf_counter(), time.process_time())]
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = sum(stage.loss(keys).values())
        clocks.append((time.perf_counter(), time.process_time()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clocks.append((time.perf_counter(), time.process_time()))
        optimizer.step()
        clocks.append((time.perf_counter(), time.process_time()))
        if step >= 2:
            for k, phase in enumerate(("forward", "backward", "optimizer")):
                times[f"{phase}_ms"].append(clocks[k + 1][0] - clocks[k][0])
                times[f"{phase}_cpu_ms"].append(clocks[k + 1][1] - clocks[k][1])
            saved = sum(kept.values())
    trainable = sum(p.numel() for p in params)
    tensors = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    state = sum(v.numel() * v.element_size() for v in tensors)
    return {
        "variant": variant,
        "trainable": trainable,
        **{k: 1000 * statistics.median(v) for k, v in times.items()},
        "saved_activations_mib": saved / 2**20,
        "weight_grads_mib": 4 * trainable / 2**20,
        "optimizer_state_mib": state / 2**20,
        "peak_rss_added_mib": (_rss_kib("VmHWM") - base_kib) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset root with a train split")
    parser.add_argument("--init", default=EMBEDDED, help="a stage-2 (or any) FISA checkpoint (default: the embedded)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="what to train per step (default: all)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (the study's: 16)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run (after two warm-up steps)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per variant, interleaved")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (default: torch's choice)")
    parser.add_argument("--json", help="write every run's figures here")
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(measure_one(args.one, args.data, args.init, args.batch_size, args.steps)))
        return
    runs = []
    for _ in range(args.rounds):
        for variant in args.variants:
            command = [sys.executable, __file__, "--one", variant, "--data", args.data, "--init", args.init,
                       "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--threads", str(args.threads)]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            runs.append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(runs[-1], file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=2)
    keys = ["forward_cpu_ms", "backward_cpu_ms", "optimizer_cpu_ms", "forward_ms", "backward_ms", "optimizer_ms",
            "saved_activations_mib", "weight_grads_mib", "optimizer_state_mib", "peak_rss_added_mib"]
    print(f"| variant | trainable | step CPU ms | step wall ms | {' | '.join(keys)} |")
    print("|---|" + "---|" * (len(keys) + 3))
    for variant in args.variants:
        mine = [r for r in runs if r["variant"] == variant]
        medians = {k: statistics.median(r[k] for r in mine) for k in keys}
        cpu = sum(medians[f"{p}_cpu_ms"] for p in ("forward", "backward", "optimizer"))
        wall = sum(medians[f"{p}_ms"] for p in ("forward", "backward", "optimizer"))
        cells = " | ".join(f"{medians[k]:.0f}" if k.endswith("ms") else f"{medians[k]:.1f}" for k in keys)
        print(f"| {variant} | {mine[0]['trainable']:,} | {cpu:.0f} | {wall:.0f} | {cells} |")


if __name__ == "__main__":
    main()
