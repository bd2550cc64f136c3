"""How the evaluation names its MLflow metrics and tags, in one place: the trials write them, the dashboards read them.

Standard library only, so the torch-free dashboards can import it.
"""

# The eval EMA's metrics: `ema_fd_1nfe` beside the online `fd_1nfe` (best_ema_..., the dashboards' `ema_fd` family).
EMA_PREFIX = "ema_"
# `metric_definition.fd`: what a family's numbers are (network, reference, sampler), on every run that logs it.
DEFINITION_PREFIX = "metric_definition."


def nfe_metric(family: str, nfe: int) -> str:
    """The metric of a family at an NFE: `mmd2_1nfe`, `ema_fd_4nfe`, `fid50000_1nfe`."""
    return f"{family}_{nfe}nfe"


def definition_tag(family: str) -> str:
    """The tag that says what a family's numbers are: `metric_definition.fd`."""
    return DEFINITION_PREFIX + family
