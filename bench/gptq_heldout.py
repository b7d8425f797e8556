# Per-layer held-out check of GPTQ vs RTN on whisper-tiny.en (docs/RESULTS.md, Edge-ASR section):
# calibration statistics from 16 English prompts, output error on 16 other prompts.
# Run: HF_HUB_OFFLINE=1 python bench/gptq_heldout.py
import torch
from heldout_batches import tiny_heldout
from quasr.format import dequantize
from quasr.methods import get_method
from quasr.methods.pipeline import capture_block_inputs, LayerJob
from quasr.methods.rtn import rtn_layer
from quasr.plan import flat_weight
model, ad, cal, held = tiny_heldout()
for bi in (2, 6, 8):
    blk = ad.blocks()[bi]
    mods = {n: model.get_submodule(n) for n in blk.layers if "fc" in n or "q_proj" in n}
    st = capture_block_inputs(ad, cal, mods, {}, True, 2048)
    sh = capture_block_inputs(ad, held, mods, {}, False, 4096)
    spec = dict(bits=4, group_size=128, symmetric=False)
    for n, m in mods.items():
        w = flat_weight(m).float()
        job = LayerJob(n, m, spec, w, st[n], None, False)
        def err(pw, x):
            return float(((x @ w.T - x @ dequantize(pw).T) ** 2).mean() / (x @ w.T).pow(2).mean())
        r = rtn_layer(job, "hessian")
        out = [f"rows {st[n].count} K {w.shape[1]}", f"rtn cal {err(r, st[n].samples):.2e} held {err(r, sh[n].samples):.2e}"]
        for damp in (0.01, 0.1, 0.5):
            g = get_method("gptq", clip="hessian", damp=damp).quantize_layer(job).weight
            out.append(f"gptq d{damp} cal {err(g, st[n].samples):.2e} held {err(g, sh[n].samples):.2e}")
        print(bi, n.split(".")[-2:], " | ".join(out), flush=True)
