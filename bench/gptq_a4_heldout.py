# Per-layer held-out check of GPTQ vs RTN under 4-bit activations on whisper-tiny.en (docs/RESULTS.md,
# Edge-ASR section): W4 per-channel weights, inputs fake-quantized per token to 4 bits (asymmetric, the
# sweep's W4A4). Error is ||X W^T - Q(X) Wq^T||^2 / ||X W^T||^2 on 16 held-out prompts, for RTN, GPTQ
# with the float inputs' Hessian (what quasr does) and GPTQ with the quantized inputs' Hessian.
# "act only" is the error of quantizing the activations alone (float weights).
# Run: HF_HUB_OFFLINE=1 python bench/gptq_a4_heldout.py
import torch
from heldout_batches import tiny_heldout
from quasr.format import dequantize
from quasr.grid import fake_quant_tokens
from quasr.methods import get_method
from quasr.methods.gptq import gptq_quantize
from quasr.methods.pipeline import capture_block_inputs, LayerJob
from quasr.methods.rtn import rtn_layer
from quasr.plan import flat_weight

A_BITS = 4
model, ad, cal, held = tiny_heldout()
gptq = get_method("gptq", clip="hessian")
print("block layer | rows | A16: rtn gptq | A4: rtn gptq gptq(H of Q(X)) act-only")
for bi in (2, 6, 8):
    blk = ad.blocks()[bi]
    mods = {n: model.get_submodule(n) for n in blk.layers if "fc" in n or "q_proj" in n or "out_proj" in n}
    st = capture_block_inputs(ad, cal, mods, {}, True, 8192)
    sh = capture_block_inputs(ad, held, mods, {}, False, 4096)
    spec = dict(bits=4, group_size=None, symmetric=False)
    for n, m in mods.items():
        w = flat_weight(m).float()
        job = LayerJob(n, m, spec, w, st[n], None, False)
        x = sh[n].samples
        xq = fake_quant_tokens(x, A_BITS)
        ref = x @ w.T

        def err(wq, xin):
            return float(((ref - xin @ wq.T) ** 2).mean() / ref.pow(2).mean())

        damp = gptq.damp_for(st[n].count, w.shape[1])
        r = dequantize(rtn_layer(job, "hessian"))
        g = dequantize(gptq.quantize_layer(job).weight)
        cxq = fake_quant_tokens(st[n].samples, A_BITS).double()
        hq = (2 * cxq.T @ cxq / cxq.shape[0]).float()
        gq = dequantize(gptq_quantize(w, hq, 4, None, False, damp=damp, clip="hessian",
                                      importance=(cxq**2).mean(0).float()))
        print(f"{bi} {'.'.join(n.split('.')[-3:])} | {st[n].count} | {err(r, x):.2e} {err(g, x):.2e} | "
              f"{err(r, xq):.2e} {err(g, xq):.2e} {err(gq, xq):.2e} {err(w, xq):.2e}", flush=True)
