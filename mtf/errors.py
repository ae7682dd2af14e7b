"""The base class of the errors a user can fix, so entry points can tell them apart.

`python -m mtf.launch` (and the other entry points) print a `UserError`'s message alone:
it already names the setting or file and the fix. Anything else is a bug or an
environment failure and keeps its full traceback.
"""


class UserError(Exception):
    """A mistake in a setting, a file or the data; the message names it and the fix."""


class SettingError(UserError, ValueError):
    """A gin binding, flag or config field with a value mtf cannot use."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder that a setting names does not exist."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that does not fit the model; the message names what and how to fix it."""
