"""User-facing errors: a mistake the user can fix, reported by the CLI as one line, no traceback."""

from __future__ import annotations


class RaeflowError(Exception):
    """A user mistake or an unusable input; the message says what to do about it."""


class ConfigError(RaeflowError):
    """Settings that cannot work together (bad option values, unknown names)."""


class SourceError(RaeflowError):
    """An input URI that is missing, unreadable, or not of the kind asked for."""


class BundleError(RaeflowError):
    """A model bundle that is missing, tampered with, or does not fit the data."""


class JobError(RaeflowError):
    """A batch or cluster job that ran but did not do what was asked (too many rejects, failed job)."""


class ClusterError(RaeflowError):
    """A Ray cluster that cannot be reached, or that lacks what the command asks for (GPUs)."""
