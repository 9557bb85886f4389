"""The pictures: attention record, heatmap tiles, overlays and the peak chart (pure torch and Pillow)."""
import json

import pytest
import torch

from attend_and_excite.nodes.core.excite import StepLog
from attend_and_excite.nodes.core.heatmaps import RAMP, colorize, heatmap_views, overlay, subject_masks
from attend_and_excite.nodes.core.plot import BOTTOM, HEIGHT, LEFT, RIGHT, TOP, WIDTH, peak_chart
from attend_and_excite.nodes.core.record import AttentionRecord

BAND = 40   # rows at the top of a tile (up to 140 px high) that may hold its label


def record_of(maps_per_step, thresholds=None, labels=("cat", "frog")):
    record = AttentionRecord()
    record.start("SD1.x", list(labels), thresholds or {}, 10)
    for step, maps in maps_per_step:
        peaks = maps.amax(dim=(-1, -2))
        loss = 1 - peaks.amin(dim=-1)
        log = StepLog.read(step, losses=[loss, loss], peaks=[peaks * 0.5, peaks], iterations=torch.zeros(len(loss)),
                           skipped=torch.tensor(0))
        record.add(log, maps)
    return record


def corner_maps(batch=1):
    """Subject 0 bright in the top-left quarter, subject 1 weak in the bottom-right one."""
    maps = torch.zeros(batch, 2, 4, 4)
    maps[:, 0, :2, :2] = 1.0
    maps[:, 1, 2:, 2:] = 0.2
    return maps


def test_record_mean_step_choice_and_json():
    a, b = corner_maps(), corner_maps() * 0.5
    record = record_of([(0, a), (2, b)], thresholds={0: 0.05})
    mean, caption = record.select(0)
    assert torch.allclose(mean, (a + b) / 2) and caption == "mean of steps 1-3"
    assert torch.equal(record.select(3)[0], b) and record.select(3)[1] == "step 3"
    assert record.select(1)[1] == "step 1" and record.select(50)[1] == "step 3"
    log = json.loads(record.to_json())
    assert log["subjects"] == ["cat", "frog"] and log["thresholds"] == {"0": 0.05}
    assert [s["step"] for s in log["steps"]] == [0, 2]
    record.start("SD1.x", ["dog"], {}, 4)                  # a new run clears the previous one
    with pytest.raises(ValueError, match="no guided step was recorded"):
        record.select(0)


def test_colour_ramp_runs_dark_to_bright():
    values = colorize(torch.linspace(0, 1, 9))
    assert torch.allclose(values[0], RAMP[0]) and torch.allclose(values[-1], RAMP[-1])
    assert (values.sum(-1).diff() > 0).all()


def test_heatmap_tiles_show_each_subject_where_it_is_on_a_fixed_scale():
    record = record_of([(0, corner_maps(batch=2))])
    tiles = heatmap_views(record, 2, 128, 192, step=0)
    assert tiles.shape == (4, 128, 192, 3)                      # images x subjects, sized to the image
    cat, frog = tiles[0], tiles[1]
    assert torch.allclose(cat[BAND:48, :72], RAMP[-1].expand(8, 72, 3), atol=1 / 255)   # cell centres hold 1
    assert torch.allclose(cat[88:, 120:], RAMP[0].expand(40, 72, 3), atol=1 / 255)
    assert torch.allclose(frog[112:, 168:], colorize(torch.tensor(0.2)), atol=1 / 255)  # weak stays dim
    assert (cat[:BAND, :60] > 0.95).all(-1).any()                 # white label text on the band
    assert torch.equal(tiles[0], tiles[2])                        # same maps for both images
    with_step = heatmap_views(record_of([(0, corner_maps()), (1, corner_maps() * 0.1)]), 1, 128, 128, step=2)
    assert with_step.shape == (4, 128, 128, 3)                    # the mean, then step 2
    assert torch.allclose(with_step[0, BAND:48, :48], colorize(torch.tensor(0.55)), atol=1 / 255)
    assert torch.allclose(with_step[2, BAND:48, :48], colorize(torch.tensor(0.1)), atol=1 / 255)


