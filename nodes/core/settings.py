"""The Attend-and-Excite parameters. Their defaults are the paper's (Chefer et al., 2023,
50 DDIM steps), written here only: the node schemas and the schedule read them from here."""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Settings:
    steps_to_alter: int = 25            # steps 0 .. n-1 (of schedule_steps) move the latent
    thresholds: dict = field(default_factory=lambda: {0: 0.05, 10: 0.5, 20: 0.8})   # step -> target peak
    max_refinement: int = 20            # refinement iterations at most, per threshold step
    scale_factor: float = 20.0          # alpha_i = scale_factor * sqrt(s_i) ...
    scale_range: tuple = (1.0, 0.5)     # ... s_i going linearly from the first to the second over the steps
    kernel_size: int = 3                # the Gaussian that smooths each subject's map
    smoothing_sigma: float = 0.5
    schedule_steps: int = 50            # the step count the step indices above are written for
    token_indices: tuple = ()           # context columns of each subject; overrides the conditioning's
    map_level: int | None = None        # halvings of the latent at the recorded level; None: the family's


DEFAULTS = Settings()


@dataclass(frozen=True)
class BoostSettings:
    """The attention boost's (boost.py): the document's weights, at every step."""
    alpha: float = 1.5                  # the subject tokens' attention is multiplied by alpha ...
    beta: float = 0.5                   # ... every other token's by beta
    renormalise: bool = False           # the document leaves the rows unnormalised
    start_percent: float = 0.0
    end_percent: float = 1.0


BOOST_DEFAULTS = BoostSettings()
