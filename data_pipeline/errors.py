"""The error every data command reports with exit code 2 (``data_pipeline.spec`` re-exports it)."""


class DataError(ValueError):
    """Bad input data or spec. The message names the file and, where known, the column."""
