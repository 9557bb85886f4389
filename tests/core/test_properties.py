"""Property tests (hypothesis) of the pure maths: the maps and the loss, the schedule and
the parsers. Each must hold for every input."""
import math

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from attend_and_excite.nodes.core.losses import attend_excite_loss
from attend_and_excite.nodes.core.maps import SubjectScorer, gaussian_kernel, kept_columns
from attend_and_excite.nodes.core.schedule import build_schedule, parse_thresholds
from attend_and_excite.nodes.core.settings import Settings
from attend_and_excite.nodes.core.tokens import parse_token_indices


@settings(max_examples=80, deadline=None)
@given(batch=st.integers(1, 3), height=st.integers(1, 9), width=st.integers(1, 9), tokens=st.integers(3, 20),
       data=st.data())
def test_maps_and_loss_stay_in_range_with_finite_gradients(batch, height, width, tokens, data):
    """Also maps no larger than the smoothing's padding (tiny images, large kernels)."""
    kept = kept_columns(tokens, 77, [tokens - 1], drop_from_end=True)
    columns = kept.tolist()
    picked = data.draw(st.lists(st.sampled_from(columns), min_size=1, max_size=len(columns), unique=True))
    split = data.draw(st.integers(1, len(picked)))
    subjects = [picked[:split]] + ([picked[split:]] if picked[split:] else [])
    scale = data.draw(st.sampled_from([1e-6, 1.0, 1e3]))
    attention = (torch.rand(batch, height, width, tokens, generator=torch.Generator().manual_seed(len(picked)))
                 * scale).requires_grad_(True)
    kernel = gaussian_kernel(data.draw(st.sampled_from([1, 3, 5, 15])), data.draw(st.floats(0.1, 3.0)))
    scorer = SubjectScorer(subjects, kept, kernel)
    maps = scorer.maps(attention)
    assert maps.shape == (batch, len(subjects), height, width)
    assert torch.isfinite(maps).all() and (maps >= 0).all() and (maps <= 1 + 1e-6).all()
    loss = attend_excite_loss(maps.amax(dim=(-1, -2)))
    assert loss.shape == (batch,) and ((loss >= 0) & (loss <= 1)).all()
    (grad,) = torch.autograd.grad(loss.sum(), attention)
    assert torch.isfinite(grad).all()


@settings(max_examples=200, deadline=None)
@given(steps=st.integers(1, 300), steps_to_alter=st.integers(0, 1000), schedule_steps=st.integers(1, 1000),
       thresholds=st.dictionaries(st.integers(0, 1000), st.floats(0.0, 1.0), max_size=6),
       scale=st.floats(0.0, 1000.0), start=st.floats(0.0, 10.0), end=st.floats(0.0, 10.0),
       max_refinement=st.integers(0, 1000))
def test_any_schedule_stays_within_the_steps(steps, steps_to_alter, schedule_steps, thresholds, scale, start, end,
                                             max_refinement):
    schedule = build_schedule(Settings(steps_to_alter=steps_to_alter, thresholds=thresholds, scale_factor=scale,
                                       scale_range=(start, end), max_refinement=max_refinement,
                                       schedule_steps=schedule_steps), steps)
    assert len(schedule.step_sizes) == steps
    assert all(math.isfinite(a) and a >= 0 for a in schedule.step_sizes)
    assert 0 <= schedule.steps_to_alter <= steps
    assert all(0 <= step < steps and 0.0 <= value <= 1.0 for step, value in schedule.thresholds.items())
    assert set(schedule.thresholds.values()) <= set(thresholds.values())


@settings(max_examples=200, deadline=None)
@given(text=st.one_of(st.text(max_size=80), st.lists(st.tuples(st.integers(-5, 100), st.floats(-1, 2)), max_size=5)
                      .map(lambda pairs: ", ".join(f"{s}:{v}" for s, v in pairs))))
def test_thresholds_parse_to_valid_pairs_or_say_what_is_wrong(text):
    try:
        parsed = parse_thresholds(text)
    except ValueError as error:
        assert "refinement thresholds" in str(error)
        return
    assert all(isinstance(k, int) and k >= 0 and 0.0 <= v <= 1.0 for k, v in parsed.items())


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="0123456789+, ;x-", max_size=40) | st.text(max_size=40))
@example(text="2,²")
def test_token_indices_parse_to_positions_or_say_what_is_wrong(text):
    try:
        parsed = parse_token_indices(text)
    except ValueError as error:
        assert "token_indices" in str(error)
        return
    assert all(s and all(isinstance(p, int) and p >= 0 for p in s) for s in parsed)
