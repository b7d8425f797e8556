"""Orthogonal (randomised Hadamard or learned) rotations of a layer's input, for QuaRot and SpinQuant.

A quantized layer with rotation M (orthogonal, K x K) computes y = (x M) (W M)^T = x W^T: its weight
is stored as W M (quantized after the rotation), and its input is rotated online before the
activation fake-quant. Rotating spreads outlier channels over all channels, which is what makes
4-bit activations and low-bit weights work (QuaRot, Ashkboos et al. 2024).

M = diag(signs) (A kron B) / sqrt(K), with A and B Hadamard matrices (entries +-1) of orders a*b = K.
Applying it to a row costs K*(a + b) multiply-adds (two small matmuls on the [a, b] view of the
row), not K^2. Hadamard matrices exist only for orders 1, 2 and multiples of 4; quasr builds them
by Sylvester doubling and Paley's constructions I (q+1, q prime = 3 mod 4) and II (2(q+1), q prime =
1 mod 4), which covers every width of Whisper, Moonshine and Wav2Vec2 except tiny convolution
inputs (Moonshine's first conv, K = 127): `rotation_factors` returns None there and the layer
stays unrotated.
"""

from __future__ import annotations

import functools
import math

import torch

from . import ops


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def _jacobsthal(q: int) -> torch.Tensor:
    """Q[i, j] = chi(j - i) for the quadratic character chi of the prime field GF(q)."""
    chi = torch.full((q,), -1.0, dtype=torch.float64)
    chi[0] = 0
    chi[torch.tensor(sorted({(x * x) % q for x in range(1, q)}))] = 1
    idx = torch.arange(q)
    return chi[(idx[None, :] - idx[:, None]) % q]


_MAX_PALEY = 1024  # larger orders come from Sylvester doubling (cheap) instead


@functools.lru_cache(maxsize=None)
def hadamard(n: int) -> torch.Tensor | None:
    """A Hadamard matrix of order n (float64, entries +-1, H H^T = n I), or None if quasr cannot
    build one: the core hadamard_structure() names, doubled ([[H, H], [H, -H]]) up to order n."""
    st = hadamard_structure(n)
    if st is None:
        return None
    h = _core(st[1])
    while h.shape[0] < n:
        h = _double(h)
    return h


def _core(n: int) -> torch.Tensor:
    """The order-n matrix hadamard() starts from: 1, or a Paley construction."""
    if n == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if _is_prime(n - 1) and (n - 1) % 4 == 3:  # Paley I: I + S, S skew
        q = n - 1
        s = torch.zeros(n, n, dtype=torch.float64)
        s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, _jacobsthal(q)
        return s + torch.eye(n, dtype=torch.float64)
    q = n // 2 - 1  # Paley II: symmetric conference matrix x 2x2 blocks
    c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    c[0, 1:], c[1:, 0], c[1:, 1:] = 1, 1, _jacobsthal(q)
    on_zero = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    off_zero = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    return torch.kron(c, off_zero) + torch.kron(torch.eye(q + 1, dtype=torch.float64), on_zero)


