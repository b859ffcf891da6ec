"""Errors the searcher raises on purpose, and the check of a query box.

The servicer maps them to gRPC codes: `InvalidQueryError` -> INVALID_ARGUMENT,
`QueryDeadlineError` -> DEADLINE_EXCEEDED.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Box = tuple[float, float, float, float]


class SearchEngineError(Exception):
    """Base of the errors the engine raises on purpose."""


class InvalidQueryError(SearchEngineError, ValueError):
    """The request itself is wrong (bad image, bad box, top_k out of range); `.reason` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class QueryDeadlineError(SearchEngineError, TimeoutError):
    """The caller's deadline ran out before the work was done."""


def validate_box(box: Sequence[float] | None, width: int, height: int) -> Box | None:
    """Check a query box against the image it refers to; None stays None."""
    if box is None:
        return None
    if len(box) != 4:
        raise InvalidQueryError("bad-box", f"a box needs 4 numbers x0,y0,x1,y1; got {len(box)}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(np.isfinite([x0, y0, x1, y1])):
        raise InvalidQueryError("bad-box", f"box ({x0}, {y0}, {x1}, {y1}) has a non-finite coordinate")
    if x0 >= x1 or y0 >= y1:
        raise InvalidQueryError(
            "bad-box", f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty: need x0 < x1 and y0 < y1"
        )
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise InvalidQueryError(
            "bad-box",
            f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {width}x{height} image; "
            f"coordinates are pixels of the sent image, 0 <= x0 < x1 <= {width}, 0 <= y0 < y1 <= {height}",
        )
    return (x0, y0, x1, y1)
