"""The user-error family: bad input that the user can fix (exit status 2).

Everything the command line reports as "mscon: error: ..." with exit status 2
derives from :class:`UserError`; any other exception is a bug and keeps its
traceback (exit status 1). The message is one line naming the file, key,
column or value and what to do. The classes also derive from ``ValueError``,
so library callers that catch ``ValueError`` keep working.

Example:
    >>> issubclass(ConfigError, UserError) and issubclass(ConfigError, ValueError)
    True
"""

from __future__ import annotations

__all__ = ["UserError", "ConfigError", "DataError", "RunError", "NonFiniteLossError"]


class UserError(ValueError):
    """Bad input the user can fix; the message names what and where (exit status 2)."""


class ConfigError(UserError):
    """A config file or override is invalid; the message names the file and key."""


class DataError(UserError):
    """Bad input data: the one-line message names the file, column or key."""


class RunError(UserError):
    """A run folder is missing, incomplete or in the way."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss (exit status 3)."""
