"""Measure which kernel path is fastest per (bits, M) on this machine and write the dispatcher's
table (python/quasr/kernels/tables/<machine kind>.json), so `quasr` picks by measurement, not rule.

    python bench/dispatch_table.py [--quick] [--dry-run]

For each width and each M in M_GRID, every path of every available backend runs the real layer
shapes below (whisper-tiny/base and moonshine-base: K x N); the path with the least total time
over the shapes wins. Neighbouring Ms with the same winner merge into one rule [lo, hi]. Times are
medians of repeated calls; the machine should be otherwise idle. The table records the machine,
ISA, torch version, command and date beside the rules.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from gemm import packed_weight, timeit  # noqa: E402

from quasr import kernels  # noqa: E402
from quasr.kernels import forced  # noqa: E402
from quasr.kernels.registry import BACKENDS  # noqa: E402
from quasr.ops import native_status, qlinear  # noqa: E402

SHAPES = [(384, 1536), (1536, 384), (512, 2048), (2048, 512), (416, 1664), (1664, 416)]  # K x N
M_GRID = [1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1500]
BITS = [2, 3, 4, 5, 6, 7, 8]


def measure(bits: int, m: int, shapes, budget: float) -> dict[str, float]:
    """Seconds per call, summed over the shapes, of every (backend:path) that is not the reference."""
    out = {}
    for name, backend in BACKENDS.items():
        if name == "reference" or not backend.available():
            continue
        for path in backend.paths:
            total = 0.0
            for k, n in shapes:
                pw = packed_weight(n, k, bits)
                x = torch.randn(m, k)
                with forced(name, path):
                    total += timeit(lambda: qlinear(x, pw), budget=budget)
            out[f"{name}:{path}"] = total
    return out


def rules_from(winners: dict[int, dict[int, str]]) -> list[dict]:
    """Per width, runs of neighbouring Ms with one winner as rules (the last open-ended)."""
    rules = []
    for bits, by_m in winners.items():
        ms = sorted(by_m)
        start = 0
        for i, m in enumerate(ms):
            last = i == len(ms) - 1
            if last or by_m[ms[i + 1]] != by_m[m]:
                lo = 1 if start == 0 else ms[start - 1] + 1
                backend, path = by_m[m].split(":")
                rules.append({"bits": [bits], "m": [lo, None if last else m], "backend": backend, "path": path})
                start = i + 1
    return rules


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer Ms and shapes, shorter timings (a smoke run)")
    ap.add_argument("--dry-run", action="store_true", help="print the table, do not write it")
    args = ap.parse_args()
    grid = [1, 4, 16, 128, 1500] if args.quick else M_GRID
    shapes = SHAPES[:2] if args.quick else SHAPES
    budget = 0.02 if args.quick else 0.1
    kind = kernels.machine_kind("cpu")
    print(f"# {platform.processor() or platform.machine()}; {native_status()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; machine kind {kind}\n")
    print("µs per call, summed over the shapes\n")
    print("| bits | M | " + " | ".join(f"{b}:{p}" for b, be in BACKENDS.items() if b != "reference" and be.available()
                                      for p in be.paths) + " | winner |")
    n_paths = sum(len(be.paths) for b, be in BACKENDS.items() if b != "reference" and be.available())
    print("|---|---|" + "---:|" * n_paths + "---|")
    winners: dict[int, dict[int, str]] = {}
    for bits in BITS:
        for m in grid:
            t = measure(bits, m, shapes, budget)
            best = min(t, key=t.get)
            winners.setdefault(bits, {})[m] = best
            print(f"| {bits} | {m} | " + " | ".join(f"{v * 1e6:.0f}" for v in t.values()) + f" | {best} |", flush=True)
    from quasr.evaluate import machine_description

    doc = {"machine": machine_description("cpu"), "kind": kind, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "command": " ".join(["python bench/dispatch_table.py", *sys.argv[1:]]),
           "date": datetime.date.today().isoformat(), "shapes_k_n": shapes, "m_grid": grid}
    rules = rules_from(winners)
    # one rule a line: the table is read by people as well as by the dispatcher
    text = (json.dumps(doc, indent=1)[:-2] + ',\n "rules": [\n  ' + ",\n  ".join(json.dumps(r) for r in rules)
            + "\n ]\n}")
    doc["rules"] = rules
    if args.dry_run:
        print(text)
        return
    path = kernels.table_path(kind)
    path.write_text(text + "\n")
    print(f"\nwrote {path} ({len(doc['rules'])} rules)")


if __name__ == "__main__":
    main()
