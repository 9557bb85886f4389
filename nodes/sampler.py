import comfy.samplers
from comfy_api.latest import io

from .core.record import AttentionRecord
from .glue.sampler import attend_excite_sampler
from .parameters import ATTENTION, CATEGORY, guidance_inputs, loss_input, memory_input, settings_from, validate_guidance


class AttendExciteSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AttendExciteSampler",
            display_name="Attend-and-Excite Sampler",
            category=CATEGORY,
            description="A SAMPLER for SamplerCustom / SamplerCustomAdvanced: the chosen sampler with "
                        "Attend-and-Excite guidance on the early steps.",
            inputs=[
                io.Combo.Input("sampler_name", options=comfy.samplers.SAMPLER_NAMES,
                               tooltip="The base sampling algorithm."),
                *guidance_inputs(),
                loss_input(),
                memory_input(),
            ],
            outputs=[io.Sampler.Output(),
                     ATTENTION.Output(display_name="attention",
                                      tooltip="Filled by each sampling run: connect it to 'Attend-and-Excite "
                                              "Heatmaps' or 'Attend-and-Excite Heatmap Overlay'.")],
        )

    @classmethod
    def validate_inputs(cls, thresholds, token_indices=""):
        return validate_guidance(thresholds, token_indices)

    @classmethod
    def execute(cls, sampler_name, **guidance) -> io.NodeOutput:
        record = AttentionRecord()
        return io.NodeOutput(attend_excite_sampler(sampler_name, settings_from(**guidance), record), record)
