"""Measure which kernel path is fastest per (bits, M) on this machine and write the dispatcher's
table (python/quasr/kernels/tables/<machine kind>.json), so `quasr` picks by measurement, not rule.

    python bench/dispatch_table.py [--quick] [--dry-run] [--device cuda] [--out DIR]

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
from pathlib import Path

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from gemm import packed_weight, timeit  # noqa: E402

from quasr import kernels  # noqa: E402
from quasr.kernels.registry import BACKENDS  # noqa: E402
from quasr.ops import native_status  # noqa: E402

SHAPES = [(384, 1536), (1536, 384), (512, 2048), (2048, 512), (416, 1664), (1664, 416)]  # K x N
M_GRID = [1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1500]
BITS = [2, 3, 4, 5, 6, 7, 8]


def candidate_paths(backend) -> tuple[str, ...]:
    """The float-activation paths worth timing: the portable scalar path only where it is the only one
    (it is the fallback, never the fastest, and slow to time at large M); not the int8 paths, which
    the dispatcher gives every layer that quantizes its activations."""
    fast = tuple(p for p in backend.paths if p not in ("scalar", "int8"))  # int8: layers that quantize activations
    return fast or backend.paths


def timed_backends(device: str) -> list[str]:
    return [f"{b}:{p}" for b, be in BACKENDS.items()
            if b != "reference" and be.available() and device in be.devices for p in candidate_paths(be)]


def measure(bits: int, m: int, shapes, budget: float, device: str = "cpu") -> dict[str, float]:
    """Seconds per call, summed over the shapes, of every (backend:path) that is not the reference."""
    out = {}
    dtype = torch.float16 if device == "cuda" else torch.float32
    for spec in timed_backends(device):
        name, path = spec.split(":")
        backend, total = BACKENDS[name], 0.0
        for k, n in shapes:
            pw = packed_weight(n, k, bits)
            pw = type(pw)(pw.packed.to(device), pw.scales.to(device), pw.zeros.to(device), bits, pw.group_size, k)
            layout = backend.repack(pw)  # made once, as a packed module's RuntimeCache holds it
            x = torch.randn(m, k, device=device, dtype=dtype)

            def call():
                backend.qlinear(x, pw, None, None, None, path, layout)
                if device == "cuda":
                    torch.cuda.synchronize()

            total += timeit(call, budget=budget)
        out[spec] = total
    return out


SWITCH_MARGIN = 0.10  # another path must be this much faster than the current one to take over


def pick_winners(times: dict[int, dict[int, dict[str, float]]]) -> dict[int, dict[int, str]]:
    """Per width, walking up the Ms: keep the previous M's path unless another is SWITCH_MARGIN
    faster. Timings near a crossover are noise; without this the table flips paths M by M."""
    winners: dict[int, dict[int, str]] = {}
    for bits, by_m in times.items():
        current = None
        for m in sorted(by_m):
            t = by_m[m]
            best = min(t, key=t.get)
            if current is None or current not in t or t[best] < (1 - SWITCH_MARGIN) * t[current]:
                current = best
            winners.setdefault(bits, {})[m] = current
    return winners


def read_log(path: str) -> dict[int, dict[int, dict[str, float]]]:
    """The timings a previous run printed (its markdown table), to derive rules again without timing."""
    lines = [ln for ln in open(path).read().splitlines() if ln.startswith("| ")]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    times: dict[int, dict[int, dict[str, float]]] = {}
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if not cells[0].isdigit():
            continue
        times.setdefault(int(cells[0]), {})[int(cells[1])] = {h: float(v) * 1e-6 for h, v in zip(header[2:-1], cells[2:-1])}
    return times


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
    ap.add_argument("--from-log", default=None, metavar="FILE",
                    help="derive the rules from the timings a previous run printed instead of timing again")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="the device to measure (default cpu)")
    ap.add_argument("--out", default=None, metavar="DIR",
                    help="write the table into DIR instead of python/quasr/kernels/tables (e.g. on a lent GPU machine)")
    args = ap.parse_args()
    grid = [1, 4, 16, 128, 1500] if args.quick else M_GRID
    shapes = SHAPES[:2] if args.quick else SHAPES
    budget = 0.02 if args.quick else 0.1
    kind = kernels.machine_kind(args.device)
    where = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    print(f"# {where}; {native_status()}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; machine kind {kind}\n")
    print("µs per call, summed over the shapes\n")
    timed = timed_backends(args.device)
    print("| bits | M | " + " | ".join(timed) + " | winner |")
    n_paths = len(timed)
    print("|---|---|" + "---:|" * n_paths + "---|")
    times: dict[int, dict[int, dict[str, float]]] = read_log(args.from_log) if args.from_log else {}
    for bits in BITS if not args.from_log else []:
        for m in grid:
            t = measure(bits, m, shapes, budget, args.device)
            times.setdefault(bits, {})[m] = t
            print(f"| {bits} | {m} | " + " | ".join(f"{v * 1e6:.0f}" for v in t.values()) + f" | {min(t, key=t.get)} |",
                  flush=True)
    winners = pick_winners(times)
    from quasr.evaluate import machine_description

    doc = {"machine": machine_description(args.device), "kind": kind, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "command": " ".join(["python bench/dispatch_table.py", *sys.argv[1:]]),
           "date": datetime.date.today().isoformat(), "shapes_k_n": shapes,
           "m_grid": sorted({m for by_m in times.values() for m in by_m}), "switch_margin": SWITCH_MARGIN}
    rules = rules_from(winners)
    # one rule a line: the table is read by people as well as by the dispatcher
    text = (json.dumps(doc, indent=1)[:-2] + ',\n "rules": [\n  ' + ",\n  ".join(json.dumps(r) for r in rules)
            + "\n ]\n}")
    doc["rules"] = rules
    if args.dry_run:
        print(text)
        return
    path = kernels.table_path(kind) if args.out is None else Path(args.out) / f"{kind}.json"
    path.write_text(text + "\n")
    print(f"\nwrote {path} ({len(doc['rules'])} rules)")


if __name__ == "__main__":
    main()
