"""Errors the user can cause: they end in exit 3 with one line, never a traceback."""


class UsageError(Exception):
    """The command line asks for something impossible."""
