"""insar-slide: find slow-moving landslides in InSAR deformation-rate mosaics."""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import InsarSlideError  # noqa: E402
from .mosaic import open_basin  # noqa: E402

__all__ = ["InsarSlideError", "__version__", "open_basin"]
