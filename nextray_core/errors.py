"""Exceptions a user can cause. Each message says what is wrong and what to do about it.

The dashboard and the CLI catch ``NextRayError`` and show its message; anything else is a bug.
"""

from __future__ import annotations


class NextRayError(Exception):
    """Base class for errors caused by user input (files, folders, options)."""


class ImageReadError(NextRayError, ValueError):
    """A file could not be read as a radiograph (not an image, corrupt, too large, ...)."""


class NotARadiographWarning(UserWarning):
    """The image decoded fine but looks like a colour photograph rather than a radiograph."""


class DatasetError(NextRayError, ValueError):
    """A dataset folder or index table is missing, malformed or inconsistent."""


class CheckpointError(NextRayError, ValueError):
    """A checkpoint is missing, foreign, tampered with or does not match its card."""


class ConfigError(NextRayError, ValueError):
    """An option or configuration value is unknown or out of range."""
