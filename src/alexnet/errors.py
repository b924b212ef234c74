"""The project's own error types: what the CLI turns into one-line messages (anything else is a bug)."""

from __future__ import annotations

__all__ = ["UserError", "FlagError", "InputTooSmall", "TrainingDiverged", "ModeUnavailable", "first_line"]


class UserError(Exception):
    """A problem with the user's input (file, data, folder) that the CLI reports in one line, exit status 1."""


class FlagError(UserError):
    """A flag's value, or a combination of flags, that the command refuses whatever the files hold: exit
    status 2, as for the flags argparse itself refuses."""


class InputTooSmall(ValueError):
    """An image batch smaller than the model's minimum input size (the message names the minimum)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class ModeUnavailable(RuntimeError):
    """A fast mode cannot run here (wrong device, missing compiler or package); the reason is the message."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first non-blank line of an error's message (the runtimes' errors run over many), else its type."""
    line = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return line[:limit]
