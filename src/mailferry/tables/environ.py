"""`environ:NAME`: the process environment as a table (Postfix's dict_env).

The key is a variable name, folded to lower case first as Postfix folds
it (so `PATH` finds `path`, not `PATH`); the table name is not used.
"""

from __future__ import annotations

import os

from mailferry.tables.base import Table
from mailferry.tables.result import MISSING, LookupResult, found


class EnvironTable(Table):
    type_name = "environ"

    def lookup_now(self, key: str) -> LookupResult:
        value = os.environ.get(key.lower())
        return MISSING if value is None else found(value)
