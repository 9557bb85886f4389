"""The Attend-and-Excite inputs and types shared by the nodes, and their parsing."""
import inspect

from comfy_api.latest import io

from .core.losses import LOSSES
from .core.schedule import AUTO, format_thresholds, parse_thresholds
from .core.settings import DEFAULTS, GUIDANCE_MEMORY, LOSS_THRESHOLDS, Settings
from .core.tokens import parse_token_indices

CATEGORY = "sampling/attend_and_excite"
ATTENTION = io.Custom("AE_ATTENTION")
MAP_LEVELS = {"auto": None, "latent/2": 1, "latent/4": 2, "latent/8": 3}   # times the latent was halved
# V3's flag for the inputs the editor folds under "advanced" (newer ComfyUI); older trees have no such
# parameter and show every input. Only scale_factor, thresholds and steps_to_alter are meant to be touched
# first; the order of the inputs never changes (widget values are saved by position).
FOLDED = {"advanced": True} if "advanced" in inspect.signature(io.Input.__init__).parameters else {}


def guidance_inputs() -> list:
    return [
        io.Int.Input("steps_to_alter", default=DEFAULTS.steps_to_alter, min=0, max=10000,
                     tooltip="Guided steps that move the latent (steps 0 .. n-1), written for schedule_steps "
                             "steps. The paper: 25 of 50."),
        io.String.Input("thresholds", default=AUTO,
                        tooltip="step:threshold pairs. At each listed step, refinement repeats gradient steps "
                                "until every subject's peak attention reaches the threshold (divide_and_bind: its "
                                "total variation). Empty: no refinement. auto: the loss's own ("
                                + "; ".join(f"{name} {format_thresholds(t) or 'none'}" for name, t in
                                            LOSS_THRESHOLDS.items()) + ")."),
        io.Int.Input("max_refinement", **FOLDED, default=DEFAULTS.max_refinement, min=0, max=1000,
                     tooltip="At most this many refinement iterations at a threshold step."),
        io.Float.Input("scale_factor", default=DEFAULTS.scale_factor, min=0.0, max=1000.0, step=0.1,
                       tooltip="Gradient step size. 0 runs the guidance pass but never moves the latent."),
        io.Float.Input("scale_start", **FOLDED, default=DEFAULTS.scale_range[0], min=0.0, max=10.0, step=0.01,
                       tooltip="The step size is scale_factor * sqrt(s), s going linearly from scale_start "
                               "to scale_end over the steps."),
        io.Float.Input("scale_end", **FOLDED, default=DEFAULTS.scale_range[1], min=0.0, max=10.0, step=0.01,
                       tooltip="See scale_start."),
        io.Int.Input("smoothing_kernel", **FOLDED, default=DEFAULTS.smoothing_kernel, min=1, max=15, step=2,
                     tooltip="Size of the Gaussian that smooths each subject's map before its peak is taken."),
        io.Float.Input("smoothing_sigma", **FOLDED, default=DEFAULTS.smoothing_sigma, min=0.01, max=10.0, step=0.01,
                       tooltip="Sigma of that Gaussian, in the reference's own formula."),
        io.Int.Input("schedule_steps", **FOLDED, default=DEFAULTS.schedule_steps, min=1, max=10000,
                     tooltip="The step count that steps_to_alter and the threshold steps are written for; they "
                             "are rescaled to the sampled steps (step * steps / schedule_steps, rounded). Set it "
                             "to your step count to use them as they are."),
        io.String.Input("token_indices", **FOLDED, default="", optional=True,
                        tooltip="Optional override of the conditioning's subjects, as context positions: '2,5', "
                                "or '2+3,5' for a subject made of two pieces. Empty: the subjects that "
                                "'CLIP Text Encode (Attend-and-Excite)' attached."),
        io.Combo.Input("map_level", **FOLDED, options=list(MAP_LEVELS), default="auto", optional=True,
                       tooltip="Which UNet level's cross-attention the loss reads. auto: the model family's "
                               "(latent/4 for SD1.x, SD2.x and SDXL: 16x16 maps at 512 px, 32x32 at 1024 px)."),
    ]


def loss_input():
    """Last on both nodes, so workflows saved before it load their widgets unchanged."""
    return io.Combo.Input("loss", options=list(LOSSES), default=DEFAULTS.loss, optional=True, **FOLDED,
                          tooltip="What the latent is optimised for. attend_and_excite: every subject's peak "
                                  "(neglect). syngen: each modifier's map onto its noun's, apart from the other "
                                  "words (binding; needs modifiers, e.g. 'a red circle'). divide_and_bind: each "
                                  "subject spread over several regions, modifiers bound to their nouns. a_star: "
                                  "the subjects' maps kept apart and kept in place from step to step.")


def memory_input():
    """Last on both nodes, so workflows saved before it load their widgets unchanged."""
    return io.Combo.Input("guidance_memory", options=list(GUIDANCE_MEMORY), default=DEFAULTS.guidance_memory,
                          optional=True, **FOLDED,
                          tooltip="How the guidance pass keeps what its backward needs. fast: every activation of "
                                  "the layers it runs. lean: only their inputs, running each layer again in the "
                                  "backward (SDXL at 1024 px: about 0.5 GiB instead of 3.9, for about 1.4x the pass's "
                                  "work; same result). auto: lean where ComfyUI's free-memory estimate says fast "
                                  "will not fit beside the model.")


def validate_guidance(thresholds: str, token_indices: str) -> bool | str:
    try:
        parse_thresholds(thresholds)
        parse_token_indices(token_indices)
    except ValueError as error:
        return str(error)
    return True


def settings_from(*, thresholds: str, scale_start: float, scale_end: float, token_indices: str = "",
                  map_level: str = "auto", **same_names) -> Settings:
    """The nodes' guidance inputs as Settings: the text inputs read, the rest under their input names."""
    return Settings(thresholds=parse_thresholds(thresholds), scale_range=(scale_start, scale_end),
                    token_indices=parse_token_indices(token_indices), map_level=MAP_LEVELS[map_level], **same_names)
