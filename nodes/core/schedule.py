"""Which steps are guided, how hard, and when refinement runs.

The paper's parameters are step indices for 50 steps. They are written for
`schedule_steps` steps and rescaled to the steps actually sampled:
index -> round(index * steps / schedule_steps). With schedule_steps equal to the
step count they are used as they are.
"""
import math
import re
from dataclasses import dataclass

import numpy as np

DEFAULT_THRESHOLDS = "0:0.05, 10:0.5, 20:0.8"


@dataclass(frozen=True)
class Schedule:
    steps: int
    steps_to_alter: int                # steps 0..steps_to_alter-1 move the latent
    thresholds: dict[int, float]       # step -> the weakest subject's target peak
    step_sizes: tuple[float, ...]      # alpha_i of every step
    max_refinement: int

    def is_guided(self, step: int) -> bool:
        return step < self.steps_to_alter or step in self.thresholds


def parse_thresholds(text: str) -> dict[int, float]:
    """'0:0.05, 10:0.5, 20:0.8' -> {0: 0.05, 10: 0.5, 20: 0.8}; empty text -> {}."""
    thresholds = {}
    for item in filter(None, (part.strip() for part in re.split(r"[,;\n]", text))):
        match = re.fullmatch(r"(\d+)\s*:\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)", item)
        if not match:
            raise ValueError(f"refinement thresholds: cannot read {item!r}; write step:threshold pairs "
                             f"separated by commas, e.g. {DEFAULT_THRESHOLDS!r}")
        step, value = int(match[1]), float(match[2])
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"refinement thresholds: {value} at step {step} is not in [0, 1]")
        if step in thresholds:
            raise ValueError(f"refinement thresholds: step {step} is given twice")
        thresholds[step] = value
    return thresholds


def rescale(index: int, steps: int, schedule_steps: int) -> int:
    return int(math.floor(index * steps / schedule_steps + 0.5))


def build_schedule(steps: int, steps_to_alter: int, thresholds: dict[int, float], scale_factor: float,
                   scale_range: tuple[float, float] = (1.0, 0.5), max_refinement: int = 20,
                   schedule_steps: int = 50) -> Schedule:
    if schedule_steps < 1:
        raise ValueError("schedule_steps must be at least 1")
    scaled = {}
    for step, value in thresholds.items():
        at = rescale(step, steps, schedule_steps)
        if at < steps:
            scaled[at] = max(value, scaled.get(at, 0.0))
    lin = np.linspace(scale_range[0], scale_range[1], steps)
    sizes = tuple(float(scale_factor * math.sqrt(v)) for v in lin)
    return Schedule(steps=steps, steps_to_alter=min(rescale(steps_to_alter, steps, schedule_steps), steps),
                    thresholds=scaled, step_sizes=sizes, max_refinement=max_refinement)
