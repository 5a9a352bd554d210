"""Errors that mean "the user asked for something we cannot do".

The CLI turns every `UserError` into one line on stderr and exit status 2, so
messages must say what was wrong and what to do instead.
"""


class UserError(Exception):
    """Bad input from the user: a config value, a file, a dataset."""


class ConfigError(UserError):
    """A config key or value is invalid."""


class DataError(UserError):
    """A dataset is missing, unreadable or malformed."""


class DataNotFound(DataError):
    """A dataset's files are not where they were looked for (as opposed to present but damaged)."""


class DownloadFailed(DataError):
    """Fetching a dataset failed (no network, a server error); `reason` says why, in a few words."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ArtifactError(UserError):
    """A run artifact is missing, unreadable, tampered or unsafe to load."""


class NumericalError(UserError):
    """NaN or inf appeared in the synthetic set, the trigger or a loss."""


class Interrupted(UserError):
    """SIGINT/SIGTERM stopped a run after it wrote a checkpoint."""


def unknown_name(kind: str, name: str, accepted: "list[str] | tuple[str, ...]") -> ConfigError:
    """The standard message for an unknown registry name."""
    return ConfigError(f"unknown {kind} {name!r}; accepted: {', '.join(sorted(accepted))}")


def one_line_error(err: BaseException) -> str:
    """`Type: first line of the message` (at most 200 characters), for logs and JSON."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"
