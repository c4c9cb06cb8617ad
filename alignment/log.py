"""What ``align`` says: one logger tree under ``alignment``, plain message lines, levels for ``-q`` and ``-v``.

Messages are the bare text (no level, time or logger name) on standard output, the lines ``print`` wrote before
this module, so the default output is unchanged; errors go to standard error, as the ``error:`` lines always did.
The handler is installed on first use, so phases run from Python (tests, notebooks) print at INFO without any
set-up. ``-q`` keeps warnings and errors; ``-v`` adds debug lines.

Every line is passed through :func:`mask_credentials` on its way out: a database URL with a password is printed
with the password as ``***`` even where a message was built from the URL as given.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterator

ROOT = "alignment"

# scheme://user:password@ -> scheme://user:***@ (what SQLAlchemy's render_as_string(hide_password=True) writes);
# the password runs to the last @ before the host, so an unencoded @ in it does not leave its tail behind
_CREDENTIALS = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@]*):[^\s/]*@")


def mask_credentials(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URL in it replaced by ``***``."""
    return _CREDENTIALS.sub(r"\1:***@", text)


class _LineHandler(logging.Handler):
    """Each record as its message alone, on the stream that is current when it is written: pytest's capsys (and
    anything else that swaps ``sys.stdout``) must see it, which a handler holding the stream it started with
    would not."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr if record.levelno >= logging.ERROR else sys.stdout
            stream.write(mask_credentials(record.getMessage()) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def get_logger(name: str = "") -> logging.Logger:
    """The ``alignment`` logger, or ``alignment.<name>`` below it; installs the line handler on first use."""
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, _LineHandler) for h in root.handlers):
        root.addHandler(_LineHandler())
        # Lines are the command's output, not diagnostics: the root logger (which a library or a user's
        # basicConfig may give a handler) must not print them a second time.
        root.propagate = False
        if root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
    return root.getChild(name) if name else root


def level_for(quiet: bool = False, verbose: bool = False) -> int:
    """The level of ``-q`` (WARNING), ``-v`` (DEBUG) or neither (INFO); ``-q`` wins when both are given."""
    return logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO


@contextlib.contextmanager
def verbosity(level: int) -> Iterator[logging.Logger]:
    """Log at ``level`` inside the block, then restore the level before it (one command in a process that runs
    others after it, as tests do, must not leave its ``-q`` behind)."""
    root = get_logger()
    before = root.level
    root.setLevel(level)
    try:
        yield root
    finally:
        root.setLevel(before)


def output(line: str) -> None:
    """A line the command was asked for (a listing, a report, a password shown once): on standard output at
    every level, ``-q`` included, since hiding it would leave the command without its result."""
    sys.stdout.write(mask_credentials(line) + "\n")
    sys.stdout.flush()
