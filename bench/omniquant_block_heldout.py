# OmniQuant's two objectives on real whisper-tiny.en blocks: each layer on its own output error
# (objective=layer) or the whole block on the block's output error (objective=block, the paper's),
# scored by the block's relative output error on held-out audio (16 prompts not used to calibrate).
# The float model feeds every block (no quantized prefix): a per-block comparison, less noisy than WER.
# Run: HF_HUB_OFFLINE=1 python bench/omniquant_block_heldout.py 2 8
import sys

import torch
from heldout_batches import tiny_heldout

from quasr.methods import config_plan, get_method
from quasr.methods.pipeline import BlockCalls, LayerJob, capture_block_inputs
from quasr.methods.omniquant import stored_module
from quasr.plan import flat_weight

model, ad, cal, held = tiny_heldout()
blocks = ad.blocks()


def record(block, batches, mods):
    with BlockCalls(model, block.name).recording() as calls:
        stats = capture_block_inputs(ad, batches, mods, {}, False, 2048)
    return calls, stats


for bi in map(int, sys.argv[1:]):
    block = blocks[bi]
    mods = {n: model.get_submodule(n) for n in block.layers}
    cal_calls, stats = record(block, cal, mods)
    held_calls, _ = record(block, held, mods)
    targets = held_calls.outputs()
    norm = sum(float((t ** 2).sum()) for t in targets)
    for config in ("W4A4", "W4A8", "W3A16"):
        plan = config_plan(model, config)["layers"]
        jobs = [LayerJob(n, m, dict(plan[n]), flat_weight(m).float(), stats[n], None, False) for n, m in mods.items()]
        out = []
        for objective in ("rtn", "layer", "block"):
            method = get_method("rtn") if objective == "rtn" else get_method("omniquant", objective=objective,
                                                                                clip="hessian")
            res = method.quantize_block(jobs, cal_calls)
            with torch.no_grad(), held_calls.substituted({j.name: stored_module(j, res[j.name]) for j in jobs}):
                err = sum(float(((held_calls.run(i) - t) ** 2).sum()) for i, t in enumerate(targets)) / norm
            out.append(f"{objective} {err:.3e}")
        print(f"block {bi} ({block.name}) {config}: " + " | ".join(out), flush=True)
