"""One exception root. Every message says what is wrong and how to fix it."""

from __future__ import annotations


class InsarSlideError(Exception):
    """Root of all errors raised on purpose by insar-slide (CLI exit code 1 or 2)."""

    exit_code = 1


class ConfigError(InsarSlideError):
    """A config file or option is invalid: unknown key, wrong type, impossible value."""

    exit_code = 2


class InputError(InsarSlideError):
    """An input product cannot be used as it is (no CRS, rotated grid, corrupt, all NaN...)."""


class UnitsError(InputError):
    """Rates whose magnitude does not fit the declared units."""


class GridError(InputError):
    """Grids that cannot be mosaicked or stacked without reprojection."""


class StoreError(InsarSlideError):
    """A basin mosaic store that is missing, incomplete or not a mosaic."""