@functools.lru_cache(maxsize=None)
def hadamard_structure(n: int) -> tuple[int, int] | None:
    """(s, c) with hadamard(n) == S_s kron hadamard(c): S_s the Sylvester matrix of order s (a power of
    two, applied by a fast Walsh-Hadamard transform) and c the order of the core that hadamard()
    builds directly (1, or a Paley order) and then doubles (doubling is kron with S_2). None where
    no construction applies. Larger orders than _MAX_PALEY come from doubling (cheap)."""
    if n == 1 or n == 2 or (n % 4 == 0 and _is_power_of_two(n)):
        return (n, 1)
    if n % 4:
        return None
    q = n // 2 - 1
    if n <= _MAX_PALEY and ((_is_prime(n - 1) and (n - 1) % 4 == 3) or (_is_prime(q) and q % 4 == 1)):
        return (1, n)
    half = hadamard_structure(n // 2)
    return None if half is None else (2 * half[0], half[1])


def _double(h: torch.Tensor | None) -> torch.Tensor | None:
    if h is None:
        return None
    return torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


@functools.lru_cache(maxsize=None)
def rotation_factors(k: int) -> tuple[int, int] | None:
    """(a, b) with a * b = k, Hadamard matrices of both orders buildable and a, b as balanced as
    possible (cost k*(a+b) per row); None if k has no buildable Hadamard order."""
    best = None
    for a in range(1, math.isqrt(k) + 1):
        if k % a or hadamard(a) is None or hadamard(k // a) is None:
            continue
        if best is None or a + k // a < sum(best):
            best = (a, k // a)
    return best


def random_signs(k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, (k,), generator=g) * 2 - 1).to(torch.int8)


class Rotation:
    """x -> x M for rows of length k: M = diag(signs) (L kron R), orthogonal.

    By default L = A / sqrt(a) and R = B / sqrt(b), normalised Hadamard matrices (QuaRot). SpinQuant
    learns the factors: `left` [a, a] and `right` [b, b] are any orthogonal matrices (a, b =
    rotation_factors(k)); the online cost is the same K*(a+b) per row.
    """

    def __init__(self, signs: torch.Tensor, left: torch.Tensor | None = None, right: torch.Tensor | None = None):
        k = signs.numel()
        f = rotation_factors(k)
        if f is None:
            raise ValueError(f"no Hadamard rotation of size {k} can be built (sizes are products of orders 1, 2, "
                             f"and multiples of 4 from Sylvester/Paley constructions); leave this layer unrotated")
        self.k, (self.a, self.b) = k, f
        self.signs = signs
        if (left is None) != (right is None):
            raise ValueError("a learned rotation needs both factors (left and right)")
        if left is not None and (tuple(left.shape) != (self.a, self.a) or tuple(right.shape) != (self.b, self.b)):
            raise ValueError(f"rotation factors for k={k} must be [{self.a}, {self.a}] and [{self.b}, {self.b}], "
                             f"got {list(left.shape)} and {list(right.shape)}")
        self.left, self.right = left, right
        self._native = None  # native_factors(), built on first use
        self._on_device: dict = {}  # device -> native_factors() with the dense factors moved there, once

    @property
    def learned(self) -> bool:
        return self.left is not None

    def factors(self, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(L, R), float32, orthogonal."""
        if self.learned:
            return self.left.to(device, torch.float32), self.right.to(device, torch.float32)
        return (_factor(self.a, device) * (1.0 / math.sqrt(self.a)), _factor(self.b, device) * (1.0 / math.sqrt(self.b)))

    def native_factors(self) -> tuple[list[int], list[torch.Tensor | None], float]:
        """The rotation as the native kernel takes it (csrc/cpu/rotate.h): axis orders, a dense
        float32 matrix per axis or None for a Sylvester axis (fast Walsh-Hadamard), and the final
        scale. Adjacent Sylvester axes merge (S_p kron S_q = S_pq)."""
        if self._native is None:
            if self.learned:
                self._native = ([self.a, self.b], [self.left.to(torch.float32).contiguous(),
                                                   self.right.to(torch.float32).contiguous()], 1.0)
            else:
                orders, dense = [], []
                for n in (self.a, self.b):
                    syl, core = hadamard_structure(n)
                    for order, mat in ((syl, None), (core, _factor_cpu(core))):
                        if order == 1:
                            continue
                        if mat is None and dense and dense[-1] is None:
                            orders[-1] *= order
                        else:
                            orders.append(order)
                            dense.append(mat)
                self._native = (orders or [1], dense or [None], 1.0 / math.sqrt(self.k))
        return self._native

    def device_factors(self, device) -> tuple[torch.Tensor, list[int], list[torch.Tensor | None], float]:
        """(signs, orders, dense, scale) of native_factors() with the signs and dense factors on
        `device`: moved once per device, not per call."""
        device = torch.device(device)
        hit = self._on_device.get(device)
        if hit is None:
            orders, dense, scale = self.native_factors()
            hit = (self.signs.to(device), orders, [None if d is None else d.to(device) for d in dense], scale)
            self._on_device[device] = hit
        return hit

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., k] -> x M (float32): the dispatcher's rotation kernel at inference (native CPU,
        Triton on CUDA, else the reference op), and the plain-torch reference (kron_apply) where
        gradients must flow (SpinQuant training)."""
        if torch.is_grad_enabled() and self._needs_grad(x):
            return self.reference_apply(x)
        return ops.rotate(x, *self.device_factors(x.device))

    def _needs_grad(self, x: torch.Tensor) -> bool:
        return x.requires_grad or (self.learned and (self.left.requires_grad or self.right.requires_grad))

    def reference_apply(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., k] -> x M (float32) in plain torch: two small matmuls on the [a, b] view."""
        dev = x.device
        xs = x.to(torch.float32) * self.signs.to(device=dev, dtype=torch.float32)
        if self.learned:
            return kron_apply(xs, *self.factors(dev))
        # integer Hadamard factors, one scaling at the end
        return kron_apply(xs, _factor(self.a, dev), _factor(self.b, dev)) * (1.0 / math.sqrt(self.k))

    def matrix(self) -> torch.Tensor:
        """The dense [k, k] M (tests and weight folding of small layers)."""
        return self.apply(torch.eye(self.k))


def kron_apply(x: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """x [..., a*b] -> x (left kron right), differentiable (SpinQuant trains through it). Row-vector
    convention: (x (L kron R)) viewed as [a, b] is L^T X R."""
    a, b = left.shape[0], right.shape[0]
    return torch.matmul(left.T, torch.matmul(x.reshape(-1, a, b), right)).reshape(x.shape)


@functools.lru_cache(maxsize=None)
def _factor_cpu(n: int) -> torch.Tensor:
    return hadamard(n).to(torch.float32)


def _factor(n: int, device) -> torch.Tensor:
    m = _factor_cpu(n)
    return m if m.device == torch.device(device) else m.to(device)
