"""The synthetic world's ten shapes as signed distance functions, which rendering anti-aliases."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["shape_sdf"]


def _regular(n: int, radius: float, phase_deg: float = 0.0) -> list[tuple[float, float]]:
    """Counter-clockwise vertices of a regular ``n``-gon."""
    angles = [math.radians(phase_deg) + 2 * math.pi * k / n for k in range(n)]
    return [(radius * math.cos(a), radius * math.sin(a)) for a in angles]


def _polygon(x: Tensor, y: Tensor, vertices: list[tuple[float, float]]) -> Tensor:
    """Signed distance of a convex polygon (counter-clockwise vertices): exact inside, a close bound outside."""
    edges = []
    for (x0, y0), (x1, y1) in zip(vertices, vertices[1:] + vertices[:1], strict=True):
        length = math.hypot(x1 - x0, y1 - y0)
        nx, ny = (y1 - y0) / length, (x0 - x1) / length  # outward normal of a counter-clockwise edge
        edges.append(x * nx + y * ny - (x0 * nx + y0 * ny))
    return torch.stack(edges).amax(0)


def _box(x: Tensor, y: Tensor, half_w: float, half_h: float) -> Tensor:
    return torch.maximum(x.abs() - half_w, y.abs() - half_h)


def _star(x: Tensor, y: Tensor, inner: float = 0.45) -> Tensor:
    """Five-pointed star as the union of five convex kites (tail, inner vertex, tip, inner vertex).

    Each tail sits behind the centre so neighbouring kites overlap: kites that merely touched would
    leave a dark anti-aliasing seam where both distances are zero.
    """
    kites = []
    for k in range(5):
        tip = math.pi / 2 + 2 * math.pi * k / 5
        side = [(inner * math.cos(tip + s * math.pi / 5), inner * math.sin(tip + s * math.pi / 5)) for s in (-1, 1)]
        tail = (-0.3 * math.cos(tip), -0.3 * math.sin(tip))
        kites.append(_polygon(x, y, [tail, side[0], (math.cos(tip), math.sin(tip)), side[1]]))
    return torch.stack(kites).amin(0)


def shape_sdf(name: str, x: Tensor, y: Tensor) -> Tensor:
    """Signed distance (negative inside) of the shape ``name`` at points ``(x, y)``; extent about the unit disc."""
    r = (x * x + y * y).sqrt()
    if name == "circle":
        return r - 0.95
    if name == "square":
        return _box(x, y, 0.7, 0.7)
    if name == "triangle":
        return _polygon(x, y, _regular(3, 1.0, 90.0))
    if name == "star":
        return _star(x, y)
    if name == "cross":
        return torch.minimum(_box(x, y, 0.95, 0.28), _box(x, y, 0.28, 0.95))
    if name == "ring":
        return (r - 0.68).abs() - 0.28
    if name == "diamond":
        return _polygon(x, y, [(1.0, 0.0), (0.0, 0.55), (-1.0, 0.0), (0.0, -0.55)])
    if name == "hexagon":
        return _polygon(x, y, _regular(6, 0.98))
    if name == "crescent":
        return torch.maximum(r - 0.95, 0.72 - ((x - 0.5) ** 2 + y * y).sqrt())
    return _box(x, y, 0.98, 0.24)  # bar
