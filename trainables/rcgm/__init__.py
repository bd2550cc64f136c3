"""The method layer (torch only): RCGM objective, MeanFlow baseline, target model, schedules, sampler."""

from trainables.rcgm.errors import ConfigError
from trainables.rcgm.meanflow import MeanFlowObjective
from trainables.rcgm.objective import OBJECTIVES, PLACEMENTS, RCGMObjective, build_objective
from trainables.rcgm.sampling import STYLES, sample
from trainables.rcgm.schedules import SCHEDULES, TimeSchedule, build_time_schedule
from trainables.rcgm.target import TargetModel

__all__ = [
    "OBJECTIVES", "PLACEMENTS", "SCHEDULES", "STYLES", "ConfigError", "MeanFlowObjective", "RCGMObjective",
    "TargetModel", "TimeSchedule", "build_objective", "build_time_schedule", "sample",
]
