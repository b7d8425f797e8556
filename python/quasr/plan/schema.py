"""The plan format: what a plan says, checked.

A plan is JSON-able: {"layers": {module name: {"bits": b, "group_size": g, "symmetric": s} | "keep"}}.
Layers a plan does not name stay in float. Every allocator and PTQ method produces this same kind of
plan; `swap` (plan/swap.py) turns it into packed modules.
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn

from ..format import check_bits, resolve_group_size
from ..nn import QuantConv1d, QuantLinear
from ..ranges import ACT_GRANULARITIES

KEEP = "keep"
# The weight group of mixed-precision plans (one group for every layer's width) unless told.
DEFAULT_GROUP_SIZE = 128


def default_group_size(bits: int) -> int:
    """The weight group a uniform `bits`-wide plan gets unless told (`quasr quantize --bits N`,
    `--config W4A16`): 64 at 2-4 bits, where group 128 broke clips on speech nothing was tuned on
    (looped or stopped early; docs/RESULTS.md, "Which tensors a 4-bit preset should widen" and "A
    safe 4-bit preset"), 128 at 5-8 bits, where it already transcribes as float does."""
    check_bits(bits)
    return 64 if bits <= 4 else 128
# bits/group_size/symmetric: the weight; act_*: activation fake-quant at the layer's input (16/absent:
# none); rotate/smooth: the layer has an online rotation (true: randomised Hadamard; "learned":
# SpinQuant's learned factors) / a per-channel input multiply / a per-channel input shift (set by PTQ
# methods, see nn._Packed).
SPEC_KEYS = {"bits", "group_size", "symmetric", "act_bits", "act_granularity", "act_symmetric", "rotate", "smooth",
             "shift"}


SPEC_TYPES = {"bits": (int,), "group_size": (int,), "symmetric": (bool,), "act_bits": (int, None),
              "act_granularity": (str,), "act_symmetric": (bool,), "rotate": (bool, "learned"), "smooth": (bool,),
              "shift": (bool,)}
SPEC_TYPE_NAMES = {"bits": "an integer", "group_size": "an integer", "symmetric": "true or false",
                   "act_bits": "an integer (16: none)", "act_granularity": "a string", "act_symmetric": "true or false",
                   "rotate": "true or \"learned\" (or false)", "smooth": "true or false", "shift": "true or false"}


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """nn.Linear and nn.Conv1d modules, in module (execution) order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d))}


def check_spec(name: str, spec) -> dict | str:
    if spec == KEEP:
        return KEEP
    if not isinstance(spec, dict) or "bits" not in spec:
        raise ValueError(f"plan entry {name!r} must be \"keep\" or {{'bits': 2..8, 'group_size': ..., 'symmetric': ...}}, got {spec!r}")
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ValueError(f"plan entry {name!r} has unknown keys {sorted(unknown)} (known: {sorted(SPEC_KEYS)})")
    for key, kinds in SPEC_TYPES.items():  # JSON types exactly: a "yes" or a null is not a boolean
        if key in spec and not (type(spec[key]) in kinds or spec[key] in kinds):
            raise ValueError(f"plan entry {name!r}: {key} must be {SPEC_TYPE_NAMES[key]}, got {spec[key]!r}")
    try:
        check_bits(spec["bits"])
        resolve_group_size(spec.get("group_size", 128), 32)
        if spec.get("act_bits") not in (None, 16, 32):
            check_bits(spec["act_bits"])
    except ValueError as exc:
        raise ValueError(f"plan entry {name!r}: {exc}") from None
    out = {"bits": spec["bits"], "group_size": spec.get("group_size", 128), "symmetric": bool(spec.get("symmetric", False))}
    if spec.get("act_bits") not in (None, 16, 32):
        gran = spec.get("act_granularity", "token")
        if gran not in ACT_GRANULARITIES:
            raise ValueError(f"plan entry {name!r}: act_granularity must be one of {ACT_GRANULARITIES}, got {gran!r}")
        out.update(act_bits=spec["act_bits"], act_granularity=gran, act_symmetric=bool(spec.get("act_symmetric", False)))
    if spec.get("rotate") not in (None, False, True, "learned"):
        raise ValueError(f"plan entry {name!r}: rotate must be true or \"learned\", got {spec['rotate']!r}")
    if spec.get("rotate"):
        out["rotate"] = spec["rotate"]
    if spec.get("smooth"):
        out["smooth"] = True
    if spec.get("shift"):
        out["shift"] = True
    return out


def uniform_plan(model: nn.Module, bits: int, group_size: int | None | str = "auto", symmetric: bool = False,
                 keep: tuple[str, ...] = ()) -> dict:
    """Every quantizable layer at `bits` in groups of `group_size` ("auto": default_group_size(bits);
    None or -1: per output channel); names matching any glob in `keep` stay float."""
    check_bits(bits)
    if group_size == "auto":
        group_size = default_group_size(bits)
    resolve_group_size(group_size, 32)
    spec = {"bits": bits, "group_size": -1 if group_size is None else group_size, "symmetric": symmetric}
    layers = {}
    for name in quantizable_layers(model):
        layers[name] = KEEP if any(fnmatch.fnmatch(name, p) for p in keep) else dict(spec)
    return {"layers": layers}


def validate_plan(model: nn.Module, plan: dict) -> dict[str, dict | str]:
    if not isinstance(plan, dict) or not isinstance(plan.get("layers"), dict):
        raise ValueError("a plan is a dict with a 'layers' mapping of module name -> spec or \"keep\"")
    layers = quantizable_layers(model)
    unknown = [n for n in plan["layers"] if n not in layers]
    if unknown:
        raise ValueError(f"plan names layers the model does not have (or that are not Linear/Conv1d): {unknown[:5]}")
    specs = {n: check_spec(n, s) for n, s in plan["layers"].items()}
    for name, spec in specs.items():  # the group each layer really gets (a group past K is per-channel)
        if spec != KEEP:
            spec["group_size"] = resolve_group_size(spec["group_size"], flat_weight(layers[name]).shape[1])[0]
    return specs


def is_grouped_conv(module: nn.Module) -> bool:
    """A Conv1d whose groups each see their own input channels (no per-channel input transforms)."""
    return isinstance(module, nn.Conv1d) and module.groups > 1


def flat_weight(module: nn.Module) -> torch.Tensor:
    """A Linear's weight, or a Conv1d's [out, in/groups, k] weight as [out, in/groups*k]."""
    w = module.weight.detach()
    return w.reshape(w.shape[0], -1)


def current_plan(model: nn.Module) -> dict:
    """The plan a (possibly swapped) model is in now."""
    layers = {}
    for n, m in model.named_modules():
        if isinstance(m, (QuantLinear, QuantConv1d)):
            layers[n] = m.spec()
        elif isinstance(m, (nn.Linear, nn.Conv1d)):
            layers[n] = KEEP
    return {"layers": layers}
