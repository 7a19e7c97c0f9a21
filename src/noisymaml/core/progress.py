"""Progress lines for long stage work (decoding a dataset's images, scoring test episodes), so
that a stage that works for minutes is not silent: a line after the first step, then one at
each further quarter of the work."""

from __future__ import annotations

from collections.abc import Callable


class Progress:
    """Call with the count done so far; logs `<what>: done/total <unit>` when it is worth a line."""

    def __init__(self, what: str, total: int, unit: str, log: Callable[[str], None] = print):
        self.what, self.total, self.unit, self.log = what, total, unit, log
        self.quarters_logged = -1

    def __call__(self, done: int) -> None:
        quarter = 4 * done // max(self.total, 1)
        if quarter > self.quarters_logged:
            self.quarters_logged = quarter
            self.log(f"{self.what}: {done}/{self.total} {self.unit}")
