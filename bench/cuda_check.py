"""Compile-check of the CUDA backend without a GPU (`make cuda-check`, run by CI): every csrc/cuda/*.cu
for each target architecture with `nvcc -Xptxas -v`, a table of every kernel instantiation's
registers, spills, stack and shared memory (static from ptxas; dynamic from csrc/cuda/gemm_config.h
through the host-check library), and a syntax check of the torch binding (csrc/cuda/binding.cpp)
against this venv's torch headers. Fails on any spill, on shared memory past a target's per-block
limit, and on any compile error.

    python bench/cuda_check.py [--archs 80,86,89,90] [--out bench/results/cuda_check.md]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CUDA = ROOT / "csrc" / "cuda"
# Largest shared memory one block may opt into (CUDA C Programming Guide, compute capabilities table).
SMEM_LIMIT = {"80": 163 * 1024, "86": 99 * 1024, "89": 99 * 1024, "90": 227 * 1024}

ENTRY = re.compile(r"Compiling entry function '(\S+)' for 'sm_(\d+)'")
FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers(?:.*?, (\d+) bytes smem)?")


def nvcc_path() -> str:
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    if nvcc is None:
        sys.exit("cuda_check: nvcc not found (install the CUDA toolkit or put nvcc on PATH)")
    return nvcc


def compile_one(nvcc: str, source: Path, arch: str, outdir: Path) -> tuple[Path, str, str]:
    obj = outdir / f"{source.stem}.sm{arch}.o"
    cmd = [nvcc, "-std=c++17", "-O3", f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v", "-c",
           str(source), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    return source, arch, proc.stderr


def parse(log: str) -> list[dict]:
    """One record per kernel entry in a ptxas -v log."""
    kernels, current = [], None
    for line in log.splitlines():
        if m := ENTRY.search(line):
            current = {"mangled": m.group(1), "arch": m.group(2)}
            kernels.append(current)
        elif current is not None and (m := FRAME.search(line)):
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif current is not None and (m := USED.search(line)):
            current.update(registers=int(m.group(1)), smem=int(m.group(2) or 0))
    return kernels


def demangle(names: list[str]) -> dict[str, str]:
    filt = shutil.which("c++filt")
    if not filt:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    short = [re.sub(r"^void |\(.*\)$", "", s).replace("quasr_cuda::", "").replace("__half", "half") for s in out]
    return dict(zip(names, short))


def dynamic_smem(lib, name: str) -> int:
    """The dynamic shared memory a GEMM instantiation launches with (gemm_config.h)."""
    m = re.search(r"(gemm_f16_kernel|gemm_i8_kernel)<(\d+), (\d+)", name)
    if not m:
        return 0
    return lib.quasr_cuda_gemm_smem(0 if m.group(1) == "gemm_f16_kernel" else 1, int(m.group(2)), int(m.group(3)))


def host_library(tmp: Path):
    cxx = shutil.which("g++") or shutil.which("c++")
    so = tmp / "host_check.so"
    subprocess.run([cxx, "-O1", "-std=c++17", "-shared", "-fPIC", "-o", str(so), str(CUDA / "tests" / "host_check.cpp")],
                   check=True)
    lib = ctypes.CDLL(str(so))
    lib.quasr_cuda_gemm_smem.argtypes = [ctypes.c_int] * 3
    return lib


def check_binding(tmp: Path) -> str:
    """g++ -fsyntax-only of binding.cpp against the installed torch's headers (CPU wheels lack one
    generated CUDA header, stubbed here; the GPU machine builds it for real)."""
    try:
        from torch.utils.cpp_extension import include_paths
    except ImportError:
        return "skipped (no torch here)"
    stub = tmp / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n")
    candidates = [Path(os.environ["CUDA_HOME"]) / "include"] if os.environ.get("CUDA_HOME") else []
    candidates += [Path(nvcc_path()).resolve().parents[1] / "include", Path("/usr/local/cuda/include")]
    cuda_include = next((c for c in candidates if (c / "cuda_runtime.h").exists()), None)
    if cuda_include is None:
        raise RuntimeError(f"cuda_runtime.h not found in {', '.join(map(str, candidates))}; set CUDA_HOME")
    cmd = [shutil.which("g++"), "-std=c++17", "-fsyntax-only", *(f"-I{p}" for p in include_paths()),
           f"-I{tmp / 'stub'}", f"-I{sysconfig.get_paths()['include']}", f"-I{cuda_include}",
           str(CUDA / "binding.cpp")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"binding.cpp does not compile:\n{proc.stderr[-4000:]}")
    return "ok"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default="80,86,89,90")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cuda_check.md"))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = [a for a in archs if a not in SMEM_LIMIT]
    if unknown:
        sys.exit(f"cuda_check: unknown architecture(s) {unknown}; choose from {', '.join(SMEM_LIMIT)}")
    nvcc = nvcc_path()
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    sources = sorted(CUDA.glob("*.cu"))
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        lib = host_library(tmp)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            jobs = [pool.submit(compile_one, nvcc, s, a, tmp) for a in archs for s in sources]
            binding = pool.submit(check_binding, tmp)
            logs = [j.result() for j in jobs]
            binding_status = binding.result()
        records = [dict(r, source=src.name) for src, _, log in logs for r in parse(log)]
        names = demangle(sorted({r["mangled"] for r in records}))
        failures = []
        rows: dict[tuple[str, str], dict] = {}
        for r in records:
            r["name"] = names[r["mangled"]]
            r["dynamic"] = dynamic_smem(lib, r["name"])
            total = r["smem"] + r["dynamic"]
            if r["spill_stores"] or r["spill_loads"]:
                failures.append(f"{r['name']} sm_{r['arch']}: {r['spill_stores']} B spill stores, "
                                f"{r['spill_loads']} B spill loads")
            if total > SMEM_LIMIT[r["arch"]]:
                failures.append(f"{r['name']} sm_{r['arch']}: {total} B shared memory > {SMEM_LIMIT[r['arch']]}")
            rows.setdefault((r["source"], r["name"]), {})[r["arch"]] = r
    elapsed = time.time() - t0

    head = "| file | kernel | " + " | ".join(f"sm_{a} regs / spill / stack / smem" for a in archs) + " |"
    lines = [f"CUDA compile check: {version}; {len(sources)} sources x {len(archs)} targets, "
             f"{len(records)} kernel builds in {elapsed:.0f} s; binding.cpp syntax: {binding_status}. "
             "smem = static + dynamic bytes per block.", "", head, "|" + "---|" * (2 + len(archs))]
    for (src, name), per_arch in sorted(rows.items()):
        cells = []
        for a in archs:
            r = per_arch.get(a)
            cells.append("-" if r is None else
                         f"{r['registers']} / {r['spill_stores'] + r['spill_loads']} / {r['stack']} / "
                         f"{r['smem'] + r['dynamic']}")
        lines.append(f"| {src} | `{name}` | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    if failures:
        print("cuda_check: FAIL\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    print(f"cuda_check: ok ({len(records)} kernel builds, no spills, shared memory within every target's limit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
