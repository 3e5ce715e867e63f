"""insar-slide: find slow-moving landslides in InSAR deformation-rate mosaics."""

from __future__ import annotations

from .api import decompose, detect, simulate
from .errors import InsarSlideError
from .mosaic import open_basin
from .query import open_inventory, slide_rates, slide_table, slides_in_bbox
from .version import __version__

__all__ = ["InsarSlideError", "__version__", "decompose", "detect", "open_basin", "open_inventory", "simulate", "slide_rates",
           "slide_table", "slides_in_bbox"]
