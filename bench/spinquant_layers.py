# SpinQuant vs the Hadamard rotation alone on one whisper-tiny.en encoder layer (docs/DESIGN.md):
# relative layer-output error at the identity (QuaRot) and after learning, 8 English prompts.
# Run: HF_HUB_OFFLINE=1 python bench/spinquant_layers.py 3
import time, torch, sys
from quasr.models import load_model
from quasr.adapters import get_adapter
from quasr.data import load_clips
from quasr.methods.pipeline import capture_block_inputs, rotation_for
from quasr.methods.spinquant import learn_rotation
from quasr.plan import flat_weight
from quasr.ops import ActQuant

model, proc = load_model("whisper-tiny.en")
ad = get_adapter(model, proc)
clips = load_clips("../shared/speech/prompts/manifest.jsonl", "en", 8)
batches = ad.calibration_batches([c.waveform() for c in clips], 8, "en")
blk = [b for b in ad.blocks()][int(sys.argv[1])]
mods = {n: model.get_submodule(n) for n in blk.layers}
rots = {n: rotation_for(n, flat_weight(m).shape[1]) for n, m in mods.items()}
stats = capture_block_inputs(ad, batches, mods, rots, False, 2048)
for steps, lr in [(50, 0.01)]:
  for cfg in [dict(bits=4, group_size=-1, symmetric=False, act=4), dict(bits=3, group_size=128, symmetric=False, act=None)]:
    act = ActQuant(cfg["act"], False) if cfg["act"] else None
    for n, m in mods.items():
        w = rots[n].apply(flat_weight(m).float())
        t = time.time()
        ra, rb, l0, l1 = learn_rotation(stats[n].samples[:512], w, cfg, act, rots[n].a, rots[n].b, steps, lr)
        print(steps, lr, cfg["bits"], cfg["act"], n.split(".")[-2:], f"{l0:.4f} -> {l1:.4f}", f"{time.time()-t:.1f}s", flush=True)
