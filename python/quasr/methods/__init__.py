"""Post-training quantization methods (the Edge-ASR set), all with one signature:

    model, plan = quantize(adapter, plan, calibration, method="gptq", **options)

`plan` gives every layer's weight bits/group/symmetry and optional activation quantization (see
quasr.plan, `with_activations`), so any mixed-precision plan composes with any method. `calibration` is a
list of waveforms (or prepared CalibrationBatches); methods that need none (RTN, HQQ) accept None.
The returned plan is the input plan plus the transforms the method added (rotate, smooth).

One file per method (rtn.py, gptq.py, hqq.py, awq.py, smoothquant.py, omniquant.py, quarot.py,
spinquant.py), what several share in common.py, the blockwise calibration driver in pipeline.py; this
module keeps the registry (METHODS, get_method) and the configurations (CONFIGS, parse_config).
"""

from __future__ import annotations

import numpy as np

from ..adapters.base import CalibrationBatch, ModelAdapter
from ..format import check_bits, resolve_group_size
from ..plan import DEFAULT_GROUP_SIZE, KEEP, default_group_size
from ..ranges import ACT_GRANULARITIES
from .awq import AWQ
from .gptq import GPTQ
from .hqq import HQQ
from .omniquant import OmniQuant
from .pipeline import LayerInputs, LayerJob, LayerResult, Method, quantize_model
from .quarot import QuaRot
from .rtn import RTN
from .smoothquant import SmoothQuant
from .spinquant import SpinQuant

METHODS: dict[str, type[Method]] = {m.name: m for m in (RTN, GPTQ, AWQ, HQQ, SmoothQuant, OmniQuant, QuaRot, SpinQuant)}

# Edge-ASR's configurations: weight bits, weight group (-1: per output channel), activation bits
# (16: float), activations per token. W4A16 and W3A16 take quasr's default group at their width (64:
# group 128 broke clips on unseen speech, docs/RESULTS.md "A safe 4-bit preset"); W4A16g128 is the
# configuration as earlier tables measured it.
CONFIGS = {
    "W8A16": (8, -1, 16),
    "W4A16": (4, default_group_size(4), 16),
    "W3A16": (3, default_group_size(3), 16),
    "W2A16": (2, 64, 16),
    "W8A8": (8, -1, 8),
    "W4A8": (4, -1, 8),
    "W4A4": (4, -1, 4),
}


def get_method(name: str, **options) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown PTQ method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](**options)


def activation_spec(act_bits: int | None, granularity: str = "token", symmetric: bool = False) -> dict:
    """The spec keys of activation fake-quant at a layer's input ({} for act_bits None/16: none)."""
    if act_bits in (None, 16):
        return {}
    check_bits(act_bits)
    if granularity not in ACT_GRANULARITIES:
        raise ValueError(f"activation granularity must be one of {ACT_GRANULARITIES}, got {granularity!r}")
    return {"act_bits": act_bits, "act_granularity": granularity, "act_symmetric": symmetric}


def with_activations(plan: dict, act_bits: int | None, granularity: str = "token", symmetric: bool = False) -> dict:
    """The plan with activation fake-quant at every quantized layer's input (act_bits None/16: none)."""
    act = activation_spec(act_bits, granularity, symmetric)
    if not act:
        return plan
    return {**plan, "layers": {n: s if s == KEEP else {**s, **act} for n, s in plan["layers"].items()}}


def config_plan(model, config: str, keep: tuple[str, ...] = (), act_granularity: str = "token") -> dict:
    """A uniform plan for one of CONFIGS (e.g. "W4A16") or a "W<b>A<b>[g<size>]" string."""
    from ..plan import uniform_plan

    bits, group, act = parse_config(config)
    if is_mixed(bits):
        raise ValueError(f"{config}: a fractional weight width is a mixed-precision size, not a uniform plan; "
                         f"use quasr.allocation.mixed.quantize_to_budget(average_bits={bits})")
    return with_activations(uniform_plan(model, bits, None if group == -1 else group, keep=keep), act, act_granularity)


def is_mixed(bits: float) -> bool:
    """A configuration's weight width that is not an integer: mixed precision to that average size."""
    return bits != int(bits)


def parse_config(config: str) -> tuple[int | float, int, int]:
    """(weight bits, group size (-1: per channel), activation bits (16: none)). A fractional weight
    width, e.g. W3.5A16, means mixed precision (myQASR's allocation) to the size of that average."""
    import re

    if config in CONFIGS:
        return CONFIGS[config]
    m = re.fullmatch(r"W(\d(?:\.\d+)?)A(\d+)(?:g(\d+|-1))?", config.replace(" ", ""))
    if not m:
        raise ValueError(f"bad config {config!r}: use one of {', '.join(CONFIGS)} or W<bits>A<bits>[g<group>] "
                         f"(a fractional W<bits>, e.g. W3.5A16, for mixed precision to that average size)")
    bits = float(m.group(1)) if "." in m.group(1) else int(m.group(1))
    act = int(m.group(2))
    group = int(m.group(3)) if m.group(3) else None
    if is_mixed(bits):
        if not 2 < bits < 8:
            raise ValueError(f"bad config {config!r}: a mixed-precision average must be between 2 and 8 bits")
    else:
        check_bits(bits)
    if act != 16:
        check_bits(act)
    if group is None:  # the default group of a width (mixed precision: of mixed plans)
        group = DEFAULT_GROUP_SIZE if is_mixed(bits) else default_group_size(bits)
    elif group != -1:
        resolve_group_size(group, 32)
    return bits, group, act


def quantize(adapter: ModelAdapter, plan: dict, calibration=None, method: str | Method = "rtn",
             batch_size: int = 8, language: str | None = None, progress: bool = True, **options):
    """Quantize adapter.model in place with a PTQ method; returns (model, final plan)."""
    m = method if isinstance(method, Method) else get_method(method, **options)
    batches = None
    if calibration is not None and len(calibration):
        if isinstance(calibration[0], CalibrationBatch):
            batches = list(calibration)
        elif isinstance(calibration[0], np.ndarray):
            batches = adapter.calibration_batches(list(calibration), batch_size, language, progress)
        else:
            raise TypeError("calibration must be a list of 16 kHz waveforms (numpy) or of CalibrationBatch")
    return quantize_model(adapter, plan, m, batches, progress)


__all__ = ["METHODS", "CONFIGS", "Method", "LayerInputs", "LayerJob", "LayerResult", "get_method", "quantize",
           "with_activations", "activation_spec", "config_plan", "parse_config", "is_mixed"]
