"""Deterministic, seamless random fields on the global pixel lattice (pure numpy).

Every value is a pure function of ``(seed, stream, global row, global col)``: a field computed
for one big window or for many small ones is bit-for-bit the same, so a basin can be generated
chunk by chunk, in any order, on any worker. Nothing here keeps state.

- :func:`hash_uniform` — counter-based random numbers (SplitMix64 finaliser) in [-1, 1).
- :func:`spline_grid` / :func:`spline_points` — value noise: random lattice values smoothed by a
  uniform cubic B-spline (C² continuous, 4×4 support, no global prefilter), evaluated with a
  fixed operation order so that the grid and point versions agree.
- :func:`fbm_grid` / :func:`fbm_points` — sums of octaves with amplitude ∝ spacing**hurst:
  a power-law (fractal) spectrum, as in terrain and atmospheric turbulence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
# Standard deviation of unit-variance value noise after B-spline smoothing, averaged over
# sub-pixel positions (measured once over 9e6 pixels; uniform lattice values of variance 1/3).
SPLINE_STD = 0.2765


def _mix(z: Any) -> Any:
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash_uniform(seed: int, stream: int, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Uniform numbers in [-1, 1) (float64) for integer lattice coordinates ``iy``, ``ix``."""
    with np.errstate(over="ignore"):
        key = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLD + np.uint64(stream & 0xFFFFFFFF))
        z = _mix(key ^ (np.asarray(iy).astype(np.int64).astype(np.uint64) * _GOLD))
        z = _mix(z ^ (np.asarray(ix).astype(np.int64).astype(np.uint64) + _GOLD))
    return (z >> np.uint64(11)).astype(np.float64) * (2.0 / 2**53) - 1.0


def hash_normal(seed: int, stream: int, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Standard-normal numbers per lattice point (Box–Muller on two hashed uniforms)."""
    u1 = (hash_uniform(seed, stream, iy, ix) + 1.0) / 2.0
    u2 = (hash_uniform(seed, stream + 0x5BD1E995, iy, ix) + 1.0) / 2.0
    return np.sqrt(-2.0 * np.log(1.0 - u1)) * np.cos(2 * np.pi * u2)


def _bspline_weights(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    t2 = t * t
    t3 = t2 * t
    w0 = (1.0 - t) ** 3 / 6.0
    w1 = (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0
    w2 = (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0
    w3 = t3 / 6.0
    return w0, w1, w2, w3


def _lattice_pos(idx: np.ndarray, spacing: float, shift: float) -> tuple[np.ndarray, np.ndarray]:
    u = (np.asarray(idx, dtype=np.float64) + 0.5) / spacing + shift
    i = np.floor(u)
    return i.astype(np.int64), u - i


def spline_grid(seed: int, stream: int, rows: np.ndarray, cols: np.ndarray, spacing: float) -> np.ndarray:
    """Value noise on the grid ``rows × cols`` (global pixel indices), lattice every ``spacing`` px.

    Returns float64 ``(len(rows), len(cols))`` with zero mean and std ≈ ``SPLINE_STD``.
    """
    shift = (hash_uniform(seed, stream, np.array(7), np.array(11)) + 1.0) * 0.5 * 1000.0
    iy, ty = _lattice_pos(rows, spacing, float(shift))
    ix, tx = _lattice_pos(cols, spacing, float(shift))
    ly0, ly1 = int(iy.min()) - 1, int(iy.max()) + 3
    lx0, lx1 = int(ix.min()) - 1, int(ix.max()) + 3
    lat = hash_uniform(seed, stream, np.arange(ly0, ly1)[:, None], np.arange(lx0, lx1)[None, :])
    wx = _bspline_weights(tx)
    jx = ix - lx0 - 1
    t = wx[0][None, :] * lat[:, jx]
    t = t + wx[1][None, :] * lat[:, jx + 1]
    t = t + wx[2][None, :] * lat[:, jx + 2]
    t = t + wx[3][None, :] * lat[:, jx + 3]
    wy = _bspline_weights(ty)
    jy = iy - ly0 - 1
    out = wy[0][:, None] * t[jy, :]
    out = out + wy[1][:, None] * t[jy + 1, :]
    out = out + wy[2][:, None] * t[jy + 2, :]
    out = out + wy[3][:, None] * t[jy + 3, :]
    return out


def spline_points(seed: int, stream: int, rows: np.ndarray, cols: np.ndarray, spacing: float) -> np.ndarray:
    """The same field as :func:`spline_grid`, at scattered points (``rows``, ``cols`` same shape)."""
    rows = np.asarray(rows)
    cols = np.asarray(cols)
    shift = (hash_uniform(seed, stream, np.array(7), np.array(11)) + 1.0) * 0.5 * 1000.0
    iy, ty = _lattice_pos(rows, spacing, float(shift))
    ix, tx = _lattice_pos(cols, spacing, float(shift))
    wx = _bspline_weights(tx)
    wy = _bspline_weights(ty)
    out = np.zeros(rows.shape, dtype=np.float64)
    for a in range(4):
        ly = iy - 1 + a
        t = wx[0] * hash_uniform(seed, stream, ly, ix - 1)
        t = t + wx[1] * hash_uniform(seed, stream, ly, ix)
        t = t + wx[2] * hash_uniform(seed, stream, ly, ix + 1)
        t = t + wx[3] * hash_uniform(seed, stream, ly, ix + 2)
        out = out + wy[a] * t if a else wy[a] * t
    return out


def octave_spacings(largest: float, smallest: float) -> list[float]:
    """Spacings halving from ``largest`` down to no less than ``smallest`` (in pixels)."""
    out = []
    s = float(largest)
    while s >= smallest * 0.999:
        out.append(s)
        s /= 2.0
    return out


def _fbm_weights(spacings: Sequence[float], hurst: float) -> np.ndarray:
    w = np.array([s**hurst for s in spacings])
    return w / np.sqrt(np.sum(w**2)) / SPLINE_STD


def fbm_grid(seed: int, stream: int, rows: np.ndarray, cols: np.ndarray, *, largest: float, smallest: float, hurst: float) -> np.ndarray:
    """Unit-variance fractal noise (float64) on a grid; octaves from ``largest`` to ``smallest`` px."""
    sp = octave_spacings(largest, smallest)
    w = _fbm_weights(sp, hurst)
    out = np.zeros((len(rows), len(cols)))
    for k, (s, wk) in enumerate(zip(sp, w, strict=True)):
        out += wk * spline_grid(seed, stream * 64 + k, rows, cols, s)
    return out


def fbm_points(seed: int, stream: int, rows: np.ndarray, cols: np.ndarray, *, largest: float, smallest: float, hurst: float) -> np.ndarray:
    sp = octave_spacings(largest, smallest)
    w = _fbm_weights(sp, hurst)
    out = np.zeros(np.shape(rows))
    for k, (s, wk) in enumerate(zip(sp, w, strict=True)):
        out += wk * spline_points(seed, stream * 64 + k, rows, cols, s)
    return out
