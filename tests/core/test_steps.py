"""The step locator: which model calls of a sampler are the guided steps' state evaluations."""
from attend_and_excite.nodes.core.steps import StepGrid, locate

SIGMAS = [14.6, 7.0, 3.0, 1.0, 0.3, 0.0]


def guided_calls(calls: list[float], grid: StepGrid, guided: tuple[int, ...]) -> list[tuple[int, int]]:
    """(call number, step) of each call found to evaluate a guided step's state."""
    pending, seen, found = guided, (0,) * len(guided), []
    for number, sigma in enumerate(calls):
        located = locate(sigma, pending, seen, grid)
        pending, seen = located.pending, located.calls_seen
        if located.step is not None:
            found.append((number, located.step))
    return found


def test_one_call_per_step_guides_each_step_at_its_own_sigma():
    grid = StepGrid.of(SIGMAS, (SIGMAS[0],), "euler", flow=False)
    assert guided_calls(SIGMAS[:-1], grid, (0, 1, 2)) == [(0, 0), (1, 1), (2, 2)]


def test_a_predictor_call_at_the_next_sigma_is_not_that_steps_state():
    """Heun evaluates its predictor at the next step's sigma before that step: step j's state is the
    call after min(j, 1) such calls."""
    calls = [14.6, 7.0, 7.0, 3.0, 3.0, 1.0]       # state 0, predictor, state 1, predictor, state 2, predictor
    grid = StepGrid.of(SIGMAS, (SIGMAS[0],), "heun", flow=False)
    assert guided_calls(calls, grid, (0, 1, 2)) == [(0, 0), (2, 1), (4, 2)]
    euler_grid = StepGrid.of(SIGMAS, (SIGMAS[0],), "euler", flow=False)
    assert guided_calls(calls, euler_grid, (0, 1, 2)) == [(0, 0), (1, 1), (3, 2)]     # the predictor taken


def test_flow_dpmpp_2s_ancestral_has_no_predictor_at_the_next_sigma():
    assert StepGrid.of(SIGMAS, (1.0,), "dpmpp_2s_ancestral", flow=False).predictor_calls == 1
    assert StepGrid.of(SIGMAS, (1.0,), "dpmpp_2s_ancestral", flow=True).predictor_calls == 0


def test_step_zero_is_found_just_under_sigma_one_where_a_log_snr_sampler_starts_a_flow():
    sigmas = [1.0, 0.75, 0.5, 0.25, 0.0]
    grid = StepGrid.of(sigmas, (1.0, 0.99), "dpmpp_2m", flow=True)
    assert guided_calls([0.99, 0.75, 0.5], grid, (0, 1)) == [(0, 0), (1, 1)]
    # without the offset sigma step 0 is never found, and no later step is guided before it
    assert guided_calls([0.99, 0.75], StepGrid.of(sigmas, (1.0,), "dpmpp_2m", flow=True), (0, 1)) == []


def test_a_sampler_on_its_own_grid_guides_the_first_call_at_or_below_each_step_and_drops_those_it_passed():
    grid = StepGrid.of(SIGMAS, (SIGMAS[0],), "dpm_adaptive", flow=False)
    calls = [14.6, 10.0, 6.0, 0.8, 0.2]       # its own sigmas: 0.8 is under step 2's and step 3's
    assert guided_calls(calls, grid, (0, 1, 2, 3, 4)) == [(0, 0), (2, 1), (3, 2), (4, 4)]


def test_calls_at_no_pending_sigma_guide_nothing_and_the_locator_changes_nothing_it_is_given():
    grid = StepGrid.of(SIGMAS, (SIGMAS[0],), "euler", flow=False)
    pending, seen = (1, 2), (0, 0)
    located = locate(5.0, pending, seen, grid)
    assert located.step is None and located.pending == pending and located.calls_seen == seen
    assert locate(7.0, pending, seen, grid) == locate(7.0, pending, seen, grid)
    assert locate(7.0, (), (), grid).step is None
