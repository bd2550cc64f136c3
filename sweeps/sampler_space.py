"""The sampler grid of a frozen checkpoint: NFE x sample style x time grid (x sampling guidance).

Time grids form one family for every NFE, the power schedule t_j = (1 - j/n)^rho, j = 0..n
(t_0 = 1 is noise, t_n = 0 data; rho = 1 is the uniform grid every trial evaluates with, rho > 1
spends more steps near the data, rho < 1 near the noise). At 2 NFE the family has one free time,
the middle one, t_1 = 2^-rho: `--mid-times m` is the 2-NFE grid (1, m, 0), i.e. rho = log m / log 1/2.
By default the grids above 2 NFE use those same rhos, so each row of a table keeps its schedule
across NFEs: for every even n the halfway step t_{n/2} sits at m (0.3 -> 4 NFE grid 1, 0.607, 0.3, 0.09, 0).
1 NFE has only the grid (1, 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dashboards import sampler_table as schema
from trainables.rcgm import ranges
from trainables.rcgm.checks import RealRange
from trainables.rcgm.errors import ConfigError
from trainables.rcgm.sampling import check_times
from trainables.rcgm.sampling_guidance import SAMPLING_GUIDANCE

MID_TIME = RealRange(0.0, 1.0, low_open=True, high_open=True)
TIME_POWER = RealRange(0.0, 100.0, low_open=True)
SIGNIFICANT = 6  # digits a time keeps: the value sampled with is the value logged


def rounded(value: float) -> float:
    """value to SIGNIFICANT digits (0.5 ** (log 0.3 / log 0.5) is 0.30000000000000004)."""
    return float(f"{value:.{SIGNIFICANT}g}")


def power_of_mid_time(mid: float) -> float:
    """The rho whose 2-NFE power grid has its middle time at mid: 2^-rho = mid."""
    return math.log(mid) / math.log(0.5)


def power_times(nfe: int, rho: float) -> tuple[float, ...]:
    """t_j = (1 - j/nfe)^rho for j = 0..nfe, from 1 down to exactly 0."""
    return tuple(rounded((1.0 - j / nfe) ** rho) for j in range(nfe + 1))


@dataclass(frozen=True)
class SamplerSetting:
    """One grid point: how many steps, which sampler, at which times, with which sampling guidance."""

    nfe: int
    style: str
    times: tuple[float, ...]
    time_power: float | None  # the schedule's rho; None at 1 NFE, whose only grid is (1, 0)
    guidance: float

    @property
    def times_text(self) -> str:
        """'1,0.3,0': the grid as logged and shown."""
        return ",".join(f"{t:g}" for t in self.times)

    @property
    def key(self) -> str:
        """'2nfe-few-t1,0.3,0-w1': unique within a checkpoint's grid, stable across reruns."""
        return f"{self.nfe}nfe-{self.style}-t{self.times_text}-w{self.guidance:g}"

    def params(self) -> dict[str, str]:
        """The setting as MLflow params (names from the dashboards' schema, which reads them back)."""
        power = "" if self.time_power is None else f"{self.time_power:.4g}"
        return {schema.NFE: str(self.nfe), schema.STYLE: self.style, schema.TIMES: self.times_text,
                schema.TIME_POWER: power or "none", schema.GUIDANCE: f"{self.guidance:g}"}


def _unique(values) -> tuple:
    """Each value once (0.5 and 0.50 are one grid point): numbers sorted, names in the order the method lists them."""
    values = set(values)
    styles = [s for s in ranges.SAMPLE_STYLE.choices if s in values]
    return tuple(styles) if styles and len(styles) == len(values) else tuple(sorted(values))


def parse_values(text: str, kind, flag: str, accepts) -> tuple:
    """'0.3,0.5' -> (0.3, 0.5), each checked by accepts; refused naming flag (e.g. --mid-times)."""
    field = flag.removeprefix("--").replace("-", "_")
    try:
        values = [kind(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise ConfigError(field, text, f"comma-separated {kind.__name__} values", flag=flag) from None
    if not values:
        raise ConfigError(field, text, "at least one value", flag=flag)
    try:
        return _unique(accepts.check(field, v) for v in values)
    except ConfigError as err:
        raise err.with_flag(flag) from None


@dataclass(frozen=True)
class SamplerGrid:
    """The grid's axes as given on the command line, checked; `settings()` lists its points."""

    nfes: tuple[int, ...]
    styles: tuple[str, ...]
    mid_times: tuple[float, ...]
    time_powers: tuple[float, ...]
    guidances: tuple[float, ...]

    @classmethod
    def from_flags(cls, nfe: str, styles: str, mid_times: str, time_power: str | None, guidance: str) -> "SamplerGrid":
        """Parse and check every axis; a bad value is refused naming its flag."""
        mids = parse_values(mid_times, float, "--mid-times", MID_TIME)
        powers = (parse_values(time_power, float, "--time-power", TIME_POWER) if time_power is not None
                  else _unique(power_of_mid_time(m) for m in mids))
        grid = cls(parse_values(nfe, int, "--nfe", ranges.NFE), parse_values(styles, str, "--styles", ranges.SAMPLE_STYLE),
                   mids, powers, parse_values(guidance, float, "--guidance", SAMPLING_GUIDANCE))
        for n in grid.nfes:
            for rho in grid.time_powers if n > 2 else ():
                try:
                    check_times(power_times(n, rho), n)
                except ConfigError:
                    raise ConfigError("time_power", rho, f"a power whose {n}-NFE grid (1 - j/{n})^rho keeps {n + 1} "
                                      "distinct times (a smaller rho)", flag="--time-power") from None
        return grid

    def time_grids(self, nfe: int) -> list[tuple[tuple[float, ...], float | None]]:
        """(times, rho) of every grid at this NFE."""
        if nfe == 1:
            return [((1.0, 0.0), None)]
        if nfe == 2:
            return [((1.0, m, 0.0), power_of_mid_time(m)) for m in self.mid_times]
        return [(power_times(nfe, rho), rho) for rho in self.time_powers]

    def settings(self) -> list[SamplerSetting]:
        """Every point: NFE, then times, then style, then guidance (the table's rows, then its columns)."""
        points = [SamplerSetting(n, style, times, rho, w)
                  for n in self.nfes for times, rho in self.time_grids(n) for style in self.styles for w in self.guidances]
        # Two powers that round to the same times are one point.
        return list({p.key: p for p in points}.values())
