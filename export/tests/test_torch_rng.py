"""The committed torch generator vectors (tests/fixtures/rng, written by torch_rng_vectors.py)
against the algorithm docs/architecture.md describes ("The torch-compatible RNG"), modelled here
in the standard library: MT19937 from `random`, f32 rounding through `struct`, fused
multiply-adds rounded once. The Rust port (src/noise/torch.rs, src/noise/mathfun.rs) is held to
the same vectors by tests/noise.rs; this test keeps the description and the fixtures honest."""

from __future__ import annotations

import ast
import json
import math
import random
import struct
import unittest
from fractions import Fraction

from support import EXPORT, REPO, read_f32

RNG = REPO / "tests" / "fixtures" / "rng"
# Draws of the vectorized path longer than this only advance the generator (pure Python is slow).
CHECKED_ELEMENTS = 1000


def f32(x: float) -> float:
    """Round a double to the nearest float32 (ties to even)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def fraction_to_f32(q: Fraction) -> float:
    """Correctly rounded float32 of an exact rational (normal and subnormal range)."""
    if q == 0:
        return 0.0
    sign = -1.0 if q < 0 else 1.0
    q = abs(q)
    e = q.numerator.bit_length() - q.denominator.bit_length()
    if Fraction(2) ** e > q:
        e -= 1
    e = max(e, -126)
    m = q * Fraction(2) ** (23 - e)
    n = m.numerator // m.denominator
    rest = m - n
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and n % 2 == 1):
        n += 1
    return sign * math.ldexp(n, e - 23)


def const(text: str) -> float:
    """A Rust f32 literal: the decimal rounded once to float32."""
    return fraction_to_f32(Fraction(text))


def fma(a: float, b: float, c: float) -> float:
    """float32 a·b + c with one rounding (`f32::mul_add`). a·b is exact in a double; the double sum
    decides the float32 result unless it lands on a float32 midpoint, where the exact sum does."""
    p = a * b
    s = p + c
    mantissa, _ = math.frexp(s)
    scaled = mantissa * (1 << 25)
    if scaled == int(scaled) and int(scaled) % 2 == 1:  # s is halfway between two float32
        return fraction_to_f32(Fraction(p) + Fraction(c))
    return f32(s)


LOG_P = [const(c) for c in ("7.0376836292e-2", "-1.1514610310e-1", "1.1676998740e-1", "-1.2420140846e-1",
                            "1.4249322787e-1", "-1.6668057665e-1", "2.0000714765e-1", "-2.4999993993e-1",
                            "3.3333331174e-1")]
LOG_Q1, LOG_Q2 = const("-2.12194440e-4"), const("0.693359375")
SQRT_HALF = const("0.707106781186547524")
MIN_POSITIVE = 2.0 ** -126
FOPI = const("1.27323954473516")
DP = [const("-0.78515625"), const("-2.4187564849853515625e-4"), const("-3.77489497744594108e-8")]
COS_P = [const("2.443315711809948e-5"), const("-1.388731625493765e-3"), const("4.166664568298827e-2")]
SIN_P = [const("-1.9515295891e-4"), const("8.3321608736e-3"), const("-1.6666654611e-1")]
TWO_PI = f32(2 * math.pi)


def log_f32(x: float) -> float:
    x = max(x, MIN_POSITIVE)
    raw = bits(x)
    e = f32(float((raw >> 23) - 127) + 1.0)
    x = struct.unpack("<f", struct.pack("<I", (raw & ~0x7F800000 & 0xFFFFFFFF) | bits(0.5)))[0]
    if x < SQRT_HALF:
        x = f32(f32(x - 1.0) + x)
        e = f32(e - 1.0)
    else:
        x = f32(x - 1.0)
    z = f32(x * x)
    y = LOG_P[0]
    for p in LOG_P[1:]:
        y = fma(y, x, p)
    y = f32(y * x)
    y = fma(y, z, f32(e * LOG_Q1))
    y = f32(y - f32(z * 0.5))
    return fma(e, LOG_Q2, f32(x + y))


def sincos_f32(theta: float) -> tuple[float, float]:
    j = int(f32(theta * FOPI))
    j = (j + 1) & ~1
    y = float(j)
    flip_sin, swap, flip_cos = j & 4 != 0, j & 2 != 0, (~(j - 2)) & 4 != 0
    x = fma(y, DP[0], theta)
    x = fma(y, DP[1], x)
    x = fma(y, DP[2], x)
    z = f32(x * x)
    c = fma(COS_P[0], z, COS_P[1])
    c = fma(c, z, COS_P[2])
    c = f32(c * z)
    c = fma(c, z, -f32(z * 0.5))
    c = f32(c + 1.0)
    s = fma(SIN_P[0], z, SIN_P[1])
    s = fma(s, z, SIN_P[2])
    s = f32(s * z)
    s = fma(s, x, x)
    sin, cos = (c, s) if swap else (s, c)
    return (-sin if flip_sin else sin), (-cos if flip_cos else cos)


class TorchGenerator:
    """torch.Generator("cpu").manual_seed(seed) + torch.randn(float32), as documented."""

    def __init__(self, seed: int):
        state = [seed & 0xFFFFFFFF]
        for i in range(1, 624):
            state.append((1812433253 * (state[-1] ^ (state[-1] >> 30)) + i) & 0xFFFFFFFF)
        self.engine = random.Random()
        self.engine.setstate((3, (*state, 624), None))  # std::mt19937(seed), next call twists
        self.cached: float | None = None

    def random(self) -> int:
        return self.engine.getrandbits(32)

    def uniform_f32(self) -> float:
        return (self.random() & 0xFFFFFF) * 2.0 ** -24

    def uniform_f64(self) -> float:
        hi, lo = self.random(), self.random()
        return (((hi << 32) | lo) & ((1 << 53) - 1)) * 2.0 ** -53

    def normal_f64(self) -> float:
        if self.cached is not None:
            value, self.cached = self.cached, None
            return value
        u1, u2 = self.uniform_f64(), self.uniform_f64()
        r = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        self.cached = r * math.sin(theta)
        return r * math.cos(theta)

    def randn(self, n: int, compute: bool = True) -> list[float] | None:
        if n < 16:
            return [f32(self.normal_f64()) for _ in range(n)]
        data = [self.uniform_f32() for _ in range(n)]
        if n % 16:
            tail = [self.uniform_f32() for _ in range(16)]
        if not compute:
            return None
        for i in range(0, n - 15, 16):
            data[i:i + 16] = transform_block(data[i:i + 16])
        if n % 16:
            data[n - 16:] = transform_block(tail)
        return data


def transform_block(block: list[float]) -> list[float]:
    out = list(block)
    for j in range(8):
        radius = f32(math.sqrt(f32(-2.0 * log_f32(f32(1.0 - block[j])))))
        sin, cos = sincos_f32(f32(TWO_PI * block[j + 8]))
        out[j], out[j + 8] = f32(radius * cos), f32(radius * sin)
    return out


def script_constants() -> dict:
    """SEEDS, SIZES, SEQUENCE and BIG as torch_rng_vectors.py defines them."""
    tree = ast.parse((EXPORT / "torch_rng_vectors.py").read_text())
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in ("SEEDS", "SIZES", "SEQUENCE", "BIG"):
                found[name] = eval(compile(ast.Expression(node.value), "torch_rng_vectors.py", "eval"))  # constant expressions
    return found


class TorchRngVectors(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.manifest = json.loads((RNG / "manifest.json").read_text())

    def test_manifest_lists_what_the_script_draws(self):
        c = script_constants()
        expected = []
        for seed in c["SEEDS"]:
            expected.append((f"sizes_s{seed}", seed, [[n] for n in c["SIZES"]]))
            expected.append((f"sequence_s{seed}", seed, c["SEQUENCE"]))
        expected.append(("big_s42", 42, [c["BIG"]]))
        got = [(r["name"], r["seed"], [d["shape"] for d in r["draws"]]) for r in self.manifest["runs"]]
        self.assertEqual(got, expected)

    def test_files_hold_float32_of_the_listed_shapes(self):
        listed = set()
        for run in self.manifest["runs"]:
            for draw in run["draws"]:
                shape, values = read_f32(RNG / draw["file"])
                self.assertEqual(list(shape), draw["shape"], draw["file"])
                self.assertEqual(len(values), math.prod(draw["shape"]), draw["file"])
                listed.add(draw["file"])
        self.assertEqual(listed, {p.name for p in RNG.glob("*.npy")}, "files not in the manifest")

    def test_documented_algorithm_reproduces_torch_bit_for_bit(self):
        checked = 0
        for run in self.manifest["runs"]:
            generator = TorchGenerator(run["seed"])
            for k, draw in enumerate(run["draws"]):
                n = math.prod(draw["shape"])
                values = generator.randn(n, compute=n <= CHECKED_ELEMENTS)
                if values is None:
                    continue
                _, expected = read_f32(RNG / draw["file"])
                got = [bits(v) for v in values]
                mismatch = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)
                self.assertIsNone(mismatch, f"{draw['file']} (seed {run['seed']}, draw {k}, n = {n}): "
                                            f"element {mismatch} differs")
                checked += n
        self.assertGreater(checked, 10_000)

    def test_scalar_path_caches_the_second_sample(self):
        # Two draws of one element equal one draw of two (the second is the cached sin sample).
        a, b = TorchGenerator(7), TorchGenerator(7)
        self.assertEqual(a.randn(1) + a.randn(1), b.randn(2))
        # A draw of 16 or more neither reads nor clears the cache.
        a, b = TorchGenerator(7), TorchGenerator(7)
        first = a.randn(1)
        a.randn(16)
        self.assertEqual(first + a.randn(1), b.randn(2))


if __name__ == "__main__":
    unittest.main()
