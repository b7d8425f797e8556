"""One dispatcher for every quantized matmul: which backend and which of its paths runs a call,
from (device, bits, group size, M, N, K).

The choice comes, in order, from: `forced(backend, path)` (a context, for tests and benchmarks);
the QUASR_KERNEL environment variable (`BACKEND` or `BACKEND:PATH`, e.g. `cpu:gemv`, `reference`);
the measured table of this machine kind (tables/<kind>.json, written by bench/dispatch_table.py:
the first rule that matches the call and names an available backend); and a default rule where no
table exists (on the CPU: GEMV for M <= 4, the packed GEMM below M = 128, dequantized tiles + BLAS
above; on CUDA, the first available of the CUDA kernels and Triton, each with its GEMV/split-K for
M <= 16 and its tensor-core GEMM above). Layers that quantize their activations run an int8 path
(integer dot products: the CPU's, or the CUDA kernels' int8 tensor cores) unless a path is forced. The other ops
(dequantize, rotate) go to `backend_for(op, device)`: the overriding backend, else the first
available in registry order. Choices are cached per call shape: dispatch costs a dictionary lookup per layer call.
"""

from __future__ import annotations

import contextvars
import functools
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .registry import BACKENDS

TABLES = Path(__file__).resolve().parent / "tables"
ENV = "QUASR_KERNEL"
_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("quasr_forced_kernel", default=None)

# Default CPU rule (what csrc/cpu chose by itself before the seam; bench/RESULTS.md measures it).
GEMV_MAX_M, BLAS_MIN_M = 4, 128
# Default GPU rule (CUDA and Triton) until a cuda-sm<cap> table is measured (bench/dispatch_table.py on the GPU).
TRITON_GEMV_MAX_M = 16


@dataclass(frozen=True)
class Choice:
    backend: str
    path: str
    source: str  # "forced", "env", "table <file>", "default"

    def __str__(self) -> str:
        return f"{self.backend}:{self.path} ({self.source})"


def machine_kind(device: torch.device | str = "cpu") -> str:
    """The kind of machine a table is measured for: cpu-<isa> or cuda-sm<major><minor>."""
    dev = torch.device(device)
    if dev.type == "cuda":
        major, minor = torch.cuda.get_device_capability(dev)
        return f"cuda-sm{major}{minor}"
    cpu = BACKENDS["cpu"]
    return f"cpu-{cpu.isa()}" if cpu.available() else "cpu-reference"


def table_path(kind: str) -> Path:
    return TABLES / f"{kind}.json"


@functools.cache
def load_table(kind: str) -> tuple[dict, ...]:
    """The rules of a machine kind's table (empty when there is none)."""
    path = table_path(kind)
    if not path.exists():
        return ()
    doc = json.loads(path.read_text())
    rules = doc.get("rules") if isinstance(doc, dict) else None
    if not isinstance(rules, list) or not all(isinstance(r, dict) and {"backend", "path", "m"} <= set(r) for r in rules):
        raise ValueError(f"{path}: a dispatch table is {{\"rules\": [{{\"backend\", \"path\", \"m\": [lo, hi], ...}}]}}")
    return tuple(rules)


def _matches(rule: dict, bits: int, group: int, m: int, n: int, k: int) -> bool:
    def within(key, value):
        lo, hi = rule[key] if rule.get(key) is not None else (None, None)
        return (lo is None or value >= lo) and (hi is None or value <= hi)

    return ((rule.get("bits") is None or bits in rule["bits"])
            and (rule.get("group_size") is None or group in rule["group_size"])
            and within("m", m) and within("n", n) and within("k", k))


def _parse_override(text: str, where: str) -> tuple[str, str | None]:
    name, _, path = text.partition(":")
    backend = BACKENDS.get(name)
    if backend is None:
        raise ValueError(f"{where}: unknown kernel backend {name!r}; choose from {', '.join(BACKENDS)} "
                         f"(optionally BACKEND:PATH)")
    if not backend.available():
        raise ValueError(f"{where}: the {name} backend is not available here: {backend.status()}")
    if path and path not in backend.paths:
        raise ValueError(f"{where}: the {name} backend has no path {path!r} on this machine; it has "
                         f"{', '.join(backend.paths)}")
    return name, path or None


