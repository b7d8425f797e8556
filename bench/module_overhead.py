"""Python cost of a packed layer call at M = 1: the module call against the kernel op with the same
arguments, on whisper-tiny.en's first decoder q_proj under the --bits 4 preset (bench/RESULTS.md).

    HF_HUB_OFFLINE=1 python bench/module_overhead.py
"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quasr.plan import default_group_size  # noqa: E402
from e2e import quantized  # noqa: E402

from quasr.evaluate import machine_description  # noqa: E402
from quasr.kernels import BACKENDS  # noqa: E402
from quasr.models import load_model  # noqa: E402

torch.set_num_threads(2)
base, proc = load_model("whisper-tiny.en")
lin = quantized(base, proc, "preset", (4, default_group_size(4)), None).model.decoder.layers[0].self_attn.q_proj
x = torch.randn(1, 1, 384)
cpu, pw, act = BACKENDS["cpu"], lin.packed_weight(), lin.act_quant()
layout = lin._layouts(0)(cpu, pw)
isa = cpu._isa_id(None)


def op():
    return torch.ops.quasr_cpu.qlinear_i8(x, layout.codes, layout.params, lin.bias, pw.bits, pw.group_size,
                                          pw.in_features, pw.out_features, None, act.bits, 2, act.symmetric,
                                          act.scale, act.zero, isa)


def module():
    return lin(x)


print(machine_description(), "int8 ISA", cpu.int8_isa())
with torch.inference_mode():
    for f in (op, module, op, module):
        for _ in range(200):
            f()
        t = time.perf_counter()
        for _ in range(2000):
            f()
        print(f"{f.__name__}: {(time.perf_counter() - t) / 2000 * 1e6:.1f} us per call")
