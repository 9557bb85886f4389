"""Cross-check of the package's SD3 maps against a public implementation's, on one tiny random
SD3 transformer: gsn-factory (Grimal et al., v1.0.0, github.com/grimalPaul/gsn-factory) records
them in diffusers with its own attention processor and store; the package records them in
ComfyUI, on the same weights converted by ComfyUI's own loader (diffusers keys -> MMDiT).

    tests/harness/comfy_env.sh python tests/harness/crosscheck_sd3.py --gsn-factory PATH [--diffusers PATH]

PATH: gsn-factory's `src/models` folder (its `gsn_criterion` package is imported from there, not
copied); --diffusers: a folder holding diffusers 0.30.3, the version gsn-factory pins (pip install
--target). Prints the relative difference of the two (B, h, w, T) maps. Not part of the test suite:
it needs both, and nothing here can download them.
"""
import argparse
import os
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

CONTEXT, POOLED, TEXT_TOKENS, LATENT = 48, 32, 77 + 12, (1, 16, 16, 12)


def tiny_diffusers_sd3(torch):
    from diffusers import SD3Transformer2DModel
    torch.manual_seed(0)
    model = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=64,
                                  num_attention_heads=2, joint_attention_dim=CONTEXT, caption_projection_dim=128,
                                  pooled_projection_dim=POOLED, out_channels=16, pos_embed_max_size=16)
    with torch.no_grad():     # diffusers zero-initialises some projections: give every weight a value
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model.eval()


def gsn_factory_maps(torch, model, x, context, pooled, sigma):
    """(B, h, w, T): gsn-factory's store of every joint block, averaged as its aggregate_attention does."""
    from gsn_criterion.utils_attention import AttentionStoreSD3, JointAttnProcessor2_0Store
    height, width = x.shape[-2] // 2, x.shape[-1] // 2
    store = AttentionStoreSD3(res_height=height, res_width=width, executor=None, batch_size=x.shape[0])
    names = list(model.attn_processors)
    model.set_attn_processor({name: JointAttnProcessor2_0Store(attnstore=store, block_id=int(name.split(".")[1]))
                              for name in names})
    store.num_att_layers = len(names)
    with torch.no_grad():
        model(hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled,
              timestep=torch.tensor([sigma * 1000.0]))
    clip, t5 = store.aggregate_attention()
    return torch.cat([clip, t5], dim=-1)


def package_maps(torch, state_dict, x, context, pooled, sigma):
    """(B, h, w, T): the package's recorder in ComfyUI's guidance pass, on the converted weights."""
    import comfy.sd
    from attend_and_excite.nodes.glue.family import detect_family
    from attend_and_excite.nodes.glue.guidance import GuidancePass, autograd_weights
    from attend_and_excite.nodes.glue.sampler import recorder_for
    patcher = comfy.sd.load_diffusion_model_state_dict(state_dict, model_options={"dtype": torch.float32})
    base = patcher.model
    family = detect_family(base)
    recorder = recorder_for(base.diffusion_model, family, None)
    entry = {"model_conds": base.extra_conds(cross_attn=context, pooled_output=pooled, device=torch.device("cpu")),
             "uuid": "positive"}
    guidance = GuidancePass(base, entry, [[2]], family.kept(TEXT_TOKENS, [7]), recorder, 3, 0.5)
    base.current_patcher = patcher
    taken = []
    take = recorder.take_average
    recorder.take_average = lambda: taken.append(take()) or taken[-1]
    with autograd_weights(guidance.modules), torch.inference_mode(False), torch.enable_grad():
        guidance.evaluate(x, torch.tensor([sigma]), patcher.model_options)
    return taken[0].detach(), family.name, [number for number, _ in recorder.recorded]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gsn-factory", required=True, help="gsn-factory's src/models folder")
    parser.add_argument("--diffusers", help="a folder holding diffusers 0.30.3")
    args = parser.parse_args()
    sys.path[:0] = [p for p in (args.diffusers, args.gsn_factory) if p]
    # gsn-factory's loss utilities import OpenCV and the diffusers A&E pipeline (whose import needs an
    # older transformers) for functions the store does not use: stand-ins for those two imports.
    sys.modules.setdefault("cv2", types.ModuleType("cv2"))
    pipeline = "diffusers.pipelines.stable_diffusion_attend_and_excite.pipeline_stable_diffusion_attend_and_excite"
    sys.modules.setdefault(pipeline, types.SimpleNamespace(GaussianSmoothing=None))
    import torch
    import support
    support.import_comfy()
    support.import_package()
    model = tiny_diffusers_sd3(torch)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(*LATENT, generator=generator)
    context = torch.randn(1, TEXT_TOKENS, CONTEXT, generator=generator)
    pooled = torch.randn(1, POOLED, generator=generator)
    sigma = 0.8
    ours, family, blocks = package_maps(torch, {k: v.clone() for k, v in model.state_dict().items()}, x, context,
                                        pooled, sigma)
    theirs = gsn_factory_maps(torch, model, x, context, pooled, sigma)
    difference = float((ours - theirs).norm() / theirs.norm())
    print(f"detected as {family}; recorded blocks {blocks}; maps {tuple(ours.shape)} against {tuple(theirs.shape)}")
    print(f"relative difference |ours - gsn-factory| / |gsn-factory| = {difference:.3e}; "
          f"largest entry difference {float((ours - theirs).abs().max()):.3e}")


if __name__ == "__main__":
    main()
