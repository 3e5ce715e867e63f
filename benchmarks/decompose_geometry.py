"""Measurement: the error of the LOS decomposition from using one incidence per track.

    python benchmarks/decompose_geometry.py

:mod:`insar_slide.decompose` takes each track's LOS vector from one heading and incidence (the
scene centre's, as the products record them). Across a Sentinel-1 IW swath the incidence runs
from about 30° to 46°. This sweeps slides moving down planar slopes (slope 10°–40°, every
aspect in steps of 15°), projects their motion on the *true* LOS vectors (Sentinel-1 headings
−12.5° / −167.3°, incidence centre 40.1° / 39.9° offset by ±3.5° or ±7°), decomposes with the
*centre* vectors, and reports the error of ``v_up``, ``v_east`` and ``v_slope`` against the
decomposition with the true vectors (so the north-south leakage, present in both, cancels), as a
share of the slide's speed: median and maximum over the sweep, for both tracks off the same
way and in opposite ways (the worst case: the two geometries bend apart).

Writes ``benchmarks/results/decompose_geometry.json`` (under a second).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from insar_slide.core.geometry import downslope_motion, los_vectors
from insar_slide.decompose import MIN_SENSITIVITY, solve_slope, solve_up_east

HEADING = (-12.5, -167.3)
CENTRE = (40.1, 39.9)


def sweep(offset_asc: float, offset_desc: float) -> dict[str, dict[str, float]]:
    slope, aspect = np.meshgrid(np.radians([10.0, 20.0, 30.0, 40.0]), np.radians(np.arange(0.0, 360.0, 15.0)))
    ge, gn = -np.tan(slope) * np.sin(aspect), -np.tan(slope) * np.cos(aspect)
    d = np.stack(downslope_motion(ge.ravel(), gn.ravel()))  # (3, n) unit motion, speed 1
    true = los_vectors(HEADING, [CENTRE[0] + offset_asc, CENTRE[1] + offset_desc])
    centre = los_vectors(HEADING, CENTRE)
    rates = true @ d
    out: dict[str, dict[str, float]] = {}
    up_c, east_c, _ = solve_up_east(rates, centre, max_gain=np.inf)
    up_t, east_t, _ = solve_up_east(rates, true, max_gain=np.inf)
    s_c, sens = solve_slope(rates, centre, ge.ravel(), gn.ravel(), min_sensitivity=0.0)
    s_t, _ = solve_slope(rates, true, ge.ravel(), gn.ravel(), min_sensitivity=0.0)
    seen = sens >= MIN_SENSITIVITY
    facing_ew = np.isin(np.round(np.degrees(aspect.ravel())), [90.0, 270.0])
    for name, err, keep in (("v_up", np.abs(up_c - up_t), np.ones_like(seen)), ("v_east", np.abs(east_c - east_t), np.ones_like(seen)),
                            ("v_slope", np.abs(s_c - s_t), seen)):
        out[name] = {"median_pct": round(100 * float(np.median(err[keep])), 1), "max_pct": round(100 * float(err[keep].max()), 1),
                     "max_pct_east_or_west_facing": round(100 * float(err[keep & facing_ew].max()), 1)}
    return out


def main() -> None:
    cases = {f"asc {a:+.1f}°, desc {b:+.1f}°": sweep(a, b)
             for a, b in ((3.5, 3.5), (-3.5, -3.5), (7.0, 7.0), (-7.0, -7.0), (7.0, -7.0), (-7.0, 7.0))}
    for k, v in cases.items():
        print(f"{k:>24}  " + "  ".join(f"{n}: median {e['median_pct']:4.1f} %  max {e['max_pct']:4.1f} %" for n, e in v.items()))
    out = Path(__file__).parent / "results" / "decompose_geometry.json"
    out.write_text(json.dumps({"headings": HEADING, "centre_incidence": CENTRE, "error_share_of_speed": cases}, indent=1) + "\n")


if __name__ == "__main__":
    main()