def test_no_guided_step_gives_one_labelled_dark_tile_per_image():
    record = AttentionRecord()
    record.start("SD1.x", ["cat"], {}, 10)
    tiles = heatmap_views(record, 3, 64, 48, step=0)
    assert tiles.shape == (3, 64, 48, 3) and tiles[:, BAND:].max() == 0


def test_overlay_blends_each_subject_scaled_to_its_own_peak():
    image = torch.rand(2, 128, 128, 3)
    maps = corner_maps()
    record = record_of([(0, maps)])
    only_image = overlay(image, *record.select(0)[:1], record.labels, 0.0, "")
    assert only_image.shape == (4, 128, 128, 3)
    assert torch.allclose(only_image[0, BAND:], image[0, BAND:], atol=1 / 255)
    assert torch.allclose(only_image[3, BAND:], image[1, BAND:], atol=1 / 255)
    only_map = overlay(image, maps, record.labels, 1.0, "")
    assert torch.allclose(only_map[1, 112:, 112:], RAMP[-1].expand(16, 16, 3), atol=1 / 255)  # weak, scaled to 1
    with pytest.raises(ValueError, match="same sampler run"):
        overlay(torch.rand(3, 8, 8, 3), torch.zeros(2, 1, 4, 4), ["cat"], 0.5, "")


def test_peak_chart_draws_lines_thresholds_and_refinement():
    maps = corner_maps(batch=2)
    record = record_of([(0, maps), (4, maps), (9, maps * 0.5)], thresholds={4: 0.8})
    chart = peak_chart(record, 2)
    assert chart.shape == (2, HEIGHT, WIDTH, 3)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    x = round(LEFT + plot_w * 5 / 10)                   # threshold at step index 4, drawn at step 5
    y = round(TOP + plot_h * (1 - 0.8))
    assert (chart[0, y - 1:y + 2, x - 10:x + 10] > 0.9).all(-1).any()
    cat_blue = torch.tensor([66, 165, 245]) / 255
    y_cat = round(TOP + plot_h * (1 - 1.0))             # cat's peak 1.0 after refinement at step 1
    near = chart[0, y_cat - 2:y_cat + 3, round(LEFT + plot_w * 1 / 10) - 2:round(LEFT + plot_w * 1 / 10) + 3]
    assert ((near - cat_blue).abs().max(-1).values < 0.02).any()
    empty = AttentionRecord()
    empty.start("SD1.x", ["cat"], {0: 0.5}, 10)
    assert peak_chart(empty, 1).shape == (1, HEIGHT, WIDTH, 3)


def test_subject_masks_are_each_map_at_the_image_scale_image_by_image():
    """A known 2 x 2 map at 8x gives the known 16 x 16 mask: each cell's value (scaled to the
    map's own peak) over its 8 x 8 pixels, bilinear between cell centres; one mask per image
    and subject, image 1's subjects first."""
    maps = torch.zeros(2, 2, 2, 2)
    maps[0, 0] = torch.tensor([[0.8, 0.0], [0.0, 0.0]])     # image 1, subject 1: top-left cell
    maps[0, 1] = torch.tensor([[0.0, 0.0], [0.0, 0.2]])     # image 1, subject 2: weak, bottom-right
    maps[1, 0] = torch.tensor([[0.0, 0.4], [0.0, 0.0]])     # image 2, subject 1: top-right
    masks = subject_masks(maps, 16, 16, threshold=0.0)
    assert masks.shape == (4, 16, 16)
    assert masks[0, :4, :4].eq(1).all() and masks[0, 12:, :].eq(0).all() and masks[0, :, 12:].eq(0).all()
    assert torch.allclose(masks[0, 0, :8], torch.tensor([1, 1, 1, 1, 0.9375, 0.8125, 0.6875, 0.5625]))
    assert torch.equal(masks[1], masks[0].flip(0, 1))        # scaled to its own peak: as strong as subject 1
    assert torch.equal(masks[2], masks[0].flip(1))
    assert masks[3].eq(0).all()                              # image 2's second subject: no attention at all
    hard = subject_masks(maps, 16, 16, threshold=0.5)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(hard, (masks >= 0.5).float()) and hard[0, :4, :8].eq(1).all() and hard[0, 8:].eq(0).all()
