from comfy_api.latest import io

from .core.boost import validate
from .core.settings import BOOST_DEFAULTS, TEMPERATURE_DEFAULTS, BoostSettings, TemperatureSettings
from .core.tokens import parse_token_indices
from .glue.boost import AttentionBoost, boosted_model
from .parameters import CATEGORY

BLOCKS = ("all", "map level")


class AttendExciteAttentionBoost(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        d = BOOST_DEFAULTS
        return io.Schema(
            node_id="AttendExciteAttentionBoost",
            display_name="Attention Boost (Attend-and-Excite, no gradients)",
            category=CATEGORY,
            description="Patches the model so that the subjects' attention is multiplied by alpha and every other "
                        "token's by beta, at every step of the chosen range; no gradients, any sampler. In "
                        "cross-attention (SD1.x, SD2.x, SDXL) as the rule is written; in joint attention (SD3, Flux, "
                        "Flux.2, Chroma, Qwen-Image, Z-Image) on the image's attention to the text only, "
                        "renormalised. Subjects come from 'CLIP Text Encode (Attend-and-Excite)'.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch; a clone is patched."),
                io.Float.Input("alpha", default=d.alpha, min=0.01, max=100.0, step=0.05,
                               tooltip="Multiplies the subject tokens' attention."),
                io.Float.Input("beta", default=d.beta, min=0.01, max=100.0, step=0.05,
                               tooltip="Multiplies every other token's attention, the start token included."),
                io.Boolean.Input("renormalise", default=d.renormalise,
                                 tooltip="Off: the rule as written (rows no longer sum to 1). On: each row is "
                                         "divided by its new sum, so only the balance between tokens changes. "
                                         "Joint attention always renormalises."),
                io.Float.Input("start_percent", default=d.start_percent, min=0.0, max=1.0, step=0.001,
                               tooltip="The part of sampling it acts on, as ComfyUI's own nodes give it."),
                io.Float.Input("end_percent", default=d.end_percent, min=0.0, max=1.0, step=0.001,
                               tooltip="Where along sampling it stops acting."),
                io.Combo.Input("blocks", options=list(BLOCKS), default=BLOCKS[0],
                               tooltip="Every cross-attention block, or only those of the level whose maps the "
                                       "Attend-and-Excite sampler reads. Joint attention: the blocks the sampler "
                                       "reads its maps in, either way."),
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


class AttendExciteAttentionTemperature(io.ComfyNode):
    """After TACA (Lv et al., ICCV 2025): in joint attention the image's many tokens dilute the few text
    tokens in the image queries' softmax; a temperature on those logits in the first steps rebalances it."""

    @classmethod
    def define_schema(cls):
        d = TEMPERATURE_DEFAULTS
        return io.Schema(
            node_id="AttendExciteAttentionTemperature",
            display_name="Attention Temperature (Attend-and-Excite, no gradients)",
            category=CATEGORY,
            description="Patches a joint-attention model (SD3, Flux, Flux.2, Chroma, Qwen-Image, Z-Image) so that "
                        "the image's attention logits over the text are multiplied by the temperature in the "
                        "first steps (after TACA), so the text weighs more against the many image tokens; the "
                        "image-to-image attention keeps its logits. No gradients, any sampler, no subjects needed.",
            inputs=[
                io.Model.Input("model", tooltip="The model to patch; a clone is patched."),
                io.Float.Input("temperature", default=d.temperature, min=0.1, max=10.0, step=0.01,
                               tooltip="Multiplies the image queries' logits over the text keys (TACA's gamma: "
                                       "1.2). 1 changes nothing; above 1 the text weighs more."),
                io.Float.Input("start_percent", default=d.start_percent, min=0.0, max=1.0, step=0.001,
                               tooltip="The part of sampling it acts on, as ComfyUI's own nodes give it."),
                io.Float.Input("end_percent", default=d.end_percent, min=0.0, max=1.0, step=0.001,
                               tooltip="Where along sampling it stops acting (TACA: the first 10% of the steps, "
                                       "where the layout is made; later it costs detail)."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def validate_inputs(cls, temperature, start_percent, end_percent):
        if start_percent > end_percent:
            return f"start_percent ({start_percent}) is after end_percent ({end_percent}); swap them"
        return True

    @classmethod
    def execute(cls, model, temperature, start_percent, end_percent) -> io.NodeOutput:
        boost = AttentionBoost(BoostSettings(1.0, 1.0), temperature=TemperatureSettings(temperature, start_percent,
                                                                                        end_percent))
        return io.NodeOutput(boosted_model(model, boost, map_level_only=False))


def default_inputs(node: type[io.ComfyNode] = AttendExciteAttentionBoost) -> dict:
    """A patch node's inputs as a new node has them (its model aside)."""
    return {entry.id: entry.default for entry in node.define_schema().inputs if entry.id != "model"}
