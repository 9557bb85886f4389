"""Cross-check of the package's SD3 and Flux maps against public implementations', on one tiny
random transformer each: the public code records them in diffusers with its own attention
processor; the package records them in ComfyUI, on the same weights converted by ComfyUI's own
key maps (diffusers -> MMDiT / Flux).

    tests/harness/comfy_env.sh python tests/harness/crosscheck_mmdit.py sd3 --source PATH --diffusers DIR
    tests/harness/comfy_env.sh python tests/harness/crosscheck_mmdit.py flux --source PATH --diffusers DIR

sd3: gsn-factory (Grimal et al., v1.0.0, github.com/grimalPaul/gsn-factory), PATH its `src/models`
folder, DIR a folder holding diffusers 0.30.3 (the version it pins; pip install --target); its
processor and store are imported from there, not copied. flux: FOCUS (Bill et al., 2025,
github.com/ericbill21/FOCUS), PATH its root, DIR diffusers 0.33.1; its Flux attention processor,
with a collector in place of its controller (the processor hands it the heads' mean of the image
queries' probabilities over the text keys; they are averaged over the blocks, as FOCUS does).
Prints the relative difference of the two (B, h, w, T) maps. Not part of the test suite: it needs
both, and nothing here can download them.
"""
import argparse
import os
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

CONTEXT, POOLED, LATENT, SIGMA = 48, 32, (1, 16, 16, 12), 0.8
TEXT_TOKENS = {"sd3": 77 + 12, "flux": 12}
FLUX = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=POOLED, context_in_dim=CONTEXT,
            hidden_size=64, mlp_ratio=4.0, num_heads=2, depth=2, depth_single_blocks=1, axes_dim=[8, 12, 12],
            theta=10000, qkv_bias=True, guidance_embed=True, patch_size=2)


def perturbed(torch, model):
    with torch.no_grad():     # diffusers zero-initialises some projections: give every weight a value
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval()


def gsn_factory_sd3(torch, x, context, pooled):
    """(the diffusers model, its (B, h, w, T) maps): gsn-factory's store of every joint block,
    averaged as its aggregate_attention does."""
    from diffusers import SD3Transformer2DModel
    from gsn_criterion.utils_attention import AttentionStoreSD3, JointAttnProcessor2_0Store
    torch.manual_seed(0)
    model = perturbed(torch, SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=64, num_attention_heads=2,
        joint_attention_dim=CONTEXT, caption_projection_dim=128, pooled_projection_dim=POOLED, out_channels=16,
        pos_embed_max_size=16))
    store = AttentionStoreSD3(res_height=x.shape[-2] // 2, res_width=x.shape[-1] // 2, executor=None,
                              batch_size=x.shape[0])
    names = list(model.attn_processors)
    model.set_attn_processor({name: JointAttnProcessor2_0Store(attnstore=store, block_id=int(name.split(".")[1]))
                              for name in names})
    store.num_att_layers = len(names)
    with torch.no_grad():
        model(hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled,
              timestep=torch.tensor([SIGMA * 1000.0]))
    clip, t5 = store.aggregate_attention()
    return model, torch.cat([clip, t5], dim=-1)


