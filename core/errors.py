"""Errors a user can act on. Each message names the file, the feature or column, and what was expected."""


class MlopsError(Exception):
    """Base class for errors reported to the user without a traceback."""


class DataError(MlopsError, ValueError):
    """The input data is unusable: empty, missing columns, wrong types, nothing in the window."""


class SchemaAnomaliesError(DataError):
    """The data breaks the schema; `report` lists each feature and its problem."""

    def __init__(self, message: str, report: str = "") -> None:
        super().__init__(message)
        self.report = report


class RejectedRowsError(DataError):
    """Too many rows were rejected for a few bad rows: the feed itself is broken; `report` says how."""

    def __init__(self, message: str, report: str = "") -> None:
        super().__init__(message)
        self.report = report


class ModelNotBlessedError(MlopsError):
    """The candidate model did not pass evaluation, so it is not pushed."""
