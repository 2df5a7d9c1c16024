"""Errors a user sees as one line: where (file, line or record) and what is wrong."""

from __future__ import annotations


class ZhongjingError(Exception):
    """Any error meant for the user; the CLI prints it as one line and exits 2."""


class ConfigError(ZhongjingError):
    pass


class RangeError(ConfigError, ValueError):
    """A config value out of its range, raised by a config's __post_init__. Also a ValueError, so that `from_dict`
    names the section it sits in; built any other way (a CLI flag set afterwards) it is still one line."""


class DataError(ZhongjingError):
    """Bad input record. `where` is 'line 12' or 'record 3'; `path` the file."""

    def __init__(self, reason: str, path: str | None = None, where: str | None = None):
        # one line whatever the data held: a key or value quoted into the reason may contain line breaks
        reason = str(reason).replace("\r", "\\r").replace("\n", "\\n")
        self.reason, self.path, self.where = reason, path, where
        loc = ":".join(str(x) for x in (path, where) if x)
        super().__init__(f"{loc}: {reason}" if loc else reason)


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message cut to its first line (at most `limit` characters), or its type's name if empty:
    the part of a library's error worth quoting in a one-line message."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


class MissingExtra(ZhongjingError):
    pass


def require(module: str, extra: str):
    """Import an optional dependency or fail with the pip command that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(
            f"'{module}' is needed for this command: pip install 'zhongjing[{extra}]' ({e})"
        ) from None
