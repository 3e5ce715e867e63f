"""Pure raster-grid geometry: no I/O, no Dask, no xarray.

A :class:`Grid` is a north-up raster: a CRS, an affine transform whose origin is the
upper-left *corner* of pixel (0, 0), and a shape. Pixel indices are ``(row, col)``;
map coordinates are ``(x, y)``. :class:`PixelWindow` names a rectangle of pixels so
that row/col order can never be confused with x/y.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from affine import Affine
from pyproj import CRS, Geod

from .errors import GridError, InputError

#: Metres per degree of longitude at the equator and of latitude (approximate pixel sizes).
M_PER_DEG_LON = 111_320.0
M_PER_DEG_LAT = 110_574.0


@dataclass(frozen=True)
class PixelWindow:
    """Rows ``row0 .. row0+rows-1`` and columns ``col0 .. col0+cols-1`` of a grid."""

    row0: int
    col0: int
    rows: int
    cols: int

    @property
    def row1(self) -> int:
        return self.row0 + self.rows

    @property
    def col1(self) -> int:
        return self.col0 + self.cols

    def slices(self) -> tuple[slice, slice]:
        return slice(self.row0, self.row1), slice(self.col0, self.col1)

    def intersection(self, other: PixelWindow) -> PixelWindow | None:
        r0, c0 = max(self.row0, other.row0), max(self.col0, other.col0)
        r1, c1 = min(self.row1, other.row1), min(self.col1, other.col1)
        if r1 <= r0 or c1 <= c0:
            return None
        return PixelWindow(r0, c0, r1 - r0, c1 - c0)

    def shift(self, drow: int, dcol: int) -> PixelWindow:
        return PixelWindow(self.row0 + drow, self.col0 + dcol, self.rows, self.cols)


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid.

    ``transform`` maps (col, row) of pixel *corners* to map (x, y); ``x0, y0`` is the
    upper-left corner of the grid, ``dx > 0`` and ``dy < 0`` the pixel steps in CRS units.
    """

    crs: str
    x0: float
    y0: float
    dx: float
    dy: float
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.dx <= 0 or self.dy >= 0:
            raise GridError(
                f"grid steps must be dx > 0 and dy < 0 (north-up), got dx={self.dx}, dy={self.dy}; "
                "flip the raster so that row 0 is the northern edge"
            )
        if self.height <= 0 or self.width <= 0:
            raise GridError(f"grid shape must be positive, got {self.height} x {self.width}")

    @classmethod
    def from_transform(cls, crs: str, transform: Affine, height: int, width: int, *, source: str = "raster") -> Grid:
        """Build a grid from an affine transform, refusing rotated or skewed ones."""
        if abs(transform.b) > 1e-12 * abs(transform.a) or abs(transform.d) > 1e-12 * abs(transform.e):
            raise InputError(
                f"{source}: the grid is rotated or skewed (transform {tuple(transform)[:6]}); "
                "insar-slide needs a north-up grid: warp it first, e.g. "
                "`gdalwarp -t_srs EPSG:XXXX in.tif out.tif`"
            )
        if transform.e > 0:
            raise InputError(
                f"{source}: the grid is south-up (positive y step {transform.e}); "
                "flip it north-up first (e.g. `gdalwarp` without options does this)"
            )
        return cls(crs, transform.c, transform.f, transform.a, transform.e, int(height), int(width))

    @property
    def transform(self) -> Affine:
        return Affine(self.dx, 0.0, self.x0, 0.0, self.dy, self.y0)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def key(self) -> str:
        """CRS, transform and shape as one string: a window's stored detections and an update
        history are valid only on the grid with the same key."""
        return f"{self.crs}|{tuple(self.transform)[:6]}|{self.shape}"

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) of the outer pixel edges."""
        return (self.x0, self.y0 + self.height * self.dy, self.x0 + self.width * self.dx, self.y0)

    def x_coords(self) -> np.ndarray:
        """Cell-centre x of every column."""
        return self.x0 + (np.arange(self.width) + 0.5) * self.dx

    def y_coords(self) -> np.ndarray:
        """Cell-centre y of every row."""
        return self.y0 + (np.arange(self.height) + 0.5) * self.dy

    def window_grid(self, win: PixelWindow) -> Grid:
        return Grid(self.crs, self.x0 + win.col0 * self.dx, self.y0 + win.row0 * self.dy,
                    self.dx, self.dy, win.rows, win.cols)

    def is_geographic(self) -> bool:
        return CRS.from_user_input(self.crs).is_geographic

    def same_crs(self, other: Grid) -> bool:
        return CRS.from_user_input(self.crs) == CRS.from_user_input(other.crs)

    def aligned_with(self, other: Grid, *, tol: float = 1e-3) -> bool:
        """Same CRS and pixel size, and pixel edges on a common lattice (within ``tol`` px)."""
        if not self.same_crs(other):
            return False
        if not (math.isclose(self.dx, other.dx, rel_tol=1e-6) and math.isclose(self.dy, other.dy, rel_tol=1e-6)):
            return False
        fx = (other.x0 - self.x0) / self.dx
        fy = (other.y0 - self.y0) / self.dy
        return abs(fx - round(fx)) < tol and abs(fy - round(fy)) < tol

    def offset_of(self, other: Grid) -> tuple[int, int]:
        """(row, col) of ``other``'s pixel (0, 0) in this grid; grids must be aligned."""
        return (round((other.y0 - self.y0) / self.dy), round((other.x0 - self.x0) / self.dx))

    def union(self, other: Grid) -> Grid:
        """The smallest grid on this grid's lattice that holds both (grids must be aligned)."""
        if not self.aligned_with(other):
            raise GridError("grids are not aligned; reproject them onto one grid first")
        r, c = self.offset_of(other)
        r0, c0 = min(0, r), min(0, c)
        r1, c1 = max(self.height, r + other.height), max(self.width, c + other.width)
        return Grid(self.crs, self.x0 + c0 * self.dx, self.y0 + r0 * self.dy, self.dx, self.dy, r1 - r0, c1 - c0)

    def area_km2(self) -> float:
        """Area of the grid's footprint in km² (geodesic for geographic CRSs)."""
        xmin, ymin, xmax, ymax = self.bounds
        crs = CRS.from_user_input(self.crs)
        if crs.is_geographic:
            geod = Geod(ellps="WGS84")
            lons = [xmin, xmax, xmax, xmin]
            lats = [ymin, ymin, ymax, ymax]
            area, _ = geod.polygon_area_perimeter(lons, lats)
            return abs(area) / 1e6
        unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        return (xmax - xmin) * (ymax - ymin) * unit * unit / 1e6

    def pixel_size_m(self) -> tuple[float, float]:
        """Approximate pixel size in metres (dx, |dy|), at the grid centre for geographic CRSs."""
        dx, dy = self.pixel_size_m_rows(np.array([self.height / 2 - 0.5]))
        return (float(dx[0]), dy)

    def pixel_size_m_rows(self, rows: np.ndarray) -> tuple[np.ndarray, float]:
        """Pixel size in metres (dx per row, |dy|) at the centres of pixel ``rows`` (row indices):
        dx shrinks with the cosine of the latitude on a geographic grid, constant otherwise."""
        rows = np.asarray(rows, dtype=float)
        crs = CRS.from_user_input(self.crs)
        if crs.is_geographic:
            lat = np.radians(self.y0 + (rows + 0.5) * self.dy)
            return self.dx * M_PER_DEG_LON * np.cos(lat), abs(self.dy) * M_PER_DEG_LAT
        unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        return np.full(rows.shape, self.dx * unit), abs(self.dy) * unit

    def centres_inside(self, geom: object, win: PixelWindow, *, at_least_one: bool = False) -> np.ndarray:
        """Which pixels of ``win`` have their centre inside ``geom`` (a shapely geometry in this
        grid's CRS): bool (rows, cols). ``at_least_one``: for a polygon smaller than a pixel, the
        pixel under its centroid (clamped to ``win``) instead of none."""
        import shapely

        xs = self.x0 + (np.arange(win.col0, win.col1) + 0.5) * self.dx
        ys = self.y0 + (np.arange(win.row0, win.row1) + 0.5) * self.dy
        shapely.prepare(geom)
        inside = shapely.contains_xy(geom, xs[None, :], ys[:, None])
        if at_least_one and not inside.any() and win.rows and win.cols:
            c = geom.centroid  # type: ignore[attr-defined]
            inside[min(win.rows - 1, max(0, int((c.y - self.y0) / self.dy) - win.row0)),
                   min(win.cols - 1, max(0, int((c.x - self.x0) / self.dx) - win.col0))] = True
        return inside

    def window_of_bounds(self, xmin: float, ymin: float, xmax: float, ymax: float) -> PixelWindow:
        """Pixels that touch the map rectangle, clipped to the grid (may be empty → rows/cols 0)."""
        c0 = max(0, math.floor((xmin - self.x0) / self.dx))
        c1 = min(self.width, math.ceil((xmax - self.x0) / self.dx))
        r0 = max(0, math.floor((ymax - self.y0) / self.dy))
        r1 = min(self.height, math.ceil((ymin - self.y0) / self.dy))
        return PixelWindow(r0, c0, max(0, r1 - r0), max(0, c1 - c0))


def chunk_sizes(n: int, chunk: int) -> tuple[int, ...]:
    """Dask-style chunk sizes along one axis of ``n`` pixels (ragged last chunk kept)."""
    return tuple(min(chunk, n - i) for i in range(0, n, chunk))


def chunk_windows(shape: tuple[int, int], chunk: int) -> list[PixelWindow]:
    """Windows of ``chunk`` × ``chunk`` pixels tiling ``shape`` exactly (ragged last row/col kept)."""
    h, w = shape
    return [PixelWindow(r, c, min(chunk, h - r), min(chunk, w - c))
            for r in range(0, h, chunk) for c in range(0, w, chunk)]
