"""How much of a size budget myQASR's round-robin leaves unused, and what the fill pass hands back.

The paper's Algorithm 1 stops the moment the model fits, so up to one layer's one-bit step of the
budget is left over; `allocate_round_robin(fill=True)` (quasr's default) gives that room back one bit
at a time to the most sensitive layers still at the lower width. Sizes only (SizeModel, nothing is
quantized), so the sensitivity order here is the layers' execution order reversed (the encoder's
first layers counted most sensitive); a calibrated order moves which layers regain a bit, not how
much room there is.

    python bench/myqasr_fill.py [--models whisper-tiny.en,whisper-base] [--avg-bits 3.25,3.5,...] [--budget-mb 16,20]
"""
import argparse
import os
import random
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from quasr.allocation.allocate import MB, SizeModel, allocate_round_robin  # noqa: E402
from quasr.models import load_adapter  # noqa: E402
from quasr.plan.schema import DEFAULT_GROUP_SIZE  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="whisper-tiny.en,whisper-base")
    ap.add_argument("--avg-bits", default="3.25,3.5,4.25,4.5,5.5,6.5",
                    help="budgets given as the average weight bits they allow (between uniform sizes)")
    ap.add_argument("--budget-mb", default="", help="budgets in MB as well (comma-separated)")
    ap.add_argument("--orders", type=int, default=20, help="seeded random sensitivity orders to try besides the fixed one")
    ap.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE, help="quantize_to_budget's default")
    args = ap.parse_args()
    print("| model | group | budget MB | paper's stop MB (unused kB) | with fill MB (unused kB) | layers regaining a bit "
          f"| avg bits paper → fill | unused kB over {args.orders} random orders, paper / fill (median, max) |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name in args.models.split(","):
        adapter = load_adapter(name)
        group = args.group_size
        sm = SizeModel(adapter.model, adapter.layer_order(), group_size=group)
        budgets = [(sm.budget_for_average_bits(float(a)), f"{float(a)} bits") for a in args.avg_bits.split(",") if a]
        budgets += [(float(mb) * MB, "given") for mb in args.budget_mb.split(",") if mb]
        for budget, avg in budgets:
            order = list(reversed(sm.names))  # execution order reversed: the first layers count most sensitive
            paper = allocate_round_robin(sm, budget, order, fill=False)
            filled = allocate_round_robin(sm, budget, order, fill=True)
            regained = sum(1 for n in sm.names if filled.bits[n] > paper.bits[n])
            unused = {True: [], False: []}
            for seed in range(args.orders):
                shuffled = list(sm.names)
                random.Random(seed).shuffle(shuffled)
                for fill in unused:
                    unused[fill].append((budget - allocate_round_robin(sm, budget, shuffled, fill=fill).size_bytes) / 1e3)
            spread = " / ".join(f"{statistics.median(unused[f]):.1f}, {max(unused[f]):.1f}" for f in (False, True))
            print(f"| {name} | {group} | {budget / MB:.3f} ({avg}) | {paper.size_bytes / MB:.3f} "
                  f"({(budget - paper.size_bytes) / 1e3:.1f}) | {filled.size_bytes / MB:.3f} "
                  f"({(budget - filled.size_bytes) / 1e3:.1f}) | {regained} of {len(sm.names)} | "
                  f"{paper.average_bits:.3f} → {filled.average_bits:.3f} | {spread} |")


if __name__ == "__main__":
    main()
