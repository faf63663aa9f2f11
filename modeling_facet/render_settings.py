"""The rendered image layout shared by the configuration, the renderer, the image processor and the dataset builders.

A leaf module: it imports nothing but the standard library, so that loading a [`FacetVLMConfig`] does not pull in
torch, the rasterizer or the scan readers.
"""

from __future__ import annotations


# Image channels each render channel stacks to, in the order the channels are named.
CHANNEL_WIDTHS = {"shaded": 1, "depth": 1, "normals": 3, "texture": 3}
DEFAULT_CHANNELS = ("shaded", "depth", "normals")
# (yaw, pitch) in degrees: frontal, then the head turned 20 degrees either way.
DEFAULT_VIEWS = ((0.0, 0.0), (20.0, 0.0), (-20.0, 0.0))
# Robust face radius in the canonical frame, where a view spans [-1, 1] (see rendering.normalize_scan).
DEFAULT_FACE_SIZE = 0.65


def check_channel(name: str) -> str:
    if name not in CHANNEL_WIDTHS:
        raise ValueError(f"Unknown render channel {name!r}; choose from {sorted(CHANNEL_WIDTHS)}")
    return name


def channel_count(channels) -> int:
    """Number of image channels that ``channels`` (names from :data:`CHANNEL_WIDTHS`) stack to."""
    return sum(CHANNEL_WIDTHS[check_channel(name)] for name in channels)


def channel_offset(channels, name: str) -> int:
    """Index of the first image channel of render channel ``name`` in the stack of ``channels``."""
    channels = list(channels)
    return sum(CHANNEL_WIDTHS[check_channel(other)] for other in channels[: channels.index(name)])


def canonical_views(views) -> list:
    """``views`` as a list of ``[yaw, pitch]`` floats (the form configs and image processors store)."""
    return [[float(yaw), float(pitch)] for yaw, pitch in views]
