"""The pure maths: maps, smoothing, loss, schedules and the refinement loop."""
import ast
import math
import pathlib
from dataclasses import replace

import pytest
import torch
from torch.overrides import TorchFunctionMode

from support import REPO

from attend_and_excite.nodes.core import excite as excite_mod
from attend_and_excite.nodes.core.losses import attend_excite_loss
from attend_and_excite.nodes.core import maps as core_maps
from attend_and_excite.nodes.core.maps import gaussian_kernel, kept_columns
from attend_and_excite.nodes.core.schedule import build_schedule, format_thresholds, parse_thresholds
from attend_and_excite.nodes.core.settings import DEFAULTS

CORE = pathlib.Path(REPO) / "nodes" / "core"



class SubjectScorer(core_maps.SubjectScorer):
    def __call__(self, attention: torch.Tensor) -> torch.Tensor:
        """(B, h, w, T) -> (B, S): each subject's spatial peak (the maximum of maxima over its pieces, as the
        reference scores a multi-piece word)."""
        return self.maps(attention).amax(dim=(-1, -2))

def test_core_imports_nothing_of_comfyui():
    for path in CORE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            assert not any(n.split(".")[0] in {"comfy", "comfy_api", "nodes", "server"} for n in names), path


def test_kernel_is_the_reference_formula():
    kernel = gaussian_kernel(3, 0.5)
    one_d = torch.tensor([math.exp(-1.0), 1.0, math.exp(-1.0)])   # exp(-((x-1)/(2*0.5))^2)
    one_d = one_d / one_d.sum()
    assert torch.allclose(kernel, one_d[:, None] * one_d[None, :], atol=1e-7)
    assert torch.allclose(one_d, torch.tensor([0.2119, 0.5761, 0.2119]), atol=1e-4)
    assert kernel[1, 1].item() == pytest.approx(0.332, abs=1e-3)
    with pytest.raises(ValueError):
        gaussian_kernel(4, 0.5)


def test_kept_columns_sd1_and_end_slicing():
    assert kept_columns(77, 77, [6], drop_from_end=False).tolist() == list(range(1, 76))
    assert kept_columns(77, 77, [6], drop_from_end=True).tolist() == [1, 2, 3, 4, 5]
    two_chunks = kept_columns(154, 77, [76, 90], drop_from_end=False).tolist()
    assert two_chunks == list(range(1, 76)) + list(range(78, 153))


def reference_peaks(attention, indices, kernel):
    """The reference's per-token score for one image, written out directly."""
    a = attention[:, :, 1:-1] * 100
    a = torch.softmax(a, dim=-1)
    out = []
    for i in [i - 1 for i in indices]:
        m = torch.nn.functional.pad(a[:, :, i][None, None], (1, 1, 1, 1), mode="reflect")
        out.append(torch.nn.functional.conv2d(m, kernel[None, None])[0, 0].max())
    return torch.stack(out)


def test_subject_peaks_equal_the_reference():
    torch.manual_seed(3)
    attention = torch.softmax(torch.randn(2, 16, 16, 77) * 3, dim=-1)
    kernel = gaussian_kernel()
    peaks = SubjectScorer([[2], [5]], kept_columns(77, 77, [], False), kernel)(attention)
    for row in range(2):
        assert torch.allclose(peaks[row], reference_peaks(attention[row], [2, 5], kernel), atol=1e-6)


def test_multi_piece_subject_scores_its_strongest_piece():
    attention = torch.softmax(torch.randn(1, 8, 8, 77), dim=-1)
    kept, kernel = kept_columns(77, 77, [], False), gaussian_kernel()
    both = SubjectScorer([[3, 4]], kept, kernel)(attention)
    single = SubjectScorer([[3], [4]], kept, kernel)(attention)
    assert both[0, 0] == single[0].max()


def test_subject_maps_are_what_the_peaks_are_read_from():
    attention = torch.softmax(torch.randn(2, 8, 8, 77) * 3, dim=-1)
    kept, kernel = kept_columns(77, 77, [], False), gaussian_kernel()
    merged = SubjectScorer([[3, 4], [6]], kept, kernel)
    single = SubjectScorer([[3], [4], [6]], kept, kernel)
    maps, pieces = merged.maps(attention), single.maps(attention)
    assert maps.shape == (2, 2, 8, 8)
    assert torch.equal(maps[:, 0], torch.maximum(pieces[:, 0], pieces[:, 1]))
    assert torch.equal(maps[:, 1], pieces[:, 2])
    assert torch.equal(merged(attention), maps.amax(dim=(-1, -2)))


def test_a_subject_outside_the_scored_tokens_is_refused():
    with pytest.raises(ValueError, match="not among the scored"):
        SubjectScorer([[76]], kept_columns(77, 77, [], False), gaussian_kernel())


