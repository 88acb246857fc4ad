"""Errors a user can cause and fix: they end in one clear line and exit code 2."""


class UserError(Exception):
    """A problem with the user's input, files or environment, with the fix in its message."""
