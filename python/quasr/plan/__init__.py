"""Quantization plans: the format (schema.py), `swap` (swap.py) and size accounting (size.py).

A plan is JSON-able: {"layers": {module name: {"bits": b, "group_size": g, "symmetric": s} | "keep"}}.
Layers a plan does not name stay in float. Every allocator and PTQ method produces this same kind of
plan; `swap` turns it into packed modules.
"""

from .schema import (DEFAULT_GROUP_SIZE, KEEP, SPEC_KEYS, check_spec, current_plan, default_group_size, flat_weight,
                     is_grouped_conv, quantizable_layers, uniform_plan, validate_plan)
from .size import average_bits, model_size_bytes, transform_bytes
from .swap import (LayerTransform, Quantizer, default_rotation_signs, empty_swap, rtn_quantizer, swap,
                   transformed_weight)

__all__ = ["DEFAULT_GROUP_SIZE", "KEEP", "SPEC_KEYS", "check_spec", "current_plan", "default_group_size", "flat_weight", "is_grouped_conv",
           "quantizable_layers", "uniform_plan", "validate_plan", "average_bits", "model_size_bytes", "transform_bytes", "LayerTransform",
           "Quantizer", "default_rotation_signs", "empty_swap", "rtn_quantizer", "swap", "transformed_weight"]
