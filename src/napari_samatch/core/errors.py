"""Errors a user can act on.

Every error raised on purpose by the core is a ``SamatchError``: its message is one or two sentences
that name the problem and say what to do. The CLI prints it without a traceback; the plugin shows it
as a notification.
"""

from __future__ import annotations


class SamatchError(Exception):
    """Base class: the message is meant for the user, not the developer."""


class DataError(SamatchError, ValueError):
    """An image, a label array or a file cannot be used as given."""


class CheckpointError(SamatchError):
    """A model checkpoint is missing, corrupt, unsafe or of the wrong architecture."""


class ConfigError(SamatchError, ValueError):
    """A setting is unknown or out of range."""


class StorageError(SamatchError, OSError):
    """A file could not be written (missing folder, no permission, disk full)."""


class ResourceError(SamatchError):
    """The machine ran out of something a run needs (device or host memory)."""


class DataWarning(UserWarning):
    """The data was used, but not quite as given (e.g. a 0/255 mask read as 0/1): the CLI prints it even
    with ``--quiet``."""
