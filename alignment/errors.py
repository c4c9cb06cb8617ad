"""One error type for bad user input.

Every problem a user can fix (a malformed file, a missing field, an unknown recipe key, a wrong type)
is raised as :class:`AlignError`, which names the file, the line (or record) and the field. The CLI
prints its message and exits with status 2: no traceback, nothing half-written.
"""

from __future__ import annotations

from pathlib import Path


class AlignError(Exception):
    """A user-facing error that names where the problem is.

    Args:
        message: what is wrong and, where possible, how to fix it.
        file: the file the problem is in.
        line: 1-based line in the file (JSONL, YAML; CSV counts the header as line 1) or record index.
        field: the dotted field or key at fault.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file if self.line is None else f"{self.file}:{self.line}")
        elif self.line is not None:
            where.append(f"record {self.line}")
        if self.field:
            where.append(f"field '{self.field}'")
        return f"{', '.join(where)}: {self.message}" if where else self.message