def test_loss_is_the_most_neglected_subject():
    peaks = torch.tensor([[0.2, 0.9], [1.0, 1.0]])
    assert attend_excite_loss(peaks).tolist() == pytest.approx([0.8, 0.0])


def test_thresholds_parse_and_reject():
    assert parse_thresholds("0:0.05, 10:0.5, 20:0.8") == {0: 0.05, 10: 0.5, 20: 0.8}
    assert parse_thresholds("") == {}
    for bad in ("0:1.5", "a:0.1", "0:0.1, 0:0.2", "5"):
        with pytest.raises(ValueError):
            parse_thresholds(bad)


def test_schedule_paper_defaults_at_50_steps():
    s = build_schedule(DEFAULTS, 50)
    assert s.steps_to_alter == 25 and s.thresholds == {0: 0.05, 10: 0.5, 20: 0.8} and s.max_refinement == 20
    assert s.step_sizes[0] == pytest.approx(20.0)
    assert s.step_sizes[10] == pytest.approx(18.95, abs=0.01)
    assert s.step_sizes[24] == pytest.approx(17.38, abs=0.01)
    assert s.is_guided(24) and not s.is_guided(25)


def test_step_sizes_are_the_references_to_the_last_bit():
    """alpha_i = scale_factor * sqrt(s_i), s_i = np.linspace(1.0, 0.5, steps), as the reference computes them."""
    linspace = [1.0 + i * (-0.5 / 49) for i in range(49)] + [0.5]      # numpy's own arithmetic for linspace
    assert build_schedule(DEFAULTS, 50).step_sizes == tuple(20.0 * math.sqrt(v) for v in linspace)
    assert build_schedule(replace(DEFAULTS, scale_range=(0.3, 2.0)), 1).step_sizes == (20.0 * math.sqrt(0.3),)


def test_step_size_in_the_samplers_space():
    """A move of the unscaled latent z = x / sqrt(1 + sigma^2) by alpha * dL/dz is, for the
    sampler's x, a move by alpha * (1 + sigma^2) * dL/dx: checked on a loss of x."""
    s = build_schedule(DEFAULTS, 50)
    sigma, x = 3.0, torch.tensor([0.7, -1.2], dtype=torch.float64)
    scale = math.sqrt(1 + sigma ** 2)

    def loss_of_x(value):
        return (value ** 3).sum() * 0.01

    z = (x / scale).requires_grad_(True)
    (grad_z,) = torch.autograd.grad(loss_of_x(z * scale), z)
    moved_via_z = (z - s.step_sizes[3] * grad_z).detach() * scale
    leaf = x.clone().requires_grad_(True)
    (grad_x,) = torch.autograd.grad(loss_of_x(leaf), leaf)
    assert torch.allclose(x - s.step_size(3, sigma) * grad_x, moved_via_z, rtol=1e-12)


def test_schedule_rescales_step_indices_to_other_step_counts():
    s = build_schedule(DEFAULTS, 20)
    assert s.steps_to_alter == 10 and s.thresholds == {0: 0.05, 4: 0.5, 8: 0.8}
    same = build_schedule(replace(DEFAULTS, steps_to_alter=10, thresholds={0: 0.05, 4: 0.5, 8: 0.8},
                                  schedule_steps=20), 20)
    assert same.thresholds == s.thresholds and same.steps_to_alter == 10
    assert len(s.step_sizes) == 20 and s.step_sizes[-1] == pytest.approx(20 * math.sqrt(0.5))


def test_schedule_with_no_steps_guides_nothing():
    s = build_schedule(DEFAULTS, 0)
    assert s.step_sizes == () and not s.thresholds and not s.is_guided(0)


def test_the_default_thresholds_read_back_from_their_text():
    assert format_thresholds(DEFAULTS.thresholds) == "0:0.05, 10:0.5, 20:0.8"
    assert parse_thresholds(format_thresholds(DEFAULTS.thresholds)) == DEFAULTS.thresholds


def reference_refinement(x, score, step_size, threshold, max_refinement):
    """The reference's per-image loop: while loss > target, forward, step; then forward."""
    target = max(0.0, 1.0 - threshold)
    leaf = x.clone().requires_grad_(True)
    loss = score(leaf)
    iterations = 0
    while loss > target:
        iterations += 1
        leaf = x.clone().requires_grad_(True)
        loss = score(leaf)
        x = (leaf - step_size * torch.autograd.grad(loss, leaf)[0]).detach()
        if iterations >= max_refinement:
            break
    leaf = x.clone().requires_grad_(True)
    loss = score(leaf)
    return (leaf - step_size * torch.autograd.grad(loss, leaf)[0]).detach(), iterations


def toy_score(x):
    return 1.0 - torch.sigmoid(x.sum() - 3.0)


