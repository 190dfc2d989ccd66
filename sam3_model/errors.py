"""Exception types for user mistakes: one per kind, each message says what, where, and what to do.

The CLI turns any `Sam3AdaptError` into one line on stderr and exit code 2; other exceptions are bugs.
"""


class Sam3AdaptError(Exception):
    """Base class of every error caused by user input rather than a bug."""


class ModelLoadError(Sam3AdaptError):
    """A model id, directory or preset could not be loaded."""


class ImageError(Sam3AdaptError):
    """An image could not be read or decoded."""


class PromptError(Sam3AdaptError):
    """A prompt (phrase or exemplar box) is invalid."""


class ConfigError(Sam3AdaptError):
    """A configuration value is invalid."""


class TargetError(Sam3AdaptError):
    """Training targets (boxes, masks) are malformed."""


class DatasetError(Sam3AdaptError):
    """A dataset or prediction file is malformed."""
