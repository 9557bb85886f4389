"""Which steps are guided, how hard, and when refinement runs.

The paper's parameters are step indices for 50 steps. They are written for
`schedule_steps` steps and rescaled to the steps actually sampled:
index -> round(index * steps / schedule_steps). With schedule_steps equal to the
step count they are used as they are.
"""
import math
import re
from dataclasses import dataclass

from .settings import DEFAULTS, Settings


@dataclass(frozen=True)
class Schedule:
    steps: int
    steps_to_alter: int                # steps 0..steps_to_alter-1 move the latent
    thresholds: dict[int, float]       # step -> the weakest subject's target peak
    step_sizes: tuple[float, ...]      # alpha_i of every step
    max_refinement: int

    def is_guided(self, step: int) -> bool:
        return step < self.steps_to_alter or step in self.thresholds

    flow: bool = False                 # the model samples x = (1 - sigma) x0 + sigma noise (SD3, Flux)

    def step_size(self, step: int, sigma: float) -> float:
        """alpha_i for ComfyUI's sampler state x = s z, where z is the latent of unit scale the
        reference moves (z = sqrt(abar) x0 + sqrt(1 - abar) noise). It moves z by alpha_i * dL/dz;
        since dL/dz = s * dL/dx, the same move of x is alpha_i * s^2 * dL/dx. Diffusion models
        (x = x0 + sigma noise): s^2 = 1 + sigma^2. Flow models: s^2 = (1 - sigma)^2 + sigma^2."""
        scale_squared = (1.0 - sigma) ** 2 + sigma ** 2 if self.flow else 1.0 + sigma ** 2
        return self.step_sizes[step] * scale_squared


def format_thresholds(thresholds: dict[int, float]) -> str:
    """{0: 0.05, 10: 0.5} -> '0:0.05, 10:0.5', the form parse_thresholds reads."""
    return ", ".join(f"{step}:{value:g}" for step, value in thresholds.items())


AUTO = "auto"


def parse_thresholds(text: str) -> dict[int, float] | None:
    """'0:0.05, 10:0.5, 20:0.8' -> {0: 0.05, 10: 0.5, 20: 0.8}; empty text -> {}; 'auto' -> None
    (the loss's own)."""
    if text.strip().lower() == AUTO:
        return None
    thresholds = {}
    for item in filter(None, (part.strip() for part in re.split(r"[,;\n]", text))):
        match = re.fullmatch(r"(\d+)\s*:\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)", item)
        if not match:
            raise ValueError(f"refinement thresholds: cannot read {item!r}; write step:threshold pairs "
                             f"separated by commas, e.g. {format_thresholds(DEFAULTS.thresholds)!r}, or "
                             f"'{AUTO}' for the loss's own")
        step, value = int(match[1]), float(match[2])
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"refinement thresholds: {value} at step {step} is not in [0, 1]")
        if step in thresholds:
            raise ValueError(f"refinement thresholds: step {step} is given twice")
        thresholds[step] = value
    return thresholds


def rescale(index: int, steps: int, schedule_steps: int) -> int:
    return int(math.floor(index * steps / schedule_steps + 0.5))


def linspace(start: float, stop: float, count: int) -> list[float]:
    """numpy.linspace's values to the last bit (the reference's s_i), without numpy."""
    if count < 2:
        return [float(start)] * count
    step = (stop - start) / (count - 1)
    return [start + i * step for i in range(count - 1)] + [float(stop)]


def build_schedule(settings: Settings, steps: int, flow: bool = False) -> Schedule:
    """The settings' step indices rescaled to `steps` sampled steps, and every step's alpha_i."""
    if settings.schedule_steps < 1:
        raise ValueError("schedule_steps must be at least 1")
    scaled = {}
    for step, value in settings.refinement_thresholds().items():
        at = rescale(step, steps, settings.schedule_steps)
        if at < steps:
            scaled[at] = max(value, scaled.get(at, 0.0))
    sizes = tuple(settings.scale_factor * math.sqrt(s) for s in linspace(*settings.scale_range, steps))
    return Schedule(steps=steps, steps_to_alter=min(rescale(settings.steps_to_alter, steps, settings.schedule_steps),
                                                    steps),
                    thresholds=scaled, step_sizes=sizes, max_refinement=settings.max_refinement, flow=flow)
