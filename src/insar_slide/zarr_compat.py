"""Compatibility shims for the zarr this project pins (applied once, on import)."""

from __future__ import annotations

from typing import Any


def zarr_under_optimize() -> None:
    """zarr 3.1's ``GroupMetadata.from_dict`` pops ``node_type`` inside an ``assert``; under
    ``python -O`` (PYTHONOPTIMIZE) the pop vanishes and no v3 group opens (TypeError). Where
    that is so, drop the key before zarr's own code sees it — the only zarr assert with a side
    effect (checked in 3.1.6) — so insar-slide runs under -O like without it."""
    if __debug__:
        return
    from zarr.core.group import GroupMetadata

    try:
        GroupMetadata.from_dict({"zarr_format": 3, "node_type": "group", "attributes": {}})
        return  # a zarr without the bug
    except TypeError:
        pass
    original = GroupMetadata.from_dict.__func__  # type: ignore[attr-defined]

    def from_dict(cls: type[GroupMetadata], data: dict[str, Any]) -> GroupMetadata:
        data = dict(data)
        if data.pop("node_type", None) not in ("group", None):
            raise ValueError("not a group's metadata")
        return original(cls, data)

    GroupMetadata.from_dict = classmethod(from_dict)  # type: ignore[method-assign,assignment]


zarr_under_optimize()
