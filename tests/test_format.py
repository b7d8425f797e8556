import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quasr.format import (PackedWeight, dequantize, pack_codes, plane_widths, quantize_to_codes,
                          resolve_group_size, unpack_codes)

BITS = [2, 3, 4, 5, 6, 7, 8]
GROUPS = [32, 64, 128, -1]


@pytest.mark.parametrize("bits", BITS)
def test_planes_sum_to_bits(bits):
    assert sum(plane_widths(bits)) == bits and all(w in (1, 2, 4, 8) for w in plane_widths(bits))


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from(BITS), group=st.sampled_from(GROUPS), sym=st.booleans(),
       n=st.integers(1, 40), k=st.integers(1, 300), seed=st.integers(0, 2**31 - 1))
def test_pack_round_trip_and_dequantize(bits, group, sym, n, k, seed):
    gen = torch.Generator().manual_seed(seed)
    g, kp = resolve_group_size(group, k)
    codes = torch.randint(0, 1 << bits, (n, kp), generator=gen, dtype=torch.int32)
    packed = pack_codes(codes, bits)
    assert packed.shape == (n, kp * bits // 8)  # exactly b bits per weight
    assert torch.equal(unpack_codes(packed, bits), codes)
    scales = (torch.rand(n, kp // g, generator=gen) + 0.01).half()
    zeros = None if sym else torch.randint(0, 1 << bits, (n, kp // g), generator=gen).half()
    pw = PackedWeight(packed, scales, zeros, bits, g, k)
    pw.validate()
    z = torch.full((n, kp // g), float(1 << (bits - 1))) if sym else zeros.float()
    expect = (codes.float() - z.repeat_interleave(g, 1)) * scales.float().repeat_interleave(g, 1)
    assert torch.equal(dequantize(pw), expect[:, :k])
    # quantize_to_codes inverts dequantize exactly on representable values
    assert torch.equal(quantize_to_codes(dequantize(pw), scales, zeros, bits, g)[:, :k], codes[:, :k])


def test_layout_is_little_endian_planes():
    # 3 bits = 2-bit plane then 1-bit plane. Codes 0..7 repeated over 32 columns.
    codes = (torch.arange(32) % 8).view(1, 32)
    packed = pack_codes(codes, 3)
    assert packed.shape == (1, 12)
    low = codes & 3
    assert packed[0, 0].item() == int(low[0, 0] | low[0, 1] << 2 | low[0, 2] << 4 | low[0, 3] << 6)
    high = codes >> 2
    assert packed[0, 8].item() == sum(int(high[0, i]) << i for i in range(8))


@pytest.mark.parametrize("bits", [0, 1, 9, 16, 4.0, True])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match="bits must be an integer from 2 to 8"):
        plane_widths(bits)


@pytest.mark.parametrize("group", [0, 16, 48, 100, -2])
def test_bad_group_size(group):
    with pytest.raises(ValueError, match="group_size must be a positive multiple of 32"):
        resolve_group_size(group, 256)


def test_group_not_dividing_k_is_padded():
    assert resolve_group_size(128, 240) == (128, 256)
    assert resolve_group_size(-1, 240) == (256, 256)
    assert resolve_group_size(32, 240) == (32, 256)


def test_codes_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        pack_codes(torch.full((1, 32), 8), 3)
