"""The one exception type the library raises for user-facing errors.

The CLI catches :class:`RaydetectError`, prints its message on one line and exits
with :attr:`RaydetectError.exit_code`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class RaydetectError(Exception):
    """An error caused by the user's input or environment, with a message that says how to fix it."""

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
