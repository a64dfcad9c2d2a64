"""A wall-clock deadline that long computations honour: the budget of ``python -m gracheck.report --budget``.

A caller sets a deadline for a block (:func:`deadline`); code that can stop cleanly asks
:func:`expired` at its own safe points. The trainers (:func:`gracheck.train.train`,
:func:`gracheck.ensemble.train_ensemble`) ask after every optimiser step: once the deadline has
passed they write a checkpoint of that step and raise :class:`DeadlineReached`, so a rerun with
``resume=True`` (the model cache always resumes) continues exactly where they stopped. Code without
checkpoints never looks at the deadline; the budget machinery then does not start it unless its
planned time fits (:mod:`gracheck.experiments._plan`).

Time is :func:`time.monotonic` (immune to clock changes). Deadlines nest: the inner block gets the
earlier of the two. The deadline is a :mod:`contextvars` variable, so threads started inside the
block do not inherit it (nothing here starts any).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import time
from collections.abc import Iterator

__all__ = ["DeadlineReached", "deadline", "expired", "remaining", "active", "at"]

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("gracheck_deadline", default=None)


class DeadlineReached(Exception):
    """A computation stopped cleanly because the deadline passed.

    ``what`` names it (e.g. "ensemble of 7 beta-vae models"), ``step``/``total`` are its progress
    (completed steps), ``checkpoint`` the file written at ``step`` (None when the computation keeps
    no checkpoints). A rerun with the same cache continues from ``checkpoint``.
    """

    def __init__(self, what: str, step: int | None = None, total: int | None = None,
                 checkpoint: str | None = None) -> None:
        self.what, self.step, self.total, self.checkpoint = what, step, total, checkpoint
        where = f" after step {step} of {total}" if step is not None and total is not None else ""
        ck = f"; checkpoint {checkpoint}" if checkpoint else "; nothing kept"
        super().__init__(f"deadline reached: {what} stopped{where}{ck}")


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[float]:
    """Run the block with a deadline ``seconds`` from now (the earlier one wins inside an outer block).

    Yields the absolute deadline (:func:`time.monotonic` units). ``seconds`` must be a finite number ≥ 0.
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"seconds: expected a finite number >= 0, got {seconds!r}")
    t = time.monotonic() + float(seconds)
    outer = _DEADLINE.get()
    token = _DEADLINE.set(t if outer is None else min(t, outer))
    try:
        yield _DEADLINE.get()
    finally:
        _DEADLINE.reset(token)


def active() -> bool:
    """Whether a deadline is set for the running code."""
    return _DEADLINE.get() is not None


def at() -> float | None:
    """The absolute deadline (:func:`time.monotonic` units), or None."""
    return _DEADLINE.get()


def remaining() -> float | None:
    """Seconds left before the deadline (negative once it passed), or None when none is set."""
    t = _DEADLINE.get()
    return None if t is None else t - time.monotonic()


def expired() -> bool:
    """Whether a deadline is set and has passed."""
    t = _DEADLINE.get()
    return t is not None and time.monotonic() >= t
