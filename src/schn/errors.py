"""The one exception type for mistakes a user can cause (bad path, wrong format, bad option).

The CLI prints its message as a single line and exits non-zero; everything else is a bug and
keeps its traceback.
"""


class SchnError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""


def one_line(exc: BaseException) -> str:
    """The user-facing line of an error. DataLoader workers re-raise a SchnError with the
    worker's traceback folded into the message; its last line holds the original message."""
    text = str(exc).strip()
    if "Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if last.startswith(("schn.errors.SchnError", "SchnError")) else last
    return " ".join(text.split()) or exc.__class__.__name__
