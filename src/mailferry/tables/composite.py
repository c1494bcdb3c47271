"""`unionmap:{type:name, ...}` and `pipemap:{type:name, ...}`: tables made of tables.

As Postfix's dict_union and dict_pipe:
- unionmap asks every table and joins what they find with commas, in order;
  not found only when none finds the key. A temporary failure of any table
  is the answer.
- pipemap asks the first table, the second with the first's answer, and so
  on; the last answer is the result. Not found (or a failure) anywhere ends it.
Both are pattern tables when their first table is (it receives only whole
keys in address lookups), as Postfix takes the first table's match flags.
"""

from __future__ import annotations

from mailferry.syntax import split_list
from mailferry.tables.base import Table, TableError
from mailferry.tables.result import FOUND, MISSING, NOT_FOUND, LookupResult, found


def parse_members(type_name: str, name: str, what: str) -> list[str]:
    """The members of "{a, b, ...}", with Postfix's error for anything else."""
    problem = TableError(f'bad syntax: "{type_name}:{name}"; need "{type_name}:{{{what}...}}"')
    if not (name.startswith("{") and name.endswith("}") and _balanced(name)):
        raise problem
    members = split_list(name[1:-1])
    if not members:
        raise problem
    return members


def _balanced(text: str) -> bool:
    """The first "{" closes at the last character, as Postfix's balpar() demands."""
    depth = 0
    for index, char in enumerate(text):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return index == len(text) - 1
    return False


class _CompositeTable(Table):
    def __init__(self, name: str):
        from mailferry.tables import open_table  # the members may be of any type
        super().__init__(name)
        specs = parse_members(self.type_name, name, "type:name")
        if any(":" not in spec for spec in specs):
            raise TableError(f'bad syntax: "{self.type_name}:{name}"; need "{self.type_name}:{{type:name...}}"')
        self.tables: list[Table] = []
        try:
            for spec in specs:
                self.tables.append(open_table(spec))
        except TableError:
            self.close()
            raise
        self.is_pattern = self.tables[0].is_pattern
        self.folds_keys = self.tables[0].folds_keys
        self.warnings = [text for table in self.tables for text in getattr(table, "warnings", ())]

    @property
    def answers_now(self) -> bool:
        return all(table.answers_now for table in self.tables)

    def lookup_now(self, key: str) -> LookupResult:
        if not self.answers_now:
            return super().lookup_now(key)  # raises: a member only answers asynchronously
        coroutine = self.lookup(key)
        try:
            coroutine.send(None)  # every member answers at once, so the coroutine never waits
        except StopIteration as done:
            return done.value
        coroutine.close()
        raise AssertionError(f"{self.spec}: a member waited")

    def close(self) -> None:
        for table in self.tables:
            table.close()


class UnionTable(_CompositeTable):
    type_name = "unionmap"

    async def lookup(self, key: str) -> LookupResult:
        values = []
        for table in self.tables:
            result = await table.lookup(key)
            if result.status == FOUND:
                values.append(result.value)
            elif result.status != NOT_FOUND:
                return result
        return found(",".join(values)) if values else MISSING


class PipeTable(_CompositeTable):
    type_name = "pipemap"

    async def lookup(self, key: str) -> LookupResult:
        for table in self.tables:
            result = await table.lookup(key)
            if result.status != FOUND:
                return result
            key = result.value
        return found(key)
