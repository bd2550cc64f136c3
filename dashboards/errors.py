"""Exceptions and warnings of the dashboards: each message says what to do next."""


class DashboardError(Exception):
    """Base class: the CLI turns any of these into one line on stderr and exit code 2."""


class TrackingStoreNotFound(DashboardError):
    """The tracking URI names a local SQLite file that does not exist."""


class ExperimentNotFound(DashboardError):
    """No MLflow experiment of that name."""


class SweepNotFound(DashboardError):
    """No parent (sweep) run matches the sweep name or run id."""


class NoTrialRuns(DashboardError):
    """The selection exists but holds no trial (child) runs."""


class MissingMetricsWarning(UserWarning):
    """Some trial runs lack metrics the schema promises; their cells skip them."""
