from comfy_api.latest import io

from .core.boost import validate
from .core.settings import BOOST_DEFAULTS, BoostSettings
from .core.tokens import parse_token_indices
from .glue.boost import AttentionBoost, boosted_model
from .parameters import CATEGORY

BLOCKS = ("all", "map level")


def default_inputs() -> dict:
    """The boost's inputs as a new node has them (its model aside)."""
    return {entry.id: entry.default for entry in AttendExciteAttentionBoost.define_schema().inputs
            if entry.id != "model"}


class AttendExciteAttentionBoost(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        d = BOOST_DEFAULTS
        return io.Schema(
            node_id="AttendExciteAttentionBoost",
            display_name="Attention Boost (Attend-and-Excite, no gradients)",
            category=CATEGORY,
            description="Patches the model so that, in cross-attention, the subjects' attention is multiplied by "
                        "alpha and every other token's by beta, at every step of the chosen range; no gradients, "
                        "any sampler. Subjects come from 'CLIP Text Encode (Attend-and-Excite)'.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch (SD1.x, SD2.x or SDXL); a clone is patched."),
                io.Float.Input("alpha", default=d.alpha, min=0.01, max=100.0, step=0.05,
                               tooltip="Multiplies the subject tokens' attention."),
                io.Float.Input("beta", default=d.beta, min=0.01, max=100.0, step=0.05,
                               tooltip="Multiplies every other token's attention, the start token included."),
                io.Boolean.Input("renormalise", default=d.renormalise,
                                 tooltip="Off: the rule as written (rows no longer sum to 1). On: each row is "
                                         "divided by its new sum, so only the balance between tokens changes."),
                io.Float.Input("start_percent", default=d.start_percent, min=0.0, max=1.0, step=0.001,
                               tooltip="The part of sampling it acts on, as ComfyUI's own nodes give it."),
                io.Float.Input("end_percent", default=d.end_percent, min=0.0, max=1.0, step=0.001,
                               tooltip="Where along sampling it stops acting."),
                io.Combo.Input("blocks", options=list(BLOCKS), default=BLOCKS[0],
                               tooltip="Every cross-attention block, or only those of the level whose maps the "
                                       "Attend-and-Excite sampler reads."),
                io.String.Input("token_indices", default="", optional=True,
                                tooltip="Optional: subject positions ('2,5') for the positive prompt's rows, "
                                        "instead of the subjects its conditioning carries."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def validate_inputs(cls, alpha, beta, start_percent, end_percent, token_indices=""):
        try:
            validate(alpha, beta)
            parse_token_indices(token_indices)
        except ValueError as error:
            return str(error)
        if start_percent > end_percent:
            return f"start_percent ({start_percent}) is after end_percent ({end_percent}); swap them"
        return True

    @classmethod
    def execute(cls, model, alpha, beta, renormalise, start_percent, end_percent, blocks,
                token_indices="") -> io.NodeOutput:
        settings = BoostSettings(alpha, beta, renormalise, start_percent, end_percent)
        boost = AttentionBoost(settings, parse_token_indices(token_indices))
        return io.NodeOutput(boosted_model(model, boost, map_level_only=blocks == "map level"))
