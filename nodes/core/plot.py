"""The per-step peak attention of each subject against the refinement thresholds,
drawn with Pillow: one chart per image of the batch."""
import numpy as np
import torch
from PIL import Image, ImageDraw

from .heatmaps import font
from .record import AttentionRecord

SUBJECT_COLOURS = [(66, 165, 245), (239, 83, 80), (102, 187, 106), (255, 202, 40), (171, 71, 188),
                   (38, 198, 218), (255, 112, 67), (141, 110, 99)]
WIDTH, HEIGHT = 768, 432
LEFT, RIGHT, TOP, BOTTOM = 56, 150, 44, 44


def peak_chart(record: AttentionRecord, batch: int) -> torch.Tensor:
    """(B, HEIGHT, WIDTH, 3): solid lines are each subject's peak at the evaluation
    that moved the latent; a thin bar below a point shows where refinement started;
    white dashes are the thresholds refinement aimed for."""
    return torch.stack([_chart(record, row) for row in range(batch)])


def _chart(record: AttentionRecord, row: int) -> torch.Tensor:
    picture = Image.new("RGB", (WIDTH, HEIGHT), (24, 24, 28))
    draw = ImageDraw.Draw(picture)
    small, title = font(12), font(15)
    last_step = max([log.step for log in record.logs] + list(record.thresholds) + [0]) + 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x_of(step):  # steps shown 1-based, as the progress text counts them
        return LEFT + plot_w * step / max(last_step, 1)

    def y_of(value):
        return TOP + plot_h * (1.0 - value)

    draw.text((LEFT, 12), f"Peak attention per subject (image {row + 1})", font=title, fill=(235, 235, 235))
    for tick in np.linspace(0, 1, 6):
        y = y_of(tick)
        draw.line((LEFT, y, LEFT + plot_w, y), fill=(60, 60, 66))
        draw.text((LEFT - 8, y), f"{tick:.1f}", font=small, fill=(180, 180, 180), anchor="rm")
    for step in sorted({1, last_step, *range(0, last_step + 1, max(1, last_step // 8))} - {0}):
        draw.text((x_of(step), TOP + plot_h + 8), str(step), font=small, fill=(180, 180, 180), anchor="mt")
    draw.text((LEFT + plot_w / 2, HEIGHT - 14), "step", font=small, fill=(180, 180, 180), anchor="mm")

    for step, value in record.thresholds.items():
        y, x = y_of(value), x_of(step + 1)
        for start in range(-14, 14, 6):
            draw.line((x + start, y, x + start + 3, y), fill=(245, 245, 245), width=2)
        draw.text((x + 16, y), f"{value:g}", font=small, fill=(245, 245, 245), anchor="lm")

    for subject, name in enumerate(record.labels):
        colour = SUBJECT_COLOURS[subject % len(SUBJECT_COLOURS)]
        points = []
        for log in record.logs:
            x = x_of(log.step + 1)
            first, final = log.peaks[0][row][subject], log.peaks[-1][row][subject]
            if len(log.peaks) > 1:
                draw.line((x, y_of(first), x, y_of(final)), fill=colour, width=1)
            points.append((x, y_of(final)))
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse((x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=colour)
        legend_y = TOP + 18 * subject
        draw.rectangle((WIDTH - RIGHT + 16, legend_y + 3, WIDTH - RIGHT + 28, legend_y + 13), fill=colour)
        draw.text((WIDTH - RIGHT + 34, legend_y), name[:16], font=small, fill=(235, 235, 235))
    legend_y = TOP + 18 * len(record.labels)
    draw.line((WIDTH - RIGHT + 16, legend_y + 8, WIDTH - RIGHT + 28, legend_y + 8), fill=(245, 245, 245), width=2)
    draw.text((WIDTH - RIGHT + 34, legend_y), "threshold", font=small, fill=(235, 235, 235))
    return torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0)
