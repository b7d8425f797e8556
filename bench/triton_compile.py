"""Ahead-of-time compile of every shipped Triton kernel configuration, no GPU needed: registers,
spills and shared memory per variant and target, read from the ptxas bundled with the triton wheel.

    python bench/triton_compile.py [--caps 80 90] [--out bench/triton_compile.md] [--jobs N] [--warm-cache]
                                   [--sample CAP:N] [--json PATH] [--require-all]

Every module of triton_kernels.aot.SHIPPED_MODULES that exists is compiled (a missing one is named
and skipped). Exits 1 if any variant spills (or a shipped module is missing with --require-all),
2 if a compile fails. Compile times are measured with an empty Triton cache unless --warm-cache.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _import_aot():
    try:
        from quasr.triton_kernels import aot  # installed layout
    except ImportError:
        sys.path.insert(0, ROOT)
        from triton_kernels import aot  # repo layout
    return aot


def table(rows: list[dict]) -> str:
    out = ["| variant | cap | regs | spill stores | spill loads | smem bytes | warps | stages | compile s |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['name']} | sm_{r['cap']} | {r['regs']} | {r['spill_stores']} | {r['spill_loads']} | "
                   f"{r['smem']} | {r['num_warps']} | {r['num_stages']} | {r['compile_s']:.2f} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caps", type=int, nargs="+", default=[80, 90])
    ap.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--modules", nargs="+", default=None, help="subset of SHIPPED_MODULES")
    ap.add_argument("--warm-cache", action="store_true", help="use Triton's normal cache (compile times then "
                    "measure cache hits for variants compiled before)")
    ap.add_argument("--require-all", action="store_true", help="fail if a shipped module is missing")
    ap.add_argument("--sample", action="append", default=[], metavar="CAP:N",
                    help="compile only N variants for CAP (after the full caps: half the most register-hungry "
                    "there, half evenly spaced; aot.sample), e.g. --caps 90 --sample 80:24")
    ap.add_argument("--json", default=None, help="write the rows, header and skipped modules as JSON")
    args = ap.parse_args(argv)

    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, without its warning
    tmp_cache = None
    if not args.warm_cache:
        tmp_cache = tempfile.TemporaryDirectory(prefix="quasr-triton-cache-")
        os.environ["TRITON_CACHE_DIR"] = tmp_cache.name
    aot = _import_aot()
    import triton

    found, missing = aot.discover(tuple(args.modules or aot.SHIPPED_MODULES))
    ptxas = sorted({(aot.ptxas_path(c), aot.ptxas_version(c)) for c in args.caps})
    header = [f"triton {triton.__version__}; ptxas: " + "; ".join(
                  f"{os.path.basename(p)} {v} (sm_{', sm_'.join(str(c) for c in args.caps if aot.ptxas_path(c) == p)})"
                  for p, v in ptxas),
              f"caps: {' '.join(f'sm_{c}' for c in args.caps)}; host: {platform.machine()}, {os.cpu_count()} CPUs, "
              f"{args.jobs} compile jobs; cache: {'warm (Triton default)' if args.warm_cache else 'empty'}"]
    for name, why in missing.items():
        header.append(f"SKIPPED {name}: {why}")
    for line in header:
        print(line)
    samples = [(int(c), int(n)) for c, n in (s.split(":") for s in args.sample)]
    jobs = [(mod, v.name, cap) for cap in args.caps for mod, vs in found.items() for v in vs]
    print(f"{len(jobs)} compiles ({', '.join(f'{m}: {len(v)} variants' for m, v in found.items())})"
          + "".join(f", then a sample of {n} for sm_{c}" for c, n in samples), flush=True)
    t0 = time.perf_counter()
    try:
        rows = aot.compile_all(jobs, args.jobs)
        for cap, n in samples:
            regs = {r["name"]: r["regs"] for r in rows}
            module_of = {v.name: mod for mod, vs in found.items() for v in vs}
            names = aot.sample(list(module_of), n, regs)
            header.append(f"sm_{cap}: sample of {len(names)} of {len(module_of)} variants (aot.sample)")
            rows += aot.compile_all([(module_of[v], v, cap) for v in names], args.jobs)
    except Exception as e:  # noqa: BLE001
        print(f"FAIL: {e}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    md = table(rows)
    print(md)
    spilled = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    summary = (f"{len(rows)} compiles in {wall:.1f} s wall; max regs {max((r['regs'] for r in rows), default=0)}; "
               f"{len(spilled)} spilling")
    print(summary)
    for r in spilled:
        print(f"SPILL {r['name']} sm_{r['cap']}: {r['spill_stores']} B stores, {r['spill_loads']} B loads",
              file=sys.stderr)
    if args.out:
        with open(args.out, "w") as f:
            f.write("# Triton kernels: AOT compile (bench/triton_compile.py)\n\n")
            f.write("\n".join(f"- {line}" for line in header) + "\n\n")
            f.write(md + "\n\n" + summary + "\n")
        print(f"wrote {args.out}")
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump({"header": header, "missing": missing, "rows": rows, "wall_s": wall,
                       "variants": {m: [v.name for v in vs] for m, vs in found.items()}}, f, indent=1, default=str)
    if tmp_cache is not None:
        tmp_cache.cleanup()
    if spilled:
        return 1
    if args.require_all and missing:
        print(f"FAIL: shipped modules missing: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
