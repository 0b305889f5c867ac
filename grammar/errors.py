"""Errors raised by the grammar package.

A :class:`GrammarError` is what PostgreSQL would report for the same input: SQLSTATE 42601
(syntax_error), a message worded like the server's (``syntax error at or near "X"``,
``syntax error at end of input``, ``invalid Unicode escape`` ...) and a cursor
``position``: 1-based, counted in characters over the *whole* query string, which is what
the ``P`` field of an ErrorResponse carries.
"""

from __future__ import annotations


class GrammarError(Exception):
    """A syntax error in a statement the proxy parses itself (SQLSTATE 42601)."""

    sqlstate = "42601"

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message, position)
        self.message = message
        self.position = position

    def __str__(self) -> str:
        return f"{self.message} (position {self.position})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GrammarError):
            return NotImplemented
        return (self.message, self.position) == (other.message, other.position)

    def __hash__(self) -> int:
        return hash((self.message, self.position))