def focus_flux(torch, x, context, pooled):
    """(the diffusers model, its (B, h, w, T) maps): FOCUS's Flux processor on every block; the
    double blocks hand over their maps, averaged over the blocks."""
    from diffusers import FluxTransformer2DModel
    from src.flux.attention_processor import FluxAttnProcessor
    torch.manual_seed(0)
    model = perturbed(torch, FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=1, attention_head_dim=32, num_attention_heads=2,
        joint_attention_dim=CONTEXT, pooled_projection_dim=POOLED, guidance_embeds=True, axes_dims_rope=(8, 12, 12)))
    saved = []
    collector = types.SimpleNamespace(is_active=lambda: True, save_cross_attention=saved.append)
    model.set_attn_processor(FluxAttnProcessor(collector))
    b, c, h, w = x.shape
    packed = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w // 4, c * 4)
    image_ids = torch.zeros(h // 2, w // 2, 3)
    image_ids[..., 1] += torch.arange(h // 2)[:, None]
    image_ids[..., 2] += torch.arange(w // 2)[None, :]
    with torch.no_grad():
        model(hidden_states=packed, encoder_hidden_states=context, pooled_projections=pooled,
              timestep=torch.tensor([SIGMA]), img_ids=image_ids.reshape(-1, 3),
              txt_ids=torch.zeros(context.shape[1], 3), guidance=torch.tensor([3.5]))
    maps = torch.stack(saved).mean(dim=0).transpose(-1, -2)        # (B, h*w, T)
    return model, maps.reshape(b, h // 2, w // 2, -1)


def package_maps(torch, name, diffusers_model, x, context, pooled):
    """(B, h, w, T): the package's recorder in ComfyUI's guidance pass, on the converted weights."""
    import comfy.model_detection
    import comfy.sd
    import support
    from attend_and_excite.nodes.glue.family import detect_family
    from attend_and_excite.nodes.glue.guidance import GuidancePass, autograd_weights
    from attend_and_excite.nodes.glue.sampler import recorder_for
    state_dict = {k: v.clone() for k, v in diffusers_model.state_dict().items()}
    extra = {"pooled_output": pooled}
    if name == "sd3":
        patcher = comfy.sd.load_diffusion_model_state_dict(state_dict, model_options={"dtype": torch.float32})
    else:     # ComfyUI's loader assumes Flux's full width: the tiny model is built from its config instead
        with torch.inference_mode():
            patcher = support.tiny_model(config=FLUX, family="Flux")
            patcher.model.diffusion_model.load_state_dict(comfy.model_detection.convert_diffusers_mmdit(state_dict))
        extra["guidance"] = 3.5
    base = patcher.model
    family = detect_family(base)
    recorder = support.listing(recorder_for(base.diffusion_model, family, None))
    entry = {"model_conds": base.extra_conds(cross_attn=context, device=torch.device("cpu"), **extra),
             "uuid": "positive"}
    guidance = GuidancePass(base, entry, recorder, subjects=[[2]], kept=family.kept(context.shape[1], [7]))
    base.current_patcher = patcher
    taken = []
    take = recorder.take_average
    recorder.take_average = lambda: taken.append(take()) or taken[-1]
    with autograd_weights(guidance.modules), torch.inference_mode(False), torch.enable_grad():
        guidance.evaluate(x, torch.tensor([SIGMA]), patcher.model_options)
    return taken[0].detach(), family.name, [number for number, _ in recorder.recorded]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=["sd3", "flux"])
    parser.add_argument("--source", required=True, help="gsn-factory's src/models folder (sd3), FOCUS's root (flux)")
    parser.add_argument("--diffusers", help="a folder holding the diffusers version the source pins")
    args = parser.parse_args()
    sys.path[:0] = [p for p in (args.diffusers, args.source) if p]
    # Imported by the public code for functions these maps do not use (OpenCV, the diffusers A&E
    # pipeline whose import needs an older transformers, FOCUS's controller and losses): stand-ins.
    stand_ins = {"cv2": {}, "src.controller": {"Controller": object},
                 "diffusers.pipelines.stable_diffusion_attend_and_excite.pipeline_stable_diffusion_attend_and_excite":
                     {"GaussianSmoothing": None}}
    for module, names in stand_ins.items():
        sys.modules.setdefault(module, types.SimpleNamespace(**names))
    import torch
    import support
    support.import_comfy()
    support.import_package()
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(*LATENT, generator=generator)
    context = torch.randn(1, TEXT_TOKENS[args.model], CONTEXT, generator=generator)
    pooled = torch.randn(1, POOLED, generator=generator)
    public = gsn_factory_sd3 if args.model == "sd3" else focus_flux
    diffusers_model, theirs = public(torch, x, context, pooled)
    ours, family, blocks = package_maps(torch, args.model, diffusers_model, x, context, pooled)
    difference = float((ours - theirs).norm() / theirs.norm())
    print(f"detected as {family}; recorded blocks {blocks}; maps {tuple(ours.shape)} against {tuple(theirs.shape)}")
    print(f"relative difference |ours - public| / |public| = {difference:.3e}; "
          f"largest entry difference {float((ours - theirs).abs().max()):.3e}")


if __name__ == "__main__":
    main()
