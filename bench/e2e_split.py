"""Encoder against whole transcription, quasr --bits 4 and CTranslate2 int8 on whisper-tiny.en, the
first 30 English prompts, batch 1 and 8 (bench/RESULTS.md: where the time goes).

    HF_HUB_OFFLINE=1 python bench/e2e_split.py
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quasr.plan import default_group_size  # noqa: E402
from e2e import CT2Whisper, ct2_dir, quantized  # noqa: E402

from quasr.adapters import get_adapter  # noqa: E402
from quasr.data import default_data, load_clips  # noqa: E402
from quasr.evaluate import machine_description  # noqa: E402
from quasr.models import load_model  # noqa: E402

torch.set_num_threads(2)
import ctranslate2  # noqa: E402

base, proc = load_model("whisper-tiny.en")
m = quantized(base, proc, "preset", (4, default_group_size(4)), None)
waves = [c.waveform() for c in load_clips(default_data(), limit=30)]
ct2 = CT2Whisper(ct2_dir("whisper-tiny.en"), "int8", 2, proc)
ad = get_adapter(m, proc)
print(machine_description())
for bs in (1, 8):
    te = tt = tc = tce = 0.0
    with torch.inference_mode():
        for i in range(0, len(waves), bs):
            b = waves[i : i + bs]
            f = ad.preprocess(b)["input_features"]
            t = time.perf_counter(); m.model.encoder(f); te += time.perf_counter() - t
            t = time.perf_counter(); ad.transcribe_batch(b, "en"); tt += time.perf_counter() - t
            sv = ctranslate2.StorageView.from_array(np.ascontiguousarray(f.numpy()))
            t = time.perf_counter(); ct2.engine.encode(sv); tce += time.perf_counter() - t
            t = time.perf_counter(); ct2.transcribe_batch(b, "en"); tc += time.perf_counter() - t
    print(f"batch {bs}: quasr W4 total {tt:.2f} s, encoder {te:.2f} s; CT2 int8 total {tc:.2f} s, encoder {tce:.2f} s")
