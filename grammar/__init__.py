"""Recognising the openGauss ``CLEAN CONNECTION`` statement in PostgreSQL query strings.

The proxy depends on exactly these names; see each module for its contract.
"""

from grammar.clean_connection import CleanConnection, parse_clean_connection, parse_statement
from grammar.errors import GrammarError
from grammar.statements import (
    Statement,
    find_clean_statements,
    might_contain_clean,
    split_statements,
)

__all__ = [
    "CleanConnection",
    "GrammarError",
    "Statement",
    "find_clean_statements",
    "might_contain_clean",
    "parse_clean_connection",
    "parse_statement",
    "split_statements",
]
