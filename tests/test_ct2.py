import struct

import pytest

from quasr.readers.ct2 import CT2FormatError, read_ct2_model


def _string(s):
    b = s.encode() + b"\0"
    return struct.pack("<H", len(b)) + b


def _file(tensors, version=6):
    out = struct.pack("<I", version) + _string("WhisperSpec") + struct.pack("<I", 3) + struct.pack("<I", len(tensors))
    for name, dims, data in tensors:
        out += _string(name) + struct.pack("<B", len(dims)) + b"".join(struct.pack("<I", d) for d in dims)
        out += struct.pack("<B", 0) + struct.pack("<I", len(data)) + data
    return out + struct.pack("<I", 1) + _string("alias") + _string("a")


def test_reads_variables_and_aliases():
    data = _file([("a", [2, 2], struct.pack("<4f", 1, 2, 3, 4))])
    spec, t = read_ct2_model(data)
    assert spec == "WhisperSpec" and t["a"].tolist() == [[1, 2], [3, 4]] and t["alias"] is t["a"]


def test_truncated_and_wrong_files():
    data = _file([("a", [2, 2], struct.pack("<4f", 1, 2, 3, 4))])
    with pytest.raises(CT2FormatError, match="truncated"):
        read_ct2_model(data[:40])
    with pytest.raises(CT2FormatError, match="not a CTranslate2"):
        read_ct2_model(b"PK\x03\x04" + data)