def test_refinement_loop_matches_the_reference_row_by_row():
    rows = torch.tensor([[0.1, 0.2], [1.4, 1.4], [-2.0, 0.0]])

    def evaluate(x):
        leaf = x.clone().requires_grad_(True)
        loss = torch.stack([toy_score(r) for r in leaf])
        return excite_mod.Evaluation.of(leaf, loss, (1 - loss)[:, None])

    with torch.enable_grad():
        moved, log = excite_mod.excite(rows, evaluate, step=0, step_size=2.0, alter=True, threshold=0.6,
                                       max_refinement=5)
        log = log.read()
        for i, row in enumerate(rows):
            expected, iterations = reference_refinement(row, toy_score, 2.0, 0.6, 5)
            assert torch.allclose(moved[i], expected, atol=1e-6)
            assert log.refinement_iterations[i] == iterations
    assert log.refinement_iterations == [5, 2, 5]   # rows stop on their own, one at the cap


def test_a_row_with_a_non_finite_gradient_keeps_its_latent_and_is_counted():
    x = torch.ones(3, 2)
    overflow = torch.tensor([1.0, float("inf"), 1.0])     # row 1 overflows, as fp16 can

    def evaluate(z):
        leaf = z.clone().requires_grad_(True)
        loss = 0.5 - 0.1 * (leaf * overflow[:, None]).sum(-1).clamp(max=2.0) + 0.3 * leaf[:, 0]
        return excite_mod.Evaluation.of(leaf, loss, (1 - loss)[:, None])

    with torch.enable_grad():
        moved, log = excite_mod.excite(x, evaluate, step=0, step_size=1.0, alter=True, threshold=0.9, max_refinement=2)
        log = log.read()
    assert torch.isfinite(moved).all()
    assert torch.equal(moved[1], x[1]) and not torch.equal(moved[0], x[0]) and torch.equal(moved[0], moved[2])
    assert log.skipped_updates == 3            # row 1: two refinement updates and the step's own update
    assert log.refinement_iterations == [2, 2, 2]


def test_no_refinement_and_no_alter_leaves_the_latent():
    x = torch.randn(2, 3)

    def evaluate(z):
        leaf = z.clone().requires_grad_(True)
        loss = (leaf ** 2).sum(-1)
        return excite_mod.Evaluation.of(leaf, loss, loss[:, None])

    with torch.enable_grad():
        same, log = excite_mod.excite(x, evaluate, step=0, step_size=1.0, alter=False, threshold=None,
                                      max_refinement=20)
        log = log.read()
        moved, _ = excite_mod.excite(x, evaluate, step=0, step_size=0.25, alter=True, threshold=None,
                                     max_refinement=20)
    assert torch.equal(same, x) and len(log.losses) == 1
    assert torch.allclose(moved, x - 0.25 * 2 * x)


class HostReads(TorchFunctionMode):
    """Counts the tensor operations that make the host wait for the tensor's device."""
    READS = {"__bool__", "__int__", "__float__", "item", "tolist", "cpu", "numpy"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += getattr(func, "__name__", "") in self.READS
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("max_refinement", [0, 1, 5])
def test_a_step_reads_the_host_once_per_refinement_iteration_and_its_log_only_when_read(max_refinement):
    rows = torch.tensor([[0.1, 0.2], [1.4, 1.4], [-2.0, 0.0]])

    def evaluate(x):
        leaf = x.clone().requires_grad_(True)
        loss = 1.0 - torch.sigmoid(leaf.sum(-1) - 3.0)
        return excite_mod.Evaluation.of(leaf, loss, (1 - loss)[:, None])

    with torch.enable_grad(), HostReads() as reads:
        _, unread = excite_mod.excite(rows, evaluate, step=0, step_size=2.0, alter=True, threshold=0.6,
                                      max_refinement=max_refinement)
    with HostReads() as log_reads:
        log = unread.read()
    loops = max(log.refinement_iterations)
    assert loops == max(1, min(max_refinement, 5))     # as the reference, a cap of 0 still runs one
    assert reads.count == loops + 1       # each loop test, the last one included
    assert log_reads.count == 1           # the whole log in one transfer


def test_a_step_without_refinement_reads_nothing():
    def evaluate(x):
        leaf = x.clone().requires_grad_(True)
        return excite_mod.Evaluation.of(leaf, (leaf ** 2).sum(-1), leaf[:, :1])

    with torch.enable_grad(), HostReads() as reads:
        excite_mod.excite(torch.ones(2, 3), evaluate, step=0, step_size=1.0, alter=True, threshold=None,
                          max_refinement=20)
    assert reads.count == 0


@pytest.mark.parametrize("size, kernel_size", [(1, 3), (2, 5), (4, 15)])
def test_maps_no_larger_than_the_smoothing_padding_are_smoothed(size, kernel_size):
    kept = kept_columns(8, 77, [7], drop_from_end=True)
    scorer = SubjectScorer([[2], [5]], kept, gaussian_kernel(kernel_size, 0.5))
    maps = scorer.maps(torch.rand(1, size, size, 8))
    assert maps.shape == (1, 2, size, size) and torch.isfinite(maps).all()
