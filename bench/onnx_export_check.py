"""A mixed-precision quasr model, exported with `quasr export --format onnx`, against itself on real
speech: export time, graph sizes, onnxruntime vs torch difference, WER and identical transcripts.

Plan: RTN W4 g128, encoder layer 1's MLP fc2 at 3 bits (g32), decoder layer 0's MLP fc2 at 5 bits.
Run: HF_HUB_OFFLINE=1 .venv/bin/python bench/onnx_export_check.py --model moonshine-base --clips 12
"""
import argparse
import copy
import os
import shutil
import tempfile
import time

from quasr.adapters import get_adapter
from quasr.data import default_data, load_clips
from quasr.evaluate import word_error_rate
from quasr.export import OnnxModel, export_onnx
from quasr.models import load_model
from quasr.plan import swap, uniform_plan

FC2 = {"moonshine": "{}.layers.{}.mlp.fc2", "whisper": "{}.layers.{}.fc2"}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="moonshine-base")
    p.add_argument("--clips", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    model, processor = load_model(a.model)
    family = get_adapter(model, processor).family
    plan = uniform_plan(model, 4, 128)
    layers = plan["layers"]
    enc, dec = FC2[family].format("model.encoder", 1), FC2[family].format("model.decoder", 0)
    layers[enc] = dict(layers[enc], bits=3, group_size=32)
    layers[dec] = dict(layers[dec], bits=5)
    q = swap(copy.deepcopy(model), plan, progress=False)
    out = os.path.join(tempfile.mkdtemp(), "onnx")
    t = time.perf_counter()
    report = export_onnx(q, processor, out)
    print(f"{a.model}: export {time.perf_counter() - t:.0f} s")
    print("\n".join(report.lines()))
    data = default_data()
    if not data:
        raise SystemExit("no speech found: set QUASR_SPEECH to the speech folder")
    clips = list(load_clips(os.path.dirname(data), "en", None))[: a.clips]
    waves, refs = [c.waveform() for c in clips], [c.text for c in clips]
    ours = get_adapter(q, processor).transcribe(waves)
    theirs = OnnxModel(out, threads=a.threads).transcribe(waves)
    print(f"WER quasr {word_error_rate(refs, ours, 'en')[0]:.2f}, onnxruntime {word_error_rate(refs, theirs, 'en')[0]:.2f}; "
          f"identical transcripts {sum(x == y for x, y in zip(ours, theirs))} of {len(ours)}")
    shutil.rmtree(os.path.dirname(out), ignore_errors=True)


if __name__ == "__main__":
    main()
