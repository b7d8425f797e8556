"""Model readers and converters: models that do not ship as a Hugging Face checkpoint are read from
their own format and turned into the transformers model and processor quasr quantizes.

- `ct2.py` reads CTranslate2 `model.bin`; `whisper_ct2.py` converts a CTranslate2 Whisper into
  `WhisperForConditionalGeneration`.
- `ort.py` reads ONNX Runtime `.ort` files; `graph_import.py` recovers a state dict from an exported
  graph (ONNX or `.ort`); `moonshine_ort.py` converts Moonshine's `.ort` export; `onnx_import.py`
  reads Wav2Vec2 ONNX exports.

`quasr.models` (the built-in model table and `load_model`) picks the reader for a source.
"""
