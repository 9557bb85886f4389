import torch
from comfy_api.latest import io, ui

from .core.heatmaps import heatmap_views, overlay, subject_masks
from .core.plot import peak_chart
from .core.record import AttentionRecord
from .parameters import ATTENTION, CATEGORY, FOLDED

def heatmap_step_input(folded: bool = False) -> io.Int.Input:
    """folded: under the sampler's advanced inputs (on the heatmap nodes it is their main input)."""
    return io.Int.Input("heatmap_step", default=0, min=0, max=10000, **(FOLDED if folded else {}),
                        tooltip="0: the heatmaps show each subject's mean map over the guided steps. n: they "
                                "also show the maps at step n (the nearest guided step).")


def mask_threshold_input() -> io.Float.Input:
    """Optional and last, so workflows saved before it load their widgets unchanged."""
    return io.Float.Input("mask_threshold", default=0.0, min=0.0, max=1.0, step=0.01, optional=True, **FOLDED,
                          tooltip="The masks output: 0 gives soft masks (each subject's map at heatmap_step, scaled "
                                  "to its own peak); above 0, 1 where that map reaches this share of its peak and "
                                  "0 elsewhere.")


def attention_outputs(with_record: bool = True) -> list:
    record = [ATTENTION.Output(display_name="attention",
                               tooltip="The recorded maps, for 'Attend-and-Excite Heatmap Overlay'.")]
    return [io.Image.Output(display_name="heatmaps",
                            tooltip="Per image and subject: the attention map the loss used, on a fixed 0-1 "
                                    "scale (dark = neglected), with the subject and its peak written on it."),
            io.Image.Output(display_name="peak_plot",
                            tooltip="Each subject's peak attention at every guided step, with the refinement "
                                    "thresholds."),
            *(record if with_record else []),
            io.String.Output(display_name="log",
                             tooltip="JSON: loss and peak attention of every subject at every guided step and "
                                     "refinement iteration."),
            io.Mask.Output(display_name="masks",
                           tooltip="One mask per image and subject, at the image's size (image 1's subjects in "
                                   "the prompt's order, then image 2's): where each subject's attention lies, at "
                                   "heatmap_step; see mask_threshold.")]


def attention_results(cls, record: AttentionRecord, latent: dict, heatmap_step: int,
                      mask_threshold: float) -> tuple[list, ui.PreviewImage]:
    """The values of attention_outputs() and the on-node preview of the heatmaps."""
    samples = latent["samples"]       # (B, C, h, w), or (B, C, frames, h, w) (Qwen-Image)
    batch = record.maps[0].shape[0] if record.maps else samples.shape[0]
    height, width = (side * record.pixels_per_cell for side in samples.shape[-2:])
    heatmaps = heatmap_views(record, batch, height, width, heatmap_step)
    masks = subject_masks(record.select(heatmap_step)[0], height, width, mask_threshold) if record.maps else \
        torch.zeros(batch, height, width)
    return ([heatmaps, peak_chart(record, batch), record, record.to_json(), masks],
            ui.PreviewImage(heatmaps, cls=cls))


class AttendExciteHeatmaps(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AttendExciteHeatmaps",
            display_name="Attend-and-Excite Heatmaps",
            category=CATEGORY,
            description="Shows what an 'Attend-and-Excite Sampler' did in its last run: the subjects' attention "
                        "heatmaps, their peak attention per step, and the log.",
            inputs=[ATTENTION.Input("attention", tooltip="From 'Attend-and-Excite Sampler'."),
                    io.Latent.Input("samples", tooltip="The sampled latent (so that this node runs after the "
                                                       "sampling, and sizes the heatmaps to the image)."),
                    heatmap_step_input(),
                    mask_threshold_input()],
            outputs=attention_outputs(with_record=False),
            is_output_node=True,
        )

    @classmethod
    def execute(cls, attention, samples, heatmap_step, mask_threshold=0.0) -> io.NodeOutput:
        attention.require_maps()
        (heatmaps, plot, _, log, masks), preview = attention_results(cls, attention, samples, heatmap_step,
                                                                     mask_threshold)
        return io.NodeOutput(heatmaps, plot, log, masks, ui=preview)


class AttendExciteHeatmapOverlay(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AttendExciteHeatmapOverlay",
            display_name="Attend-and-Excite Heatmap Overlay",
            category=CATEGORY,
            description="Blends each subject's attention map over the decoded image, so you see where every "
                        "subject landed. Each map is scaled to its own peak; the label gives the peak.",
            inputs=[io.Image.Input("image", tooltip="The decoded image(s) of the same sampler run."),
                    ATTENTION.Input("attention", tooltip="From an Attend-and-Excite sampler node."),
                    io.Float.Input("opacity", default=0.55, min=0.0, max=1.0, step=0.05,
                                   tooltip="0 shows the image only, 1 the map only."),
                    # Saved workflows keep this widget's value by position, so the rename from `step` loads.
                    io.Int.Input("heatmap_step", default=0, min=0, max=10000,
                                 tooltip="0: the mean map over the guided steps; n: the map at step n (the "
                                         "nearest guided step).")],
            outputs=[io.Image.Output(tooltip="One image per input image and subject.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, image, attention, opacity, heatmap_step) -> io.NodeOutput:
        maps, caption = attention.select(heatmap_step)
        blended = overlay(image, maps, attention.labels, opacity, caption)
        return io.NodeOutput(blended, ui=ui.PreviewImage(blended, cls=cls))
