"""Wav2Vec2 CTC from ONNX exports (fp32, fp16, dynamic int8) and the .ort reader, checked by
exporting a random-init model and converting it back."""

import json

import numpy as np
import pytest
import torch

from conftest import tiny_family

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny Wav2Vec2ForCTC exported the way HF/optimum do (TorchScript exporter, opset 17), as
    three export directories: fp32, fp16 and dynamic int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.float16 import convert_float_to_float16

    root = tmp_path_factory.mktemp("w2v")
    model, processor = tiny_family("wav2vec2", root)
    dirs = {k: root / k for k in ("fp32", "fp16", "int8")}
    for d in dirs.values():
        d.mkdir()
        model.config.save_pretrained(d)
        processor.save_pretrained(d)
    x = torch.randn(1, 8000)
    torch.onnx.export(model, (x,), str(dirs["fp32"] / "model.onnx"), input_names=["input_values"],
                      output_names=["logits"], dynamic_axes={"input_values": {0: "batch", 1: "samples"}},
                      opset_version=17, dynamo=False)
    onnx.save(convert_float_to_float16(onnx.load(str(dirs["fp32"] / "model.onnx")), keep_io_types=True),
              str(dirs["fp16"] / "model.onnx"))
    quantize_dynamic(str(dirs["fp32"] / "model.onnx"), str(dirs["int8"] / "model.onnx"), weight_type=QuantType.QInt8)
    return model, dirs


def _weights(model):
    return {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d))}


def test_fp32_export_round_trip(exported):
    from quasr.models import load_model

    model, dirs = exported
    back, processor = load_model(str(dirs["fp32"]))  # the user path: an export directory
    for k, v in model.state_dict().items():
        if k == "wav2vec2.masked_spec_embed" or "parametrizations" in k:  # pre-training only / not unique
            continue
        assert torch.allclose(back.state_dict()[k], v, atol=1e-6), k
    conv = "wav2vec2.encoder.pos_conv_embed.conv"  # weight norm: (g, v) is not unique, g * v/|v| is
    assert torch.allclose(back.get_submodule(conv).weight, model.get_submodule(conv).weight, atol=1e-6)
    x = torch.randn(2, 12000)
    session = ort.InferenceSession(str(dirs["fp32"] / "model.onnx"))
    ref = session.run(None, {"input_values": x.numpy()})[0]
    with torch.inference_mode():
        assert np.abs(back(x).logits.numpy() - ref).max() < 1e-4
        assert torch.allclose(back(x).logits, model(x).logits, atol=1e-5)


def test_fp16_export_round_trip(exported):
    from quasr.readers.onnx_import import load_wav2vec2_onnx

    model, dirs = exported
    back, _ = load_wav2vec2_onnx(dirs["fp16"])
    for name, w in _weights(model).items():
        got = _weights(back)[name]
        assert torch.allclose(got, w.half().float(), atol=1e-3, rtol=1e-3), name


def test_int8_export_round_trip(exported):
    from quasr.readers.onnx_import import load_wav2vec2_onnx

    model, dirs = exported
    back, _ = load_wav2vec2_onnx(dirs["int8"])
    graph = onnx.load(str(dirs["int8"] / "model.onnx")).graph
    quantized = {i.name for i in graph.initializer if i.name.endswith("_quantized")}
    assert len(quantized) >= 10  # the export really is int8
    for name, w in _weights(model).items():
        step = w.abs().max() / 127  # symmetric int8 per tensor
        assert (_weights(back)[name] - w).abs().max() <= step * 0.51 + 1e-6, name
    x = torch.randn(1, 12000)
    with torch.inference_mode():
        ref, got = model(x).logits, back(x).logits
    assert (got - ref).norm() / ref.norm() < 0.05


def test_quantize_an_onnx_import(exported, tmp_path):
    from quasr.adapters import get_adapter
    from quasr.models import load_model
    from quasr.plan import swap, uniform_plan

    _, dirs = exported
    adapter = get_adapter(*load_model(str(dirs["int8"])))
    swap(adapter.model, uniform_plan(adapter.model, 4, 32), progress=False)
    assert len(adapter.transcribe([np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)])) == 1


def test_mismatched_export_is_a_clear_error(exported, tmp_path):
    from quasr.readers.graph_import import GraphImportError
    from quasr.readers.onnx_import import load_wav2vec2_onnx

    _, dirs = exported
    d = tmp_path / "bad"
    d.mkdir()
    cfg = json.loads((dirs["fp32"] / "config.json").read_text())
    cfg["intermediate_size"] = 96  # the graph has 128
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model.onnx").write_bytes((dirs["fp32"] / "model.onnx").read_bytes())
    with pytest.raises(GraphImportError, match="intermediate_dense.*96"):
        load_wav2vec2_onnx(d)
    (d / "model.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(GraphImportError, match="not a readable ONNX model"):
        load_wav2vec2_onnx(d)


def test_ort_reader_reads_an_ort_conversion(exported, tmp_path):
    """ONNX Runtime's own converter writes the .ort file; our reader must recover the weights."""
    import subprocess
    import sys

    from quasr.readers.graph_import import graph_state_dict
    from quasr.readers.ort import read_ort_model

    model, dirs = exported
    src = tmp_path / "model.onnx"
    src.write_bytes((dirs["fp32"] / "model.onnx").read_bytes())
    subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(src),
                    "--optimization_style", "Fixed", "--output_dir", str(tmp_path / "ort")],
                   check=True, capture_output=True)
    (ort_file,) = (tmp_path / "ort").glob("*.ort")
    graph = read_ort_model(ort_file)
    onnx_graph = onnx.load(str(src)).graph
    assert {n.op_type for n in graph.nodes} >= {"Conv", "MatMul"}
    expected = {k: v.shape for k, v in model.state_dict().items()}
    sd = graph_state_dict(graph, expected)
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for name in linear:
        assert torch.allclose(sd[f"{name}.weight"], model.get_submodule(name).weight, atol=1e-6), name
    assert len(graph.initializers) > 0 and len(onnx_graph.initializer) > 0


def test_ort_reader_rejects_other_files(tmp_path):
    from quasr.readers.ort import OrtFormatError, read_ort_model

    bad = tmp_path / "x.ort"
    bad.write_bytes(b"\x10\x00\x00\x00NOPE" + bytes(32))
    with pytest.raises(OrtFormatError, match="no ORTM identifier"):
        read_ort_model(bad)
    bad.write_bytes(b"\xff\xff\xff\x00ORTM" + bytes(8))
    with pytest.raises(OrtFormatError, match="outside the file"):
        read_ort_model(bad)
