"""Parity with the reference: diffusers' StableDiffusionAttendAndExcitePipeline and this
package on the same random UNet weights, noise, embeddings and DDIM timesteps.

Deterministic DDIM is Euler on the matching sigmas (final sigma 0), and the reference's
z-space step equals x <- x - alpha (1 + sigma^2) grad_x L in ComfyUI's sampler space.
fp32 throughout.
"""
import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="parity needs diffusers (tests/requirements.txt)")
from diffusers import DDIMScheduler, UNet2DConditionModel  # noqa: E402
from diffusers.pipelines.deprecated.stable_diffusion_attend_and_excite.pipeline_stable_diffusion_attend_and_excite import (  # noqa: E402,E501
    StableDiffusionAttendAndExcitePipeline,
)

import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.supported_models  # noqa: E402
import comfy.utils  # noqa: E402
import support  # noqa: E402
from attend_and_excite.nodes.core.record import AttentionRecord
from attend_and_excite.nodes.core.settings import Settings  # noqa: E402
from attend_and_excite.nodes.glue.sampler import attend_excite_sampler  # noqa: E402

STEPS, GUIDANCE, SCALE_FACTOR = 10, 7.5, 20.0
THRESHOLDS = {0: 0.05, 2: 0.5, 4: 0.8}
# Peaks and losses are read from the same fp32 maps on both sides; what separates them is
# summation order (SDPA vs explicit attention elsewhere in the UNet, continuous vs integer
# timesteps): about 1e-7 on values of order 1, so 1e-5 leaves room without hiding a slip.
# The final latent carries 10 steps and ~70 gradient updates: 1e-4 relative. A step size
# off by 1% moves it by about 1e-2 relative (checked below), far outside both.
PEAK_TOL, LATENT_RTOL = 1e-5, 1e-4

UNET_CONFIG = dict(support.TINY_UNET, model_channels=32, channel_mult=[1, 2, 2, 2], num_res_blocks=[1, 1, 1, 1],
                   transformer_depth=[1, 1, 1, 0], transformer_depth_output=[1, 1, 1, 1, 1, 1, 0, 0],
                   context_dim=64)


class RecordingPipeline(StableDiffusionAttendAndExcitePipeline):
    """The reference, recording every loss evaluation in order."""
    evaluations: list

    def _compute_loss(self, max_attention_per_index):
        loss = super()._compute_loss(max_attention_per_index)
        self.evaluations.append(([float(m) for m in max_attention_per_index], float(loss)))
        return loss


@pytest.fixture(scope="module")
def shared():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(32, 64, 64, 64), cross_attention_dim=64, attention_head_dim=8,
                                layers_per_block=1, sample_size=16)
    support.initialise(unet, seed=5)
    comfy_model = comfy.supported_models.SD15(dict(UNET_CONFIG)).get_model({})
    key_map = comfy.utils.unet_to_diffusers(UNET_CONFIG)
    diffusers_state = unet.state_dict()
    comfy_state = {comfy_key: diffusers_state[d_key] for d_key, comfy_key in key_map.items()
                   if d_key in diffusers_state}
    missing, unexpected = comfy_model.diffusion_model.load_state_dict(comfy_state, strict=False)
    assert not missing and not unexpected
    patcher = comfy.model_patcher.ModelPatcher(comfy_model, load_device=torch.device("cpu"),
                                               offload_device=torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    cond = torch.randn(1, 77, 64, generator=generator)
    uncond = torch.randn(1, 77, 64, generator=generator)
    noise = torch.randn(1, 4, 16, 16, generator=generator)
    return unet, patcher, cond, uncond, noise


def reference_run(unet, cond, uncond, noise):
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=True, steps_offset=0, timestep_spacing="trailing")
    pipe = RecordingPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
                             safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.evaluations = []
    out = pipe(prompt=None, prompt_embeds=cond, negative_prompt_embeds=uncond, token_indices=[2, 5],
               num_inference_steps=STEPS, guidance_scale=GUIDANCE, latents=noise.clone(), max_iter_to_alter=5,
               thresholds=THRESHOLDS, scale_factor=SCALE_FACTOR, attn_res=(4, 4), output_type="latent",
               height=128, width=128)
    return out.images, pipe.evaluations, scheduler.timesteps


def package_run(patcher, cond, uncond, noise, timesteps, scale_factor=SCALE_FACTOR):
    sampling = patcher.model.model_sampling
    sigmas = torch.cat([sampling.sigma(timesteps.float()), torch.zeros(1)])
    positive = [[cond, {"attend_excite": {"subjects": [[2], [5]], "labels": ["2", "5"], "end_columns": []}}]]
    settings = Settings(steps_to_alter=5, thresholds=THRESHOLDS, max_refinement=20, scale_factor=scale_factor,
                        schedule_steps=STEPS)
    record = AttentionRecord()
    with torch.inference_mode():
        samples = comfy.sample.sample_custom(patcher, noise, GUIDANCE, attend_excite_sampler("euler", settings, record),
                                             sigmas, positive, [[uncond, {}]], torch.zeros_like(noise), seed=0,
                                             disable_pbar=True)
    return samples * 0.18215, record.logs    # back from ComfyUI's latent scaling to the UNet's own


def test_step_by_step_parity_with_diffusers(shared):
    unet, patcher, cond, uncond, noise = shared
    reference_latent, evaluations, timesteps = reference_run(unet, cond, uncond, noise)
    ours, logs = package_run(patcher, cond, uncond, noise, timesteps)

    # The reference scores every step; the package only the guided ones (0..4). At a
    # refinement step the reference's first try repeats the forward it already had.
    by_step, index = [], 0
    for step in range(STEPS):
        log = logs[step] if step < len(logs) else None
        count = 1 if log is None or not log.refinement_iterations[0] else len(log.losses) + 1
        records = evaluations[index:index + count]
        index += count
        by_step.append(records if count == 1 else records[:1] + records[2:])
    assert index == len(evaluations)
    assert [log.step for log in logs] == [0, 1, 2, 3, 4]
    for log in logs:
        reference = by_step[log.step]
        assert len(log.losses) == len(reference), f"step {log.step}: refinement iteration counts differ"
        for (peaks, loss), our_loss, our_peaks in zip(reference, log.losses, log.peaks):
            assert our_loss[0] == pytest.approx(loss, abs=PEAK_TOL)
            assert our_peaks[0] == pytest.approx(peaks, abs=PEAK_TOL)
    assert [log.refinement_iterations[0] for log in logs] == [20, 0, 20, 0, 20]
    assert torch.allclose(ours, reference_latent, rtol=LATENT_RTOL, atol=LATENT_RTOL * reference_latent.abs().max())


def test_parity_check_catches_a_wrong_step_size(shared):
    unet, patcher, cond, uncond, noise = shared
    reference_latent, _, timesteps = reference_run(unet, cond, uncond, noise)
    off, _ = package_run(patcher, cond, uncond, noise, timesteps, scale_factor=SCALE_FACTOR * 1.01)
    error = (off - reference_latent).abs().max() / reference_latent.abs().max()
    assert error > 10 * LATENT_RTOL
