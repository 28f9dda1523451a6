"""Choose the feature-preservation weight of the study's `seve-distill` method on seen classes alone.

    python benchmarks/study/pick-distill-weight.py runs/study --weights 10 100 --seed 0 --step 600

Reads RUNS/seve-distill-wW-sSEED.stepSTEP.eval.json for each weight W and prints the weight with the best seen-class
mIoU (ties: the larger weight, the stronger preservation). Held-out classes stay out of the choice, so the study's
novel-class figures are not fitted to; the candidates' figures go to RUNS/distill-choice.json.
"""

import argparse
import json
import os

from fisa_rt.atomic import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="the study's folder (RUNS of run-study.sh)")
    parser.add_argument("--weights", nargs="+", required=True, help="the candidate weights, as in the file names")
    parser.add_argument("--seed", type=int, required=True, help="the seed the candidates ran with")
    parser.add_argument("--step", type=int, required=True, help="the evaluated step that decides")
    args = parser.parse_args()
    seen = {}
    for weight in args.weights:
        path = os.path.join(args.runs, f"seve-distill-w{weight}-s{args.seed}.step{args.step}.eval.json")
        with open(path) as f:
            seen[weight] = json.load(f)["seen"]
    chosen = max(args.weights, key=lambda w: (seen[w]["miou"], float(w)))
    write_json(os.path.join(args.runs, "distill-choice.json"), {
        "rule": "best seen-class mIoU; ties to the larger weight", "seed": args.seed, "step": args.step,
        "candidates": {w: {"seen_miou": seen[w]["miou"], "seen_pq": seen[w]["pq"]} for w in args.weights},
        "chosen": chosen,
    }, overwrite=True)
    print(chosen)


if __name__ == "__main__":
    main()
