"""Errors that the command line reports as one line, without a traceback."""


class UntokError(Exception):
    """A problem with the user's input, files or options; the message names the fix."""


class ConfigError(UntokError):
    """Invalid configuration, recipe or override."""


class DataError(UntokError):
    """Missing, empty or corrupt data."""


class CheckpointError(UntokError):
    """Missing, corrupt or mismatched checkpoint."""
