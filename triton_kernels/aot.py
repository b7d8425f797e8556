"""Ahead-of-time compilation of the shipped Triton kernel configurations, no GPU needed.

Each kernel module lists what it ships as `aot_variants() -> list[AOTVariant]`; `compile_variant`
compiles one for a target (sm_80, sm_90) with `triton.compile(..., target=GPUTarget("cuda", cap, 32))`
and reads registers, spills and shared memory from ptxas -v. bench/triton_compile.py writes the
table; tests/test_triton_compile.py fails on any spill.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AOTVariant:
    name: str                 # e.g. "qlinear_gemv_b4_g128_asym_fp16_inmul"
    fn: object                # the @triton.jit function
    signature: dict           # argument name -> Triton type ("*fp16", "i32", "constexpr", ...)
    constexprs: dict          # constexpr name -> value
    num_warps: int = 4
    num_stages: int = 3
    attrs: dict = field(default_factory=dict)  # what the variant is for (bits, group, path, ...), for the table;
    # attrs["divisibility_16"] (argument names) is also applied as compile-time divisibility hints


# Every module of this package that ships Triton kernels (each defines aot_variants()). The compile
# test requires all of them; bench/triton_compile.py skips (and names) one that does not exist yet.
SHIPPED_MODULES = ("qlinear", "hadamard")


def discover(modules=SHIPPED_MODULES) -> tuple[dict, dict]:
    """({module: [AOTVariant, ...]}, {module: why it was skipped}) for the given module names of this
    package: a module that is missing, fails to import or has no aot_variants() is skipped with a reason."""
    import importlib

    found, missing = {}, {}
    for name in modules:
        full = f"{__package__}.{name}" if __package__ else name
        try:
            mod = importlib.import_module(full)
        except ModuleNotFoundError as e:
            if e.name not in (full, name):  # the module exists but something it imports does not
                missing[name] = f"{full} failed to import: {e}"
            else:
                missing[name] = f"{full} does not exist (yet)"
            continue
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            missing[name] = f"{full} failed to import: {type(e).__name__}: {e}"
            continue
        if not hasattr(mod, "aot_variants"):
            missing[name] = f"{full} has no aot_variants()"
            continue
        found[name] = list(mod.aot_variants())
    return found, missing


def ptxas_path(cap: int = 80) -> str:
    """The ptxas bundled with the triton wheel that Triton itself runs for sm_{cap}
    (triton/backends/nvidia/bin/ptxas below sm_90, bin/ptxas-blackwell, a newer CUDA, from sm_90 on:
    Triton emits PTX versions for sm_90+ that only the newer one reads)."""
    import os

    try:
        from triton.backends.nvidia.compiler import get_ptxas

        path = get_ptxas(cap).path
        if path and os.path.exists(path):
            return path
    except Exception:  # noqa: BLE001 - other triton versions: fall back to the wheel layout
        pass
    import triton.backends.nvidia as nv

    path = os.path.join(os.path.dirname(nv.__file__), "bin", "ptxas")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no ptxas at {path} (triton wheel without the NVIDIA backend?)")
    return path


def ptxas_version(cap: int = 80) -> str:
    import subprocess

    out = subprocess.run([ptxas_path(cap), "--version"], capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1]


def _ptxas_info(log: str) -> dict:
    """Registers, spills and stack of the (single) kernel in ptxas -v output."""
    import re

    def grab(pattern):
        m = re.findall(pattern, log)
        return max(int(v) for v in m) if m else None

    regs = grab(r"Used (\d+) registers")
    info = {
        "regs": regs,
        "spill_stores": grab(r"(\d+) bytes spill stores"),
        "spill_loads": grab(r"(\d+) bytes spill loads"),
        "stack": grab(r"(\d+) bytes stack frame"),
        "static_smem": grab(r"(\d+) bytes smem") or 0,
    }
    if regs is None or info["spill_stores"] is None:
        raise RuntimeError(f"could not read ptxas -v output:\n{log}")
    return info


def compile_variant(variant: AOTVariant, cap: int) -> dict:
    """Compile one variant for sm_{cap} (no GPU needed) and read its resources with ptxas -v.

    Returns {name, cap, regs, spill_stores, spill_loads, stack, smem (bytes of shared memory the
    kernel launches with: Triton's dynamic allocation plus any static), compile_s, ptxas_target,
    attrs}."""
    import contextlib
    import io
    import os
    import re
    import subprocess
    import tempfile
    import time

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if not isinstance(variant.fn, triton.runtime.JITFunction):
        raise RuntimeError(f"{variant.name}: {type(variant.fn).__name__} is not a compiled @triton.jit kernel "
                           f"(TRITON_INTERPRET=1 in this process?); compile in a process without it")
    t0 = time.perf_counter()
    # attrs["divisibility_16"]: argument names the launch-time specialization marks divisible by 16
    # (aligned pointers, such integers), as Triton's JIT does and triton.tools.compile spells them
    arg_names = variant.fn.arg_names
    hints = {(arg_names.index(n),): [["tt.divisibility", 16]] for n in variant.attrs.get("divisibility_16", ())}
    src = ASTSource(fn=variant.fn, signature=dict(variant.signature), constexprs=dict(variant.constexprs),
                    attrs=hints)
    # Triton runs the wheel's ptxas with -v itself (make_cubin) and prints that log when
    # TRITON_DUMP_PTXAS_LOG is set: read it there instead of assembling twice. On a Triton cache hit
    # nothing is assembled, so ptxas -v runs here on the cached PTX with the flags Triton uses.
    log = io.StringIO()
    old = os.environ.get("TRITON_DUMP_PTXAS_LOG")
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    try:
        with contextlib.redirect_stdout(log):
            kernel = triton.compile(src, target=GPUTarget("cuda", cap, 32),
                                    options={"num_warps": variant.num_warps, "num_stages": variant.num_stages})
    finally:
        if old is None:
            os.environ.pop("TRITON_DUMP_PTXAS_LOG", None)
        else:
            os.environ["TRITON_DUMP_PTXAS_LOG"] = old
    compile_s = time.perf_counter() - t0
    ptx = kernel.asm["ptx"]
    m = re.search(r"^\s*\.target\s+(sm_\w+)", ptx, re.M)
    gpu = m.group(1) if m else f"sm_{cap}"  # sm_90a where Triton used wgmma
    text = log.getvalue()
    source = "triton"
    if "Used" not in text or "spill" not in text:
        source = "ptxas"
        with tempfile.TemporaryDirectory(prefix="quasr-aot-") as tmp:
            ptx_file = os.path.join(tmp, "k.ptx")
            with open(ptx_file, "w") as f:
                f.write(ptx)
            # the flags Triton's make_cubin passes that change code generation
            fmad = [] if getattr(kernel.metadata, "enable_fp_fusion", True) else ["--fmad=false"]
            proc = subprocess.run([ptxas_path(cap), "-v", "--regAllocOptLevel=2", *fmad, f"--gpu-name={gpu}",
                                   ptx_file, "-o", os.path.join(tmp, "k.cubin")], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"ptxas failed for {variant.name} on {gpu}:\n{proc.stderr}")
        text = proc.stdout + proc.stderr
    info = _ptxas_info(text)
    info["ptxas_log"] = source
    shared = int(getattr(kernel.metadata, "shared", 0) or 0)
    return {"name": variant.name, "cap": cap, **info, "smem": shared + info["static_smem"],
            "compile_s": compile_s, "ptxas_target": gpu, "num_warps": variant.num_warps,
            "num_stages": variant.num_stages, "attrs": dict(variant.attrs)}


_WORKER_VARIANTS: dict = {}  # per process: module -> {name: variant} (a pool worker lists each module once)


def _compile_by_name(module: str, name: str, cap: int) -> dict:
    """Worker entry (process pools cannot pickle @triton.jit functions): look the variant up again."""
    if module not in _WORKER_VARIANTS:
        found, missing = discover((module,))
        if module not in found:
            raise RuntimeError(missing[module])
        _WORKER_VARIANTS[module] = {v.name: v for v in found[module]}
    v = _WORKER_VARIANTS[module].get(name)
    if v is None:
        raise KeyError(f"{module} has no variant {name}")
    return {"module": module, **compile_variant(v, cap)}


def compile_all(jobs_list, jobs: int | None = None) -> list[dict]:
    """Compile [(module, variant name, cap), ...] in a process pool of `jobs` workers (1: in this
    process). Results in input order; a failure raises with the variant named."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    jobs = jobs or os.cpu_count() or 1
    if jobs <= 1 or len(jobs_list) <= 1:
        return [_compile_by_name(*j) for j in jobs_list]
    import multiprocessing as mp

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = [pool.submit(_compile_by_name, *j) for j in jobs_list]
        out = []
        for j, fut in zip(jobs_list, futures):
            try:
                out.append(fut.result())
            except Exception as e:
                pool.shutdown(wait=True, cancel_futures=True)
                raise RuntimeError(f"compiling {j[1]} ({j[0]}) for sm_{j[2]} failed: {e}") from e
        return out


def sample(names: list[str], n: int, regs: dict | None = None) -> list[str]:
    """A deterministic sample of n variant names: with `regs` ({name: registers on another target}),
    half are the most register-hungry there (the likeliest to spill) and half evenly spaced over the
    rest; without, evenly spaced over all. Order of `names` is kept."""
    if n >= len(names):
        return list(names)
    picked = []
    if regs:
        picked = sorted(names, key=lambda v: (-regs.get(v, 0), v))[: n // 2]
    rest = [v for v in names if v not in picked]
    need = n - len(picked)
    step = len(rest) / need
    picked += [rest[int(i * step)] for i in range(need)]
    chosen = set(picked)
    return [v for v in names if v in chosen]
