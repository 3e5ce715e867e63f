"""Viewing geometry and terrain derivatives (pure numpy)."""

from __future__ import annotations

import numpy as np


def los_unit_vector(heading_deg: float, incidence_deg: float) -> np.ndarray:
    """Ground-to-satellite unit vector (east, north, up) of a right-looking SAR.

    The look direction's azimuth is ``heading + 90°``; a LOS rate is the displacement rate
    dotted with this vector, so motion toward the satellite is positive (contract 1).
    """
    h = np.radians(heading_deg)
    i = np.radians(incidence_deg)
    return np.array([-np.sin(i) * np.cos(h), np.sin(i) * np.sin(h), np.cos(i)])


def look_direction(heading_deg: float) -> np.ndarray:
    """Horizontal unit vector (east, north) from the satellite toward the ground."""
    a = np.radians(heading_deg + 90.0)
    return np.array([np.sin(a), np.cos(a)])


def gradient_en(z_halo: np.ndarray, pixel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """dz/deast, dz/dnorth of the interior of ``z_halo`` (a window with a 1-pixel halo).

    Central differences only, so the result for a pixel depends on its neighbours alone and is
    identical whichever window it is computed in.
    """
    dz_dcol = (z_halo[1:-1, 2:] - z_halo[1:-1, :-2]) / (2 * pixel_size)
    dz_drow = (z_halo[2:, 1:-1] - z_halo[:-2, 1:-1]) / (2 * pixel_size)
    return dz_dcol, -dz_drow


def downslope_motion(ge: np.ndarray, gn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit (east, north, up) vector of motion down the local slope (parallel to the surface)."""
    g = np.hypot(ge, gn)
    slope = np.arctan(g)
    safe = np.where(g > 0, g, 1.0)
    he, hn = -ge / safe, -gn / safe
    return he * np.cos(slope), hn * np.cos(slope), -np.sin(slope)
