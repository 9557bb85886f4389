"""The Attend-and-Excite parameters. Their defaults are the paper's (Chefer et al., 2023,
50 DDIM steps), written here only: the node schemas and the schedule read them from here."""
from dataclasses import dataclass, field

# Each loss's refinement thresholds (step -> target), as its paper: Attend-and-Excite's on the
# weakest subject's peak, Divide & Bind's on the smallest total variation. SynGen and A-STAR take
# one gradient step per guided step and never refine.
LOSS_THRESHOLDS = {"attend_and_excite": {0: 0.05, 10: 0.5, 20: 0.8}, "divide_and_bind": {0: 0.05, 10: 0.2, 20: 0.3},
                   "syngen": {}, "a_star": {}}
# How the guidance pass keeps what its backward needs (memory.py): auto picks between the others.
GUIDANCE_MEMORY = ("auto", "fast", "lean")


@dataclass(frozen=True)
class Settings:
    steps_to_alter: int = 25            # steps 0 .. n-1 (of schedule_steps) move the latent
    # step -> target (the weakest subject's peak, for Attend-and-Excite); None: the loss's own
    thresholds: dict | None = field(default_factory=lambda: dict(LOSS_THRESHOLDS["attend_and_excite"]))
    max_refinement: int = 20            # refinement iterations at most, per threshold step
    scale_factor: float = 20.0          # alpha_i = scale_factor * sqrt(s_i) ...
    scale_range: tuple = (1.0, 0.5)     # ... s_i going linearly from the first to the second over the steps
    smoothing_kernel: int = 3           # the Gaussian that smooths each subject's map
    smoothing_sigma: float = 0.5
    schedule_steps: int = 50            # the step count the step indices above are written for
    token_indices: tuple = ()           # context columns of each subject; overrides the conditioning's
    map_level: int | None = None        # halvings of the latent at the recorded level; None: the family's
    loss: str = "attend_and_excite"     # one of losses.LOSS_TABLE
    guidance_memory: str = "auto"       # one of GUIDANCE_MEMORY

    def refinement_thresholds(self) -> dict:
        """The thresholds the loss refines to: none for the losses that never refine (no thresholds of their own)."""
        if not LOSS_THRESHOLDS[self.loss]:
            return {}
        return LOSS_THRESHOLDS[self.loss] if self.thresholds is None else self.thresholds


DEFAULTS = Settings()


@dataclass(frozen=True)
class DivideAndBindSettings:
    """Divide & Bind's binding term (Li et al., 2023, and its public code's values)."""
    binding_weights: dict = field(default_factory=lambda: {0: 1.0, 10: 5.0, 20: 10.0})  # from step (of 50) on
    cut: float = 0.2                    # share of the noun distribution's peak cut off both maps ...
    sparse_cut: float = 0.3             # ... this share while the noun's total variation is under
    sparse_variation: float = 0.1
    floor: float = 1e-5                 # added after the cut, so no position has zero mass


DIVIDE_AND_BIND = DivideAndBindSettings()


@dataclass(frozen=True)
class AStarSettings:
    """A-STAR's retention masks (Agarwal et al., 2023): a map's positions at or above this share
    of its peak. The paper binarises without giving the rule; this one is the package's."""
    mask_level: float = 0.5


A_STAR = AStarSettings()


@dataclass(frozen=True)
class BoostSettings:
    """The attention boost's (boost.py): the document's weights, at every step."""
    alpha: float = 1.5                  # the subject tokens' attention is multiplied by alpha ...
    beta: float = 0.5                   # ... every other token's by beta
    renormalise: bool = False           # the document leaves the rows unnormalised
    start_percent: float = 0.0
    end_percent: float = 1.0


BOOST_DEFAULTS = BoostSettings()


@dataclass(frozen=True)
class TemperatureSettings:
    """The attention temperature's (after TACA, Lv et al., ICCV 2025, and its public code): the image
    queries' logits over the text keys multiplied by `temperature` in the first steps."""
    temperature: float = 1.2            # TACA's gamma on FLUX.1 and SD3.5
    start_percent: float = 0.0
    end_percent: float = 0.1            # TACA's code: the first 3 of 28-30 steps


TEMPERATURE_DEFAULTS = TemperatureSettings()
