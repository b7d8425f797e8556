# OmniQuant's LET shift on real whisper-tiny.en layers (docs/DESIGN.md): layer-output error on
# held-out rows with and without the learned shift, W4A4 and W4A8 (per-token activations).
# Calibration rows from 16 English prompts, held-out rows from 16 others.
# Run: HF_HUB_OFFLINE=1 python bench/omniquant_shift_layers.py 2 8
import sys
import torch
from heldout_batches import tiny_heldout
from quasr.methods import get_method
from quasr.methods.pipeline import capture_block_inputs, LayerJob
from quasr.methods.common import layer_output_error
from quasr.plan import flat_weight
from dataclasses import replace

model, ad, cal, held = tiny_heldout()
for bi in map(int, sys.argv[1:]):
    blk = ad.blocks()[bi]
    mods = {n: model.get_submodule(n) for n in blk.layers if "fc1" in n or "q_proj" in n or "fc2" in n}
    st = capture_block_inputs(ad, cal, mods, {}, False, 2048)
    sh = capture_block_inputs(ad, held, mods, {}, False, 2048)
    for act_bits in (4, 8):
        spec = dict(bits=4, group_size=-1, symmetric=False, act_bits=act_bits, act_granularity="token",
                    act_symmetric=False)
        for n, m in mods.items():
            w = flat_weight(m).float()
            job = LayerJob(n, m, spec, w, st[n], None, False)
            ref = float((sh[n].samples @ w.T).pow(2).mean())
            out = []
            for shift in (False, True):
                r = get_method("omniquant", let_shift=shift).quantize_layer(job)
                held_err = layer_output_error(replace(job, inputs=sh[n]), r.weight, r.input_mul, r.input_shift)
                out.append(f"shift={shift}: held {held_err / ref:.4f}")
            print(bi, f"W4A{act_bits}", n.split(".")[-2:], " | ".join(out), flush=True)
