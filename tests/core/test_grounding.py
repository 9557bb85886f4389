"""The grounding metrics and the training term of the demo model (nodes/demo/grounding.py,
the masks of nodes/demo/shapes.py, the term of tests/harness/train_demo.py)."""
import torch

from attend_and_excite.nodes.demo.grounding import grounding_loss, mass_inside, pointing_hits
from attend_and_excite.nodes.core.maps import SHARPENING
from attend_and_excite.nodes.demo.shapes import Shape, cell_masks, coverage, kind_column


def test_cell_masks_are_each_cells_covered_share():
    square = Shape("square", 48, 48, 16)                   # pixels 32..63: cells (2, 2)..(3, 3) of 16 px
    masks = cell_masks([square, Shape("circle", 100, 30, 20)], 8)
    assert masks.shape == (2, 8, 8)
    expected = torch.zeros(8, 8)
    expected[2:4, 2:4] = 1
    assert torch.equal(masks[0], expected)
    assert torch.allclose(masks[1].sum() * 16 ** 2, coverage(Shape("circle", 100, 30, 20)).sum())
    assert torch.allclose(cell_masks([square], 4)[0].sum() * 4, masks[0].sum())


def test_mass_inside_and_pointing_game_on_hand_made_maps():
    mask = torch.zeros(4, 4)
    mask[0, 0], mask[0, 1] = 1.0, 0.5
    on = torch.zeros(4, 4)
    on[0, 0], on[3, 3] = 3.0, 1.0
    near = torch.zeros(4, 4)
    near[1, 2] = 1.0                                         # touches the shape's cells diagonally: dilated hit
    far = torch.zeros(4, 4)
    far[3, 0] = 1.0
    maps = torch.stack([on, near, far]).flatten(1)
    masks = mask.flatten().expand(3, -1)
    assert torch.allclose(mass_inside(maps, masks), torch.tensor([0.75, 0.0, 0.0]))
    assert pointing_hits(maps, masks, 4).tolist() == [True, True, False]
    faint = torch.full((4, 4), 0.1)
    faint[2, 2] = 0.3                                        # no cell covered by half: the most covered counts
    assert pointing_hits(on.flatten()[None], faint.flatten()[None], 4).tolist() == [False]
    assert pointing_hits(faint.flatten()[None], faint.flatten()[None], 4).tolist() == [True]


def test_grounding_loss_raises_the_map_on_the_shape_and_lowers_it_elsewhere():
    mask = torch.zeros(1, 16)
    mask[0, :4] = 1.0
    logits = torch.zeros(1, 16, requires_grad=True)
    readout = torch.sigmoid(logits)
    loss = grounding_loss(readout, mask)
    loss.backward()
    assert (logits.grad[0, :4] < 0).all() and (logits.grad[0, 4:] > 0).all()
    assert grounding_loss(torch.sigmoid(logits.detach() - 10 * logits.grad), mask) < loss
    assert torch.allclose(grounding_loss(mask, mask), torch.tensor(0.0), atol=1e-4)


def sharpened_readout(attention: torch.Tensor, column: int) -> torch.Tensor:
    """A transcription of the map the Attend-and-Excite loss reads, on the demo family's columns:
    columns 1..75 of (B, cells, 77), x100, softmax over them, the word's column."""
    return torch.softmax(attention[..., 1:76] * SHARPENING, dim=-1)[..., column - 1]


def test_training_term_reads_the_kind_words_sharpened_maps_and_skips_what_has_no_caption_or_shape():
    from harness.train_demo import grounding_term
    masks = torch.zeros(3, 2, 8, 8)
    masks[:, 0, :2, :2] = 1.0
    masks[0, 1, 5:, 5:] = 1.0                               # rows 1 and 2 show one shape
    captioned = torch.tensor([True, True, False])
    uniform = torch.full((3, 64, 77), 1 / 77)
    grounded = uniform.clone()
    for number in range(2):                                 # each kind word's probability raised on its shape
        grounded[:, :, kind_column(number)] += 0.2 * masks[:, number].flatten(1)
    assert grounding_term([grounded], masks, captioned) < 0.1 * grounding_term([uniform], masks, captioned)
    expected = sum(grounding_loss(sharpened_readout(grounded[row], kind_column(number)), masks[row, number].flatten())
                   for row, number in ((0, 0), (0, 1), (1, 0))) / 3
    assert torch.allclose(grounding_term([grounded], masks, captioned), expected)
    changed = grounded.clone()
    changed[2] = 0.9                                         # an empty caption's row
    assert torch.equal(grounding_term([changed], masks, captioned), grounding_term([grounded], masks, captioned))
    changed[0, :, 3] += 0.3                                  # another token of the prompt wins the shape's cells
    assert grounding_term([changed], masks, captioned) > grounding_term([grounded], masks, captioned) + 0.1
    pooled = torch.nn.functional.avg_pool2d(grounded.transpose(1, 2).reshape(3, 77, 8, 8), 2)
    coarse = pooled.flatten(2).transpose(1, 2)               # the same maps on a 4 x 4 layer
    both = grounding_term([grounded, coarse], masks, captioned)
    assert torch.allclose(both, (grounding_term([grounded], masks, captioned) +
                                 grounding_term([coarse], masks, captioned)) / 2)