@contextmanager
def forced(backend: str, path: str | None = None):
    """Context: every quantized matmul inside runs on `backend` (and `path`, if given)."""
    spec = backend if path is None else f"{backend}:{path}"
    _parse_override(spec, "forced()")
    token = _FORCED.set(spec)
    try:
        yield
    finally:
        _FORCED.reset(token)


@torch.compiler.assume_constant_result  # traced models bake the choice in (dynamo cannot trace ContextVar)
def choose(device: torch.device | str, bits: int, group_size: int, m: int, n: int, k: int,
           int8_acts: bool = False) -> Choice:
    """`int8_acts`: the layer quantizes its activations (act_bits <= 8), which the CPU's int8 path
    runs with integer dot products (faster than fake-quant + a float kernel, the same result)."""
    dev = torch.device(device).type
    override = _FORCED.get()
    if override is not None:
        return _choose(dev, bits, group_size, m, n, k, override, "forced", int8_acts)
    return _choose(dev, bits, group_size, m, n, k, env_override(), "env", int8_acts)


def env_override() -> str | None:
    """The backend (or BACKEND:PATH) the environment asks for, or None."""
    if os.environ.get("QUASR_REFERENCE", "0") == "1":  # the older debugging switch
        return "reference"
    return os.environ.get(ENV) or None


@functools.lru_cache(maxsize=8192)
def _choose(dev: str, bits: int, group: int, m: int, n: int, k: int, override: str | None, source: str,
            int8_acts: bool = False) -> Choice:
    if override and override != "auto":
        name, path = _parse_override(override, f"{ENV}={override}" if source == "env" else "forced()")
        backend = BACKENDS[name]
        if not backend.supports(dev, bits, group, n, k):
            raise ValueError(f"{source} kernel {override!r} cannot run a {bits}-bit layer on {dev}")
        return Choice(name, path or _default_path(backend.name, m, int8_acts), source)
    # the native backend of the device (named like it) has the int8 path: one path for every M (the kernels tile by M)
    if int8_acts and dev in ("cpu", "cuda") and "int8" in BACKENDS[dev].paths:
        return Choice(dev, "int8", "default")
    kind = machine_kind(dev) if dev in ("cpu", "cuda") else dev
    for rule in load_table(kind):
        backend = BACKENDS.get(rule["backend"])
        if (backend is not None and rule["path"] in backend.paths and backend.supports(dev, bits, group, n, k)
                and backend.chosen_automatically(dev) and _matches(rule, bits, group, m, n, k)):
            return Choice(backend.name, rule["path"], f"table {table_path(kind).name}")
    for backend in BACKENDS.values():  # registry order: native backends before the reference
        if backend.supports(dev, bits, group, n, k) and backend.chosen_automatically(dev):
            return Choice(backend.name, _default_path(backend.name, m, int8_acts), "default")
    raise ValueError(f"no kernel backend can run a {bits}-bit layer on {dev}")


def _default_path(backend: str, m: int, int8_acts: bool = False) -> str:
    paths = BACKENDS[backend].paths
    if int8_acts and "int8" in paths:  # the native backends' int8 path (CPU, CUDA)
        return "int8"
    if backend == "cpu" and "gemv" in paths:
        return "gemv" if m <= GEMV_MAX_M else "gemm" if m < BLAS_MIN_M else "blas"
    if backend in ("triton", "cuda"):  # GemLite's split: GEMV/split-K for decoder steps, tensor-core tiles beyond
        return "gemv" if m <= TRITON_GEMV_MAX_M else "gemm"
    return paths[0]


@torch.compiler.assume_constant_result
def backend_for(op: str, device: torch.device | str) -> str:
    """The backend that runs `op` ("dequantize", "rotate") on `device`: the forced or QUASR_KERNEL
    backend when one is set and can, else the first available in registry order."""
    override = _FORCED.get()
    return _backend_for(op, torch.device(device).type, override if override is not None else env_override())


@functools.lru_cache(maxsize=256)
def _backend_for(op: str, dev: str, override: str | None) -> str:
    if override and override != "auto":
        name, _ = _parse_override(override, "forced()/" + ENV)
        backend = BACKENDS[name]
        if dev in backend.devices:
            return name
    for backend in BACKENDS.values():
        if backend.available() and backend.chosen_automatically(dev):
            return backend.name
    raise ValueError(f"no kernel backend can run {op} on {dev}")
