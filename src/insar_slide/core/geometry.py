"""Viewing geometry and the fall line (pure numpy): what the LOS decomposition and the
simulator share, so that the production decomposition imports nothing from the simulator.

A line-of-sight (LOS) unit vector ``l = (east, north, up)`` points from the ground to the
satellite; a LOS rate is the ground velocity dotted with it, positive toward the satellite
(DESIGN.md contract 1). The simulator projects slide motion on the same vector that
:mod:`insar_slide.decompose` inverts.
"""

from __future__ import annotations

import numpy as np

#: Pseudo LOS vectors of the EGMS L3 components (a ``vertical`` track reads ``v · up``, an
#: ``east_west`` track ``v · east``): the decomposition treats them as tracks with these vectors.
COMPONENT_VECTORS: dict[str, tuple[float, float, float]] = {"vertical": (0.0, 0.0, 1.0), "east_west": (1.0, 0.0, 0.0)}


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


def los_vectors(heading: object, incidence: object) -> np.ndarray:
    """(k, 3) ground-to-satellite unit vectors (east, north, up) of k tracks from heading and
    incidence (degrees, sequences); a row is NaN where either angle is unknown (NaN)."""
    h = np.asarray(heading, dtype=float).reshape(-1)
    i = np.asarray(incidence, dtype=float).reshape(-1)
    out = np.full((len(h), 3), np.nan)
    for k in range(len(h)):
        if np.isfinite(h[k]) and np.isfinite(i[k]):
            out[k] = los_unit_vector(float(h[k]), float(i[k]))
    return out


def downslope_motion(ge: np.ndarray, gn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit (east, north, up) vector of motion down the local slope (parallel to the surface),
    from the terrain gradient ``ge`` = dz/deast, ``gn`` = dz/dnorth (m/m); (0, 0, 0) on flat ground."""
    g = np.hypot(ge, gn)
    slope = np.arctan(g)
    safe = np.where(g > 0, g, 1.0)
    he, hn = -ge / safe, -gn / safe
    return he * np.cos(slope), hn * np.cos(slope), -np.sin(slope)
