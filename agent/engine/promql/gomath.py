"""Go's pure-Go trigonometric and hyperbolic functions (what Prometheus runs on amd64), bit for bit.

The C library's sin, atan, ... are correctly rounded more often than Go's, so they differ from Prometheus in
the last bit now and then. These follow the algorithms Go's math package uses on amd64 (Cephes polynomials
for sin/cos/tan/atan and tanh, Hart & Cheney for sinh, FreeBSD msun for asinh/acosh/atanh/log1p, Payne-Hanek
reduction above 2**29), with Go's operation order and Go's exactly folded constants; exp and log are
:func:`go_exp` / :func:`go_log`, which Go implements in assembly on amd64.
"""

from __future__ import annotations

import math
import struct
from decimal import Decimal, localcontext

from agent.engine.promql.values import go_exp, go_log

_PI_DIGITS = "3.14159265358979323846264338327950288419716939937510582097494459230781640628620899863"


def _folded() -> tuple[float, float]:
    """Go folds constant expressions exactly and rounds once: ``3*Pi/4`` and ``4/Pi``."""
    with localcontext() as ctx:
        ctx.prec = 80
        pi = Decimal(_PI_DIGITS)
        return float(3 * pi / 4), float(4 / pi)


PI = math.pi
PI_2 = math.pi / 2  # exact: halving commutes with rounding
PI_4 = math.pi / 4
PI3_4, FOUR_OVER_PI = _folded()
_PI4A = 7.85398125648498535156e-1  # Pi/4 in three parts
_PI4B = 3.77489470793079817668e-8
_PI4C = 2.69515142907905952645e-15
_REDUCE_THRESHOLD = float(1 << 29)
_SIN = (
    1.58962301576546568060e-10, -2.50507477628578072866e-8, 2.75573136213857245213e-6,
    -1.98412698295895385996e-4, 8.33333333332211858878e-3, -1.66666666666666307295e-1,
)  # fmt: skip
_COS = (
    -1.13585365213876817300e-11, 2.08757008419747316778e-9, -2.75573141792967388112e-7,
    2.48015872888517045348e-5, -1.38888888888730564116e-3, 4.16666666666665929218e-2,
)  # fmt: skip
_TAN_P = (-1.30936939181383777646e4, 1.15351664838587416140e6, -1.79565251976484877988e7)
_TAN_Q = (1.36812963470692954678e4, -1.32089234440210967447e6, 2.50083801823357915839e7, -5.38695755929454629881e7)


