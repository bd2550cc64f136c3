"""Metric-name prefixes the evaluation writes and the dashboards read, in one place.

Standard library only, so the torch-free dashboards can import it.
"""

# The eval EMA's metrics: `ema_fd_1nfe` beside the online `fd_1nfe` (best_ema_..., the dashboards' `ema_fd` family).
EMA_PREFIX = "ema_"
