"""Share of GPTQ's Hessian trace (the sum of squared input norms) that Whisper's decoder prompt
(<|startoftranscript|><|notimestamps|>, positions 0-1) holds in each decoder linear layer, over
quasr's calibration batches of whisper-tiny.en on the first 32 LibriSpeech clips.

    HF_HUB_OFFLINE=1 python bench/prompt_hessian_share.py   (docs/RESULTS.md: calibrating with the prompt)
"""
import collections

import torch
from quasr.models import load_model
from quasr.adapters import get_adapter
from quasr.data import load_clips
torch.set_num_threads(2)
m, p = load_model("whisper-tiny.en")
ad = get_adapter(m, p)
waves = [c.waveform() for c in load_clips("/work/shared/speech/librispeech", limit=32)]
batches = ad.calibration_batches(waves, batch_size=8)
share = collections.defaultdict(lambda: [0.0, 0.0])
def hook(name):
    def f(mod, args, out):
        x = args[0].detach().float()
        if x.dim() != 3 or x.shape[1] < 3: return
        sq = (x ** 2).sum(-1)  # [B, T]
        share[name][0] += sq[:, :2].sum().item(); share[name][1] += sq.sum().item()
    return f
hs = [mod.register_forward_hook(hook(n)) for n, mod in m.named_modules()
      if isinstance(mod, torch.nn.Linear) and n.startswith("model.decoder") and "encoder_attn.k_proj" not in n and "encoder_attn.v_proj" not in n]
positions = 0
with torch.no_grad():
    for b in batches:
        positions += int(b.inputs["decoder_attention_mask"].sum())
        ad.forward_logits(b)
print("positions", positions, "prompt positions", 2 * 32)
for n, (a, t) in share.items():
    print(f"{n}: prompt share {a / t:.3f}")
