"""Which model calls of a sampler are the guided steps' state evaluations.

A sampler calls the model at each step's sigma with the state it is about to step from, and some
samplers call it more often: predictor and midpoint evaluations, or sigmas of their own choosing.
The guidance must move the state right before the one call that evaluates it, so each call's sigma
is matched against the guided steps still to come.
"""
import math
from dataclasses import dataclass

# Evaluations that some samplers make at a later step's own sigma before that step starts: step j's
# state is evaluated after min(j, n) of them. Heun's predictor lands on the next sigma (exp_heun_2_x0
# too: SEEDS-2 with r = 1); so does the ancestral DPM-2 midpoint at eta 1, since
# sqrt(sigma_i * sigma_down) = sigma_(i+1) there.
PREDICTOR_CALLS = {"heun": 1, "heunpp2": 2, "exp_heun_2_x0": 1, "exp_heun_2_x0_sde": 1, "dpm_2_ancestral": 1,
                   "dpmpp_2s_ancestral": 1, "dpmpp_2s_ancestral_cfg_pp": 1}
# On flow models (SD3, Flux) ComfyUI runs DPM++(2S) ancestral as its RF variant, whose midpoint is not
# the next sigma.
FLOW_PREDICTOR_CALLS = {**PREDICTOR_CALLS, "dpmpp_2s_ancestral": 0}
# Samplers that choose their own evaluation sigmas: step j is guided at the first evaluation at or
# below its sigma.
OWN_GRID = {"dpm_fast", "dpm_adaptive"}
SIGMA_MATCH = 1e-4


@dataclass(frozen=True)
class StepGrid:
    """What a sampling call's guided steps are found by."""
    sigmas: tuple[float, ...]          # each step's sigma
    first_sigmas: tuple[float, ...]    # step 0's: its sigma, and just under 1 where a log-SNR sampler starts a flow
    predictor_calls: int               # calls at a later step's sigma before that step (PREDICTOR_CALLS)
    own_grid: bool                     # the sampler picks its own sigmas (OWN_GRID)

    @classmethod
    def of(cls, sigmas: list[float], first_sigmas: tuple[float, ...], sampler_name: str, flow: bool) -> "StepGrid":
        calls = (FLOW_PREDICTOR_CALLS if flow else PREDICTOR_CALLS).get(sampler_name, 0)
        return cls(tuple(sigmas), tuple(first_sigmas), calls, sampler_name in OWN_GRID)


@dataclass(frozen=True)
class Located:
    step: int | None             # the guided step whose state this call evaluates, or None
    pending: tuple[int, ...]     # the guided steps still to come after this call
    calls_seen: tuple[int, ...]  # per pending step, the calls seen at its sigma so far


def locate(sigma: float, pending: tuple[int, ...], calls_seen: tuple[int, ...], grid: StepGrid) -> Located:
    """The guided step (if any) whose state the model call at `sigma` evaluates. A call at a pending
    step's sigma is that step's state evaluation once the predictor calls that precede it have been
    seen; on a sampler's own grid, the first call at or below the next step's sigma is, and the steps
    it passed over are dropped."""
    if not pending:
        return Located(None, pending, calls_seen)
    step = pending[0]
    if grid.own_grid:
        if sigma > grid.sigmas[step] * (1 + 1e-6):
            return Located(None, pending, calls_seen)
        rest = tuple(s for s in pending[1:] if grid.sigmas[s] < sigma)
        return Located(step, rest, calls_seen[len(pending) - len(rest):])
    for position, upcoming in enumerate(pending):
        targets = grid.first_sigmas if upcoming == 0 else (grid.sigmas[upcoming],)
        if any(math.isclose(sigma, target, rel_tol=SIGMA_MATCH) for target in targets):
            seen = calls_seen[:position] + (calls_seen[position] + 1,) + calls_seen[position + 1:]
            if position == 0 and seen[0] > min(step, grid.predictor_calls):
                return Located(step, pending[1:], seen[1:])
            return Located(None, pending, seen)
    return Located(None, pending, calls_seen)
