"""Block configurations of the qlinear kernels: shipped defaults (configs.json, data) and the
on-disk autotune cache (QUASR_TRITON_AUTOTUNE=1). No Triton import here."""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

CONFIG_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K", "num_warps", "num_stages")
PATHS = ("gemv", "gemm")
CONFIGS_PATH = Path(__file__).with_name("configs.json")
AUTOTUNE_FILE = "triton_autotune.json"


def check_config(cfg: dict) -> dict:
    """A complete, sane config dict (ValueError naming what is wrong)."""
    if not isinstance(cfg, dict):
        raise ValueError(f"config must be a dict with {CONFIG_KEYS}, got {cfg!r}")
    missing = [k for k in CONFIG_KEYS if k not in cfg]
    extra = [k for k in cfg if k not in CONFIG_KEYS]
    if missing or extra:
        raise ValueError(f"config {cfg!r}: missing {missing}, unknown {extra}")
    out = {k: int(cfg[k]) for k in CONFIG_KEYS}

    def pow2(v):
        return v > 0 and v & (v - 1) == 0

    if out["BLOCK_M"] != 1 and not (pow2(out["BLOCK_M"]) and out["BLOCK_M"] >= 16):
        raise ValueError(f"BLOCK_M must be 1 (the FMA GEMV) or a power of two >= 16 (tl.dot), got {out['BLOCK_M']}")
    if not (pow2(out["BLOCK_N"]) and out["BLOCK_N"] >= 16):
        raise ValueError(f"BLOCK_N must be a power of two >= 16, got {out['BLOCK_N']}")
    if not (pow2(out["BLOCK_K"]) and out["BLOCK_K"] >= 32):
        raise ValueError(f"BLOCK_K must be a power of two >= 32, got {out['BLOCK_K']}")
    if out["SPLIT_K"] < 0 or not pow2(out["num_warps"]) or out["num_stages"] < 1:
        raise ValueError(f"bad SPLIT_K/num_warps/num_stages in {cfg!r}")
    return out


@functools.lru_cache(maxsize=1)
def shipped() -> dict:
    with open(CONFIGS_PATH) as f:
        data = json.load(f)
    for rule in data["defaults"]:
        if rule["path"] not in PATHS:
            raise ValueError(f"{CONFIGS_PATH}: unknown path {rule['path']!r}")
        rule["config"] = check_config(rule["config"])
    for name, cands in data.get("autotune", {}).items():
        data["autotune"][name] = [check_config(c) for c in cands]
    return data


def _in(rng, v) -> bool:
    lo, hi = rng
    return (lo is None or v >= lo) and (hi is None or v <= hi)


def default_config(path: str, m: int, bits: int) -> dict:
    """The first shipped rule matching (path, M, bits)."""
    for rule in shipped()["defaults"]:
        if rule["path"] == path and _in(rule["m"], m) and _in(rule["bits"], bits):
            return dict(rule["config"])
    raise ValueError(f"configs.json has no rule for path={path} m={m} bits={bits}")


def m_bucket(m: int) -> int:
    """M rounded up to a power of two (the autotune cache key; 1, 2, 4, ..., capped at 4096)."""
    b = 1
    while b < m and b < 4096:
        b *= 2
    return b


def candidates(path: str, m: int) -> list[dict]:
    tab = shipped().get("autotune", {})
    name = "gemv_m1" if path == "gemv" and m == 1 else path
    return [dict(c) for c in tab.get(name, [])]


def cache_dir() -> Path:
    from quasr.models import quasr_cache  # the one cache folder quasr has ($QUASR_CACHE)

    return quasr_cache()


def cache_path() -> Path:
    return cache_dir() / AUTOTUNE_FILE


def autotune_key(path: str, m: int, n: int, k: int, bits: int, group: int, symmetric: bool, dtype: str,
                 device_name: str) -> str:
    return (f"{device_name}|{path}|m{m_bucket(m)}|n{n}|k{k}|b{bits}|g{group}|"
            f"{'sym' if symmetric else 'asym'}|{dtype}")


def load_cache() -> dict:
    try:
        with open(cache_path()) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def store_cache(key: str, cfg: dict) -> None:
    """Add one entry (re-reading the file first, so concurrent processes lose at most a race)."""
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = load_cache()
    data[key] = cfg
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".triton_autotune.", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
