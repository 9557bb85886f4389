"""The successor losses (nodes/core/losses.py) against direct transcriptions of their papers'
formulas, written here element by element on hand-made maps, and their degenerate cases."""
import itertools
import math

import pytest
import torch

from attend_and_excite.nodes.core.excite import Evaluation
from attend_and_excite.nodes.core.losses import (
    Words, a_star_terms, binding_divergence, binding_weight, divide_and_bind_terms, guidance_loss, overlap,
    refinement_test, retention_masks, syngen_terms, total_variation)
from attend_and_excite.nodes.core.settings import A_STAR, DIVIDE_AND_BIND


def distributions(batch, count, positions, seed=0):
    maps = torch.rand(batch, count, positions, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return maps + 0.05


def kl(p, q):
    """KL(p||q) of two lists of masses, normalised here, one term at a time."""
    p_total, q_total = sum(p), sum(q)
    return sum(a / p_total * math.log((a / p_total) / (b / q_total)) for a, b in zip(p, q))


def sym(p, q):
    return (kl(p, q) + kl(q, p)) / 2


def syngen_transcribed(row, nouns, modifiers, token_count):
    """Rassin et al. (2023): for every noun n and each of its modifiers m, dist(m, n) minus half
    the mean over the tokens u outside the group of dist(m, u) + dist(n, u); a noun with no
    modifier contributes minus its mean dist to the tokens outside. dist: the symmetric KL, the
    strongest over the words' pieces."""
    def dist(a, b):
        return max(sym(row[i], row[j]) for i in a for j in b)
    total = 0.0
    for noun, own in zip(nouns, modifiers):
        group = set(noun) | {t for m in own for t in m}
        outside = [u for u in range(token_count) if u not in group]
        if not own:
            total -= sum(dist(noun, [u]) for u in outside) / len(outside)
        for m in own:
            total += dist(m, noun) - sum(dist(m, [u]) + dist(noun, [u]) for u in outside) / (2 * len(outside))
    return total


@pytest.mark.parametrize("nouns, modifiers", [
    (((1,), (4,)), (((0,),), ((3,),))),              # a red circle and a blue square
    (((2,),), (((0,), (1,)),)),                      # one subject, two modifiers
    (((1,), (4,)), (((0,),), ())),                   # a noun with no modifier
    (((2, 3),), (((0, 1),),)),                       # a noun and a modifier of two pieces each
    (((1, 4),), (((0,), (3,)),)),                    # a repeated noun ('a red cat and a black cat')
])
def test_syngen_is_its_formula(nouns, modifiers):
    tokens = distributions(2, 7, 16)
    words = Words(len(nouns), (), nouns, modifiers, 7)
    positive, negative = syngen_terms(tokens, words)
    for b in range(2):
        row = tokens[b].tolist()
        assert float(positive[b] + negative[b]) == pytest.approx(syngen_transcribed(row, nouns, modifiers, 7), rel=1e-9)


def test_syngen_positive_term_is_zero_when_a_modifier_attends_where_its_noun_does():
    tokens = distributions(1, 5, 9)
    tokens[0, 0] = tokens[0, 1] * 3.0          # the modifier's map is its noun's, scaled
    positive, _ = syngen_terms(tokens, Words(1, (), ((1,),), (((0,),),), 5))
    assert float(positive) == pytest.approx(0.0, abs=1e-12)


def tv_transcribed(image):
    h, w = len(image), len(image[0])
    across = sum(abs(image[i][j + 1] - image[i][j]) for i in range(h) for j in range(w - 1)) / (h * (w - 1))
    down = sum(abs(image[i + 1][j] - image[i][j]) for i in range(h - 1) for j in range(w)) / ((h - 1) * w)
    return across + down


def test_total_variation_is_the_finite_difference_both_ways():
    maps = torch.rand(2, 3, 5, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tv = total_variation(maps)
    for b, s in itertools.product(range(2), range(3)):
        assert float(tv[b, s]) == pytest.approx(tv_transcribed(maps[b, s].tolist()), rel=1e-12)
    # the public code's vertical term (last row against every row) would not vanish on a map constant down its columns
    columns = torch.arange(6.0).repeat(5, 1)
    assert float(total_variation(columns)) == pytest.approx(1.0)


def softmax(values):
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def jsd_transcribed(p, q):
    m = [(a + b) / 2 for a, b in zip(p, q)]
    return (sum(a * math.log(a / c) for a, c in zip(p, m)) + sum(b * math.log(b / c) for b, c in zip(q, m))) / 2


def binding_transcribed(noun, modifier, variation):
    """Li et al. (2023): the attribute's map scaled to the noun's peak, both softmaxed over the
    positions, cut at a share of the noun distribution's peak, renormalised; their JSD."""
    scaled = [v / max(modifier) * max(noun) for v in modifier]
    p, q = softmax(noun), softmax(scaled)
    share = DIVIDE_AND_BIND.sparse_cut if variation < DIVIDE_AND_BIND.sparse_variation else DIVIDE_AND_BIND.cut
    level = share * max(p)
    p = [max(v - level, 0) + DIVIDE_AND_BIND.floor for v in p]
    q = [max(v - level, 0) + DIVIDE_AND_BIND.floor for v in q]
    return jsd_transcribed([v / sum(p) for v in p], [v / sum(q) for v in q])


def test_divide_and_bind_is_its_formula():
    generator = torch.Generator().manual_seed(2)
    maps = torch.rand(2, 3, 4, 4, generator=generator, dtype=torch.float64)        # circle, square, red
    maps[1] *= 0.1                                                                 # a row whose variation is small
    words = Words(2, ((2,), ()))
    loss, variation, binding = divide_and_bind_terms(maps, words, weight=5.0)
    for b in range(2):
        tvs = [tv_transcribed(maps[b, s].tolist()) for s in range(2)]
        bind = binding_transcribed(maps[b, 0].flatten().tolist(), maps[b, 2].flatten().tolist(), tvs[0])
        assert float(loss[b]) == pytest.approx(max(-tvs[0] + 5.0 * bind, -tvs[1]), rel=1e-9)
        assert float(variation[b]) == pytest.approx(min(tvs)) and float(binding[b]) == pytest.approx(bind, rel=1e-9)
    assert float(binding_divergence(maps[0, 0].flatten()[None], maps[0, 0].flatten()[None] * 2, torch.ones(1))) \
        == pytest.approx(0.0, abs=1e-12)      # scaled to the noun's peak, a copy of the noun's map is bound


def test_divide_and_bind_weight_steps_up_at_its_schedule_rescaled():
    assert [binding_weight(s, 50, 50) for s in (0, 9, 10, 19, 20, 49)] == [1.0, 1.0, 5.0, 5.0, 10.0, 10.0]
    assert [binding_weight(s, 25, 50) for s in (4, 5, 10)] == [1.0, 5.0, 10.0]


def iou_transcribed(a, b):
    return sum(min(x, y) for x, y in zip(a, b)) / sum(x + y for x, y in zip(a, b))


def test_a_star_is_its_formula():
    generator = torch.Generator().manual_seed(3)
    maps = torch.rand(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    previous = torch.rand(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    masks = retention_masks(previous)
    segregation, retention = a_star_terms(maps, masks)
    for b in range(2):
        flat = [maps[b, s].flatten().tolist() for s in range(3)]
        pairs = list(itertools.combinations(range(3), 2))
        assert float(segregation[b]) == pytest.approx(sum(iou_transcribed(flat[i], flat[j]) for i, j in pairs) / 3)
        binary = [[1.0 if v >= A_STAR.mask_level * max(p) else 0.0 for v in p]
                  for p in (previous[b, s].flatten().tolist() for s in range(3))]
        assert float(retention[b]) == pytest.approx(sum(1 - iou_transcribed(flat[s], binary[s]) for s in range(3)) / 3)


def test_a_star_with_one_subject_and_no_previous_step_is_zero():
    maps = torch.rand(1, 1, 4, 4)
    segregation, retention = a_star_terms(maps, None)
    assert float(segregation) == 0.0 and float(retention) == 0.0
    assert float(overlap(maps, maps)) == pytest.approx(0.5)     # the public code's IoU: sum min / sum (a + b)


def test_each_loss_is_per_row_and_the_tests_of_refinement_read_its_own_indicator():
    maps = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    tokens = distributions(3, 5, 16).float()
    words = Words(2, ((2,), ()), ((1,), (3,)), (((0,),), ()), 5)
    peaks = maps[:, :2].amax(dim=(-1, -2))
    for name in ("attend_and_excite", "syngen", "divide_and_bind", "a_star"):
        whole = guidance_loss(name, maps, peaks, words, tokens, binding=5.0)
        alone = guidance_loss(name, maps[1:2], peaks[1:2], words, tokens[1:2], binding=5.0)
        assert whole.loss.shape == (3,) and torch.allclose(whole.loss[1:2], alone.loss)
    value = guidance_loss("divide_and_bind", maps, peaks, words, binding=1.0)
    evaluation = Evaluation(value.loss, peaks, lambda: None, value.indicator)
    assert refinement_test("divide_and_bind")(evaluation, 1.0).all()         # every variation is under 1
    assert not refinement_test("divide_and_bind")(evaluation, 0.0).any()
    assert refinement_test("attend_and_excite")(Evaluation(torch.tensor([0.3, 0.7]), peaks, lambda: None), 0.5) \
        .tolist() == [False, True]


def test_words_index_the_subjects_then_their_modifiers():
    words = Words.of([[2], [6]], [[[1]], [[4], [5]]], [1, 2, 3, 4, 5, 6])
    assert words.modifiers == ((2,), (3, 4)) and words.noun_tokens == ((1,), (5,))
    assert words.modifier_tokens == (((0,),), ((3,), (4,))) and words.token_count == 6 and words.paired
    with pytest.raises(ValueError, match="unknown loss"):
        guidance_loss("sdg", torch.rand(1, 2, 4, 4), torch.rand(1, 2), words)
