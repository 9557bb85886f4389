import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
from comfy_api.latest import io

from .core.record import AttentionRecord
from .glue.sampler import attend_excite_sampler
from .heatmaps import attention_outputs, attention_results, heatmap_step_input, mask_threshold_input
from .parameters import CATEGORY, guidance_inputs, loss_input, memory_input, settings_from, validate_guidance


class AttendExciteKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AttendExciteKSampler",
            display_name="KSampler (Attend-and-Excite)",
            category=CATEGORY,
            description="KSampler that, during the early steps, moves the latent until every subject of the "
                        "prompt wins some region of the cross-attention maps (Attend-and-Excite).",
            inputs=[
                io.Model.Input("model", tooltip="The model used for denoising (SD1.x, SD2.x, SDXL, SD3/SD3.5, "
                                                "Flux.1, Z-Image, Qwen-Image, Flux.2 or Chroma)."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=True,
                             tooltip="The random seed used for creating the noise."),
                io.Int.Input("steps", default=50, min=1, max=10000, tooltip="The number of denoising steps."),
                io.Float.Input("cfg", default=7.5, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS,
                               tooltip="The sampling algorithm."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS,
                               tooltip="The scheduler controls how noise is removed over the steps."),
                io.Conditioning.Input("positive", tooltip="From 'CLIP Text Encode (Attend-and-Excite)'."),
                io.Conditioning.Input("negative", tooltip="The negative conditioning."),
                io.Latent.Input("latent_image", tooltip="The latent image to denoise."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="The amount of denoising applied."),
                *guidance_inputs(),
                heatmap_step_input(folded=True),
                loss_input(),
                mask_threshold_input(),
                memory_input(),
            ],
            outputs=[io.Latent.Output(display_name="LATENT"), *attention_outputs()],
        )

    @classmethod
    def validate_inputs(cls, thresholds, token_indices=""):
        return validate_guidance(thresholds, token_indices)

    @classmethod
    def execute(cls, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                denoise, heatmap_step=0, mask_threshold=0.0, **guidance) -> io.NodeOutput:
        record = AttentionRecord()
        settings = settings_from(**guidance)
        latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
        noise = comfy.sample.prepare_noise(latent, seed, latent_image.get("batch_index"))
        sigmas = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                         scheduler=scheduler, denoise=denoise,
                                         model_options=model.model_options).sigmas
        sampler = attend_excite_sampler(sampler_name, settings, record)
        samples = comfy.sample.sample_custom(
            model, noise, cfg, sampler, sigmas, positive, negative, latent,
            noise_mask=latent_image.get("noise_mask"), callback=latent_preview.prepare_callback(model, steps),
            disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
        results, preview = attention_results(cls, record, latent_image, heatmap_step, mask_threshold)
        return io.NodeOutput({**latent_image, "samples": samples}, *results, ui=preview)
