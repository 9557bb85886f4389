"""The pack in a user's own workflow: a LoRA file loaded by ComfyUI's own LoRA loader, an
img2img pass (an encoded picture, denoise below 1) and a hires-fix second pass (the first
pass's latent upscaled by the stock Upscale Latent node, then sampled again at denoise 0.5),
each through the KSampler node as the editor runs it."""
import pytest
import torch
from safetensors.torch import save_file

import comfy.sd
import comfy.utils
import nodes
import support
from attend_and_excite.nodes.ksampler import AttendExciteKSampler
from support import default_inputs

# Refinement that random weights never satisfy, at the 10 sampled steps' threshold steps.
GUIDED = dict(default_inputs(), thresholds="0:1.0, 20:1.0", max_refinement=2)
OFF = dict(GUIDED, scale_factor=0.0, thresholds="")
LORA_TARGET = "input_blocks.1.1.transformer_blocks.0.attn2.to_k"     # a recorded block's cross-attention


@pytest.fixture(scope="module")
def model():
    with torch.inference_mode():
        return support.tiny_model(seed=5)


def ksampler(model, latent, guidance, denoise=1.0, seed=3):
    positive, negative = support.conditionings()
    with torch.inference_mode():
        result = AttendExciteKSampler.execute(model, seed, 10, 6.0, "euler", "normal", positive, negative,
                                              {"samples": latent}, denoise, **guidance).result
    return result[0]["samples"], result[3]


def stock(model, latent, denoise=1.0, seed=3):
    positive, negative = support.conditionings()
    with torch.inference_mode():
        return nodes.common_ksampler(model, seed, 10, 6.0, "euler", "normal", positive, negative,
                                     {"samples": latent}, denoise=denoise)[0]["samples"]


def lora_file(tmp_path, model) -> str:
    """A LoRA in the kohya layout ComfyUI reads (lora_unet_..., up/down, alpha), rank 4."""
    weight = model.model.diffusion_model.state_dict()[LORA_TARGET + ".weight"]
    generator = torch.Generator().manual_seed(11)
    name = "lora_unet_" + LORA_TARGET.replace(".", "_")
    path = tmp_path / "tiny_lora.safetensors"
    save_file({f"{name}.lora_up.weight": torch.randn(weight.shape[0], 4, generator=generator),
               f"{name}.lora_down.weight": torch.randn(4, weight.shape[1], generator=generator),
               f"{name}.alpha": torch.tensor(4.0)}, str(path))
    return str(path)


def test_a_lora_file_loaded_by_comfyui_acts_in_plain_steps_and_in_the_guidance_pass(model, tmp_path):
    lora = comfy.utils.load_torch_file(lora_file(tmp_path, model))
    with torch.inference_mode():
        patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0)
    assert len(patched.patches) == 1 and not model.patches        # ComfyUI's LoRA path patched a clone
    latent = torch.zeros(1, 4, 8, 8)
    assert torch.equal(ksampler(patched, latent, OFF)[0], stock(patched, latent))
    assert not torch.equal(stock(patched, latent), stock(model, latent))
    with_lora, record = ksampler(patched, latent, GUIDED)
    without, plain_record = ksampler(model, latent, GUIDED)
    assert not torch.allclose(record.maps[0], plain_record.maps[0])   # the pass ran the LoRA'd attention
    assert not torch.equal(with_lora, without)
    assert not model.patches and len(patched.patches) == 1          # nothing added to either model


def test_img2img_guides_the_steps_that_remain(model):
    """An encoded picture sampled at denoise 0.6: the guided steps are counted from the first
    step that runs; at zero scale the result is the stock KSampler's."""
    picture = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(ksampler(model, picture, OFF, denoise=0.6)[0], stock(model, picture, denoise=0.6))
    guided, record = ksampler(model, picture, GUIDED, denoise=0.6)
    assert [log.step for log in record.logs] == [0, 1, 2, 3, 4]
    assert record.logs[0].refinement_iterations == [2]
    assert not torch.equal(guided, stock(model, picture, denoise=0.6))


def test_a_hires_fix_second_pass_guides_the_upscaled_latent(model):
    """Pass 1 at 8 x 8, the stock Upscale Latent node to 16 x 16, pass 2 at denoise 0.5: the second
    pass records maps at the larger size and guides them; at zero scale it is the stock pass."""
    first, first_record = ksampler(model, torch.zeros(1, 4, 8, 8), GUIDED)
    with torch.inference_mode():
        upscaled = nodes.LatentUpscale().upscale({"samples": first}, "nearest-exact", 128, 128, "disabled")[0]
    assert upscaled["samples"].shape == (1, 4, 16, 16)
    assert torch.equal(ksampler(model, upscaled["samples"], OFF, denoise=0.5)[0],
                       stock(model, upscaled["samples"], denoise=0.5))
    second, record = ksampler(model, upscaled["samples"], GUIDED, denoise=0.5)
    assert first_record.maps[0].shape[-2:] == (2, 2) and record.maps[0].shape[-2:] == (4, 4)   # latent/4
    assert not torch.equal(second, stock(model, upscaled["samples"], denoise=0.5))