def _four_over_pi_bits() -> int:
    """4/pi with 64 * 19 fraction bits, as an integer (Go keeps the same digits in a table)."""
    # Machin: pi = 16 atan(1/5) - 4 atan(1/239), in fixed point with guard bits
    bits = 64 * 20 + 64
    one = 1 << bits

    def atan_inv(n: int) -> int:
        total, term, k, sign = 0, one // n, 1, 1
        n2 = n * n
        while term:
            total += sign * (term // k)
            term //= n2
            k += 2
            sign = -sign
        return total

    pi = 16 * atan_inv(5) - 4 * atan_inv(239)
    return ((4 << (2 * bits)) // pi) >> (bits - 64 * 19)  # 4/pi * 2**(64*19)


_M_PI4 = _four_over_pi_bits()
_M_PI4_DIGITS = [(_M_PI4 >> (64 * (19 - i))) & (2**64 - 1) for i in range(20)]
_U64 = 2**64 - 1


def _bits(x: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def _from_bits(b: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", b & _U64))[0]


def trig_reduce(x: float) -> tuple[int, float]:
    """Payne-Hanek reduction by pi/4 for x >= 2**29: (octant mod 8, remainder), as Go's trigReduce."""
    if x < PI_4:
        return 0, x
    ix = _bits(x)
    exp = ((ix >> 52) & 0x7FF) - 1023 - 52
    ix = (ix & ((1 << 52) - 1)) | (1 << 52)
    digit, shift = divmod(exp + 61, 64)
    d = _M_PI4_DIGITS

    def word(i: int) -> int:
        hi = (d[i] << shift) & _U64
        return hi | (d[i + 1] >> (64 - shift)) if shift else hi

    z0, z1, z2 = word(digit), word(digit + 1), word(digit + 2)
    z2hi = (z2 * ix) >> 64
    z1_full = z1 * ix
    z1hi, z1lo = z1_full >> 64, z1_full & _U64
    z0lo = (z0 * ix) & _U64
    lo_sum = z1lo + z2hi
    lo, carry = lo_sum & _U64, lo_sum >> 64
    hi = (z0lo + z1hi + carry) & _U64
    j = hi >> 61
    hi = ((hi << 3) & _U64) | (lo >> 61)
    lz = 64 - hi.bit_length()
    e = 1023 - (lz + 1)
    hi = ((hi << (lz + 1)) & _U64) | (lo >> (64 - (lz + 1)))
    hi >>= 64 - 52
    z = _from_bits(hi | (e << 52))
    if j & 1:
        j = (j + 1) & 7
        z -= 1
    return j, z * PI_4


def _reduce(x: float) -> tuple[int, float]:
    """Octant and remainder of x >= 0 (zeros mapped to the origin)."""
    if x >= _REDUCE_THRESHOLD:
        return trig_reduce(x)
    j = int(x * FOUR_OVER_PI)
    y = float(j)
    if j & 1:
        j += 1
        y += 1
    z = ((x - y * _PI4A) - y * _PI4B) - y * _PI4C
    return j, z


def _sin_poly(z: float, zz: float) -> float:
    s = _SIN
    return z + z * zz * ((((((s[0] * zz) + s[1]) * zz + s[2]) * zz + s[3]) * zz + s[4]) * zz + s[5])


def _cos_poly(zz: float) -> float:
    c = _COS
    return 1.0 - 0.5 * zz + zz * zz * ((((((c[0] * zz) + c[1]) * zz + c[2]) * zz + c[3]) * zz + c[4]) * zz + c[5])


def go_sin(x: float) -> float:
    if x == 0 or x != x:
        return x
    if math.isinf(x):
        return math.nan
    sign = x < 0
    x = abs(x)
    j, z = _reduce(x)
    j &= 7
    if j > 3:
        sign = not sign
        j -= 4
    zz = z * z
    y = _cos_poly(zz) if j in (1, 2) else _sin_poly(z, zz)
    return -y if sign else y


def go_cos(x: float) -> float:
    if x != x or math.isinf(x):
        return math.nan
    sign = False
    j, z = _reduce(abs(x))
    j &= 7
    if j > 3:
        j -= 4
        sign = not sign
    if j > 1:
        sign = not sign
    zz = z * z
    y = _sin_poly(z, zz) if j in (1, 2) else _cos_poly(zz)
    return -y if sign else y


def go_tan(x: float) -> float:
    if x == 0 or x != x:
        return x
    if math.isinf(x):
        return math.nan
    sign = x < 0
    j, z = _reduce(abs(x))
    zz = z * z
    if zz > 1e-14:
        p, q = _TAN_P, _TAN_Q
        y = z + z * (zz * (((p[0] * zz) + p[1]) * zz + p[2]) / ((((zz + q[0]) * zz + q[1]) * zz + q[2]) * zz + q[3]))
    else:
        y = z
    if j & 2:
        y = -1 / y
    return -y if sign else y


def _xatan(x: float) -> float:
    z = x * x
    z = z * ((((-8.750608600031904122785e-01 * z + -1.615753718733365076637e01) * z + -7.500855792314704667340e01)
              * z + -1.228866684490136173410e02) * z + -6.485021904942025371773e01) / (
        ((((z + 2.485846490142306297962e01) * z + 1.650270098316988542046e02) * z + 4.328810604912902668951e02)
         * z + 4.853903996359136964868e02) * z + 1.945506571482613964425e02)  # fmt: skip
    return x * z + x


_MOREBITS = 6.123233995736765886130e-17  # pi/2 = PI_2 + _MOREBITS
_TAN3PIO8 = 2.41421356237309504880


def _satan(x: float) -> float:
    if x <= 0.66:
        return _xatan(x)
    if x > _TAN3PIO8:
        return PI_2 - _xatan(1 / x) + _MOREBITS
    return PI_4 + _xatan((x - 1) / (x + 1)) + 0.5 * _MOREBITS


def go_atan(x: float) -> float:
    if x == 0:
        return x
    return _satan(x) if x > 0 else -_satan(-x)


def go_asin(x: float) -> float:
    if x == 0:
        return x
    sign = x < 0
    x = abs(x)
    if x > 1:
        return math.nan
    temp = math.sqrt(1 - x * x)
    temp = PI_2 - _satan(temp / x) if x > 0.7 else _satan(x / temp)
    return -temp if sign else temp


def go_acos(x: float) -> float:
    return PI_2 - go_asin(x)


def go_atan2(y: float, x: float) -> float:
    if y != y or x != x:
        return math.nan
    if y == 0:
        if x >= 0 and math.copysign(1.0, x) > 0:
            return math.copysign(0.0, y)
        return math.copysign(PI, y)
    if x == 0:
        return math.copysign(PI_2, y)
    if math.isinf(x):
        if x > 0:
            return math.copysign(PI_4, y) if math.isinf(y) else math.copysign(0.0, y)
        return math.copysign(PI3_4, y) if math.isinf(y) else math.copysign(PI, y)
    if math.isinf(y):
        return math.copysign(PI_2, y)
    q = go_atan(y / x)
    if x < 0:
        return q + PI if q <= 0 else q - PI
    return q


def go_sinh(x: float) -> float:
    """Go 1.19's Sinh: the Hart & Cheney series below 0.5, else from one Exp (``(e - 1/e) * 0.5``)."""
    sign = x < 0
    x = abs(x) if sign else x
    if x > 21:
        temp = go_exp(x) * 0.5
    elif x > 0.5:
        ex = go_exp(x)
        temp = (ex - 1 / ex) * 0.5
    else:
        sq = x * x
        temp = (((-0.2630563213397497062819489e02 * sq + -0.2894211355989563807284660366e04) * sq
                 + -0.8991272022039509355398013511e05) * sq + -0.6307673640497716991184787251e06) * x  # fmt: skip
        temp = temp / (((sq + -0.173678953558233699533450911e03) * sq + 0.1521517378790019070696485176e05) * sq
                       + -0.6307673640497716991212077277e06)  # fmt: skip
    return -temp if sign else temp


def go_cosh(x: float) -> float:
    """Go 1.19's Cosh: ``(e + 1/e) * 0.5`` with e = Exp(|x|)."""
    x = abs(x)
    if x > 21:
        return go_exp(x) * 0.5
    ex = go_exp(x)
    return (ex + 1 / ex) * 0.5


_MAXLOG = 8.8029691931113054295988e01


def go_tanh(x: float) -> float:
    z = abs(x)
    if z > 0.5 * _MAXLOG:
        return -1.0 if x < 0 else 1.0
    if z >= 0.625:
        s = go_exp(2 * z)
        z = 1 - 2 / (s + 1)
        return -z if x < 0 else z
    if x == 0:
        return x
    s = x * x
    return x + x * s * (
        (-9.64399179425052238628e-1 * s + -9.92877231001918586564e1) * s + -1.61468768441708447952e3
    ) / (((s + 1.12811678491632931402e2) * s + 2.23548839060100448583e3) * s + 4.84406305325125486048e3)


_LN2 = 6.93147180559945286227e-01


def go_log1p(x: float) -> float:
    """Go's math.Log1p (FreeBSD s_log1p.c)."""
    if x < -1 or x != x:
        return math.nan
    if x == -1:
        return -math.inf
    if x == math.inf:
        return math.inf
    absx = abs(x)
    f = 0.0
    iu = 0
    k = 1
    if absx < 4.142135623730950488017e-01:
        if absx < 1.0 / (1 << 29):
            if absx < 1.0 / (1 << 54):
                return x
            return x - x * x * 0.5
        if x > -2.928932188134524755992e-01:
            k = 0
            f = x
            iu = 1
    c = 0.0
    if k != 0:
        if absx < float(1 << 53):
            u = 1.0 + x
            iu = _bits(u)
            k = (iu >> 52) - 1023
            c = 1.0 - (u - x) if k > 0 else x - (u - 1.0)
            c /= u
        else:
            u = x
            iu = _bits(u)
            k = (iu >> 52) - 1023
            c = 0.0
        iu &= 0x000FFFFFFFFFFFFF
        if iu < 0x0006A09E667F3BCD:
            u = _from_bits(iu | 0x3FF0000000000000)
        else:
            k += 1
            u = _from_bits(iu | 0x3FE0000000000000)
            iu = (0x0010000000000000 - iu) >> 2
        f = u - 1.0
    hfsq = 0.5 * f * f
    ln2_hi, ln2_lo = 6.93147180369123816490e-01, 1.90821492927058770002e-10
    fk = float(k)
    if iu == 0:
        if f == 0:
            if k == 0:
                return 0.0
            c += fk * ln2_lo
            return fk * ln2_hi + c
        r = hfsq * (1.0 - 0.66666666666666666 * f)
        if k == 0:
            return f - r
        return fk * ln2_hi - ((r - (fk * ln2_lo + c)) - f)
    s = f / (2.0 + f)
    z = s * s
    r = 1.531383769920937332e-01 + z * 1.479819860511658591e-01  # Horner from the inside out, same order
    r = 2.222219843214978396e-01 + z * (1.818357216161805012e-01 + z * r)
    r = z * (6.666666666666735130e-01 + z * (3.999999999940941908e-01 + z * (2.857142874366239149e-01 + z * r)))
    if k == 0:
        return f - (hfsq - s * (hfsq + r))
    return fk * ln2_hi - ((hfsq - (s * (hfsq + r) + (fk * ln2_lo + c))) - f)


def go_asinh(x: float) -> float:
    if x != x or math.isinf(x):
        return x
    sign = x < 0
    x = abs(x)
    if x > float(1 << 28):
        temp = go_log(x) + _LN2
    elif x > 2:
        temp = go_log(2 * x + 1 / (math.sqrt(x * x + 1) + x))
    elif x < 1.0 / (1 << 28):
        temp = x
    else:
        temp = go_log1p(x + x * x / (1 + math.sqrt(1 + x * x)))
    return -temp if sign else temp


def go_acosh(x: float) -> float:
    if x < 1 or x != x:
        return math.nan
    if x == 1:
        return 0.0
    if x >= float(1 << 28):
        return go_log(x) + _LN2
    if x > 2:
        return go_log(2 * x - 1 / (x + math.sqrt(x * x - 1)))
    t = x - 1
    return go_log1p(t + math.sqrt(2 * t + t * t))


def go_atanh(x: float) -> float:
    if x < -1 or x > 1 or x != x:
        return math.nan
    if x == 1:
        return math.inf
    if x == -1:
        return -math.inf
    sign = x < 0
    x = abs(x)
    if x < 1.0 / (1 << 28):
        temp = x
    elif x < 0.5:
        temp = x + x
        temp = 0.5 * go_log1p(temp + temp * x / (1 - x))
    else:
        temp = 0.5 * go_log1p((x + x) / (1 - x))
    return -temp if sign else temp
