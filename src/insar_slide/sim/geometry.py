"""Terrain derivatives of the simulator (pure numpy); the viewing geometry it shares with the
decomposition lives in :mod:`insar_slide.core.geometry` (re-exported here)."""

from __future__ import annotations

import numpy as np

from ..core.geometry import downslope_motion, look_direction, los_unit_vector

__all__ = ["downslope_motion", "gradient_en", "look_direction", "los_unit_vector"]


def gradient_en(z_halo: np.ndarray, pixel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """dz/deast, dz/dnorth of the interior of ``z_halo`` (a window with a 1-pixel halo).

    Central differences only, so the result for a pixel depends on its neighbours alone and is
    identical whichever window it is computed in.
    """
    dz_dcol = (z_halo[1:-1, 2:] - z_halo[1:-1, :-2]) / (2 * pixel_size)
    dz_drow = (z_halo[2:, 1:-1] - z_halo[:-2, 1:-1]) / (2 * pixel_size)
    return dz_dcol, -dz_drow
