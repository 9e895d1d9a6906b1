"""The one exception type for mistakes a user can cause (bad path, wrong format, bad option).

The CLI prints its message as a single line and exits non-zero; everything else is a bug and
keeps its traceback.
"""


class SchnError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""
