"""The package's errors and the exit codes the command line maps them to."""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3


class MlflowSparkToolsError(Exception):
    """Base of every error this package raises on purpose."""

    exit_code = EXIT_FAILURE


class UsageError(MlflowSparkToolsError):
    """The caller asked for something invalid: fix the arguments or configuration."""

    exit_code = EXIT_USAGE


class InvalidConfigError(UsageError):
    """A configuration file, environment variable or flag holds an invalid value."""


class InvalidIdentifierError(UsageError):
    """A database, table or column name is not safe to put into SQL."""


class ExperimentNotFoundError(UsageError):
    """An experiment id or name does not exist on the tracking server."""


class RunNotFoundError(UsageError):
    """A run id or name does not exist on the tracking server."""


class InvalidStoreError(UsageError):
    """The failed-run store cannot be used safely (a folder replaced by a link, for example)."""


class RunNotSavedError(MlflowSparkToolsError):
    """A run the tracking server did not take could not be written to the failed-run store
    either: it is neither logged nor saved for replay."""


class TrackingServerError(MlflowSparkToolsError):
    """The tracking server could not be reached or answered with an error."""


class EngineError(MlflowSparkToolsError):
    """The Spark engine could not be started or lacks a capability (for example Delta)."""


class MissingDependencyError(MlflowSparkToolsError, ImportError):
    """A package this one needs is not installed, or older than the oldest supported release."""
