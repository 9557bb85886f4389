"""The demo model in ComfyUI: its family, its shipped weights, the loader and the stock
nodes on it, and the fidelity benchmark's published figures."""
import json
import os
import re
import shlex

import pytest
import torch

import nodes
from support import REPO

from attend_and_excite.nodes.demo import model as demo_model
from attend_and_excite.nodes.demo.detector import present
from attend_and_excite.nodes.demo.shapes import subject_pairs
from attend_and_excite.nodes.demo_loader import DEMO_MODELS, AttendExciteDemoModelLoader
from attend_and_excite.nodes.core.families import DEMO_JOINT
from attend_and_excite.nodes.glue.family import DEMO, detect_family
from attend_and_excite.nodes.ksampler import AttendExciteKSampler
from attend_and_excite.nodes.text_encode import AttendExciteTextEncode

QUICK_PAIRS = 3
FIDELITY = os.path.join(REPO, "js", "docs", "fidelity.json")
GROUNDING = os.path.join(REPO, "js", "docs", "grounding.json")
JOINT_FIDELITY = os.path.join(REPO, "js", "docs", "fidelity_joint.json")
JOINT = next(name for name, path in DEMO_MODELS.items() if path == demo_model.JOINT_WEIGHTS)


def test_the_demo_config_is_a_v_prediction_model_that_records_16x16_maps():
    """The demo model's UNet (ComfyUI's SD15 config class, subclassed) is found as the demo family,
    whose maps are read at the latent's own size: 16 x 16 for its 128 px pictures; ComfyUI
    samples it as a v-prediction model."""
    import comfy.model_sampling
    from attend_and_excite.nodes.glue.recorder import blocks_at_level
    model = demo_model.build_unet()
    family = detect_family(model)
    assert family is DEMO and family.map_level == 0
    assert isinstance(model.model_sampling, comfy.model_sampling.V_PREDICTION)
    blocks = blocks_at_level(model.diffusion_model, family.map_level)
    assert [(b.name, b.number) for b in blocks] == [("input", 1), ("output", 4), ("output", 5)]


@pytest.fixture(scope="module")
def demo():
    with torch.inference_mode():      # as ComfyUI runs a loader node
        return AttendExciteDemoModelLoader.execute().result


def test_shipped_weights_come_from_the_training_script_defaults():
    from safetensors import safe_open
    from harness.train_demo import arguments, training_settings
    assert os.path.getsize(demo_model.WEIGHTS) <= 25 * 2 ** 20
    with safe_open(demo_model.WEIGHTS, "pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata["settings"]) == training_settings(arguments().parse_args([]))


def test_stock_nodes_draw_the_prompt_with_the_demo_model(demo):
    """The loader's MODEL, CLIP and VAE through the stock nodes: a prompt the model draws well
    (README: one-shape prompts, 4 images each) comes out as the detector reads it."""
    model, clip, vae = demo
    assert detect_family(model.model) is DEMO
    with torch.inference_mode():
        positive = nodes.CLIPTextEncode().encode(clip, "a circle")[0]
        negative = nodes.CLIPTextEncode().encode(clip, "")[0]
        latent = nodes.EmptyLatentImage().generate(128, 128, 4)[0]
        samples = nodes.common_ksampler(model, 1, 20, 5.0, "euler", "normal", positive, negative, latent)[0]
        images = nodes.VAEDecode().decode(vae, samples)[0]
    assert images.shape == (4, 128, 128, 3)
    assert sum(present(["circle"], image.movedim(-1, 0))[0] for image in images) >= 3


def test_attend_and_excite_reads_16x16_maps_of_the_demo_model(demo):
    from support import default_inputs
    model, clip, vae = demo
    with torch.inference_mode():
        positive = AttendExciteTextEncode.execute(clip, "a circle and a square", "").result[0]
        negative = nodes.CLIPTextEncode().encode(clip, "")[0]
        latent = nodes.EmptyLatentImage().generate(128, 128, 2)[0]
        result = AttendExciteKSampler.execute(model, 0, 10, 5.0, "euler", "normal", positive, negative, latent, 1.0,
                                              **dict(default_inputs(), max_refinement=1)).result
    record = result[3]
    assert record.maps[0].shape == (2, 2, 16, 16) and json.loads(result[4])["model"] == DEMO.name


def published_rates_again(model, published_file: str, samplers: tuple):
    """The first seed's batch of the first prompts of a fidelity benchmark, sampled again: each
    batch's counts per sampler (both kinds, exactly the two, damaged), within one image of the
    published ones (another CPU may round a few pixels differently)."""
    from harness.fidelity import measure
    with open(published_file) as f:
        published = json.load(f)
    settings = published["settings"]
    seed = settings["seeds"][0]
    results, _ = measure(*model, subject_pairs()[:QUICK_PAIRS], [seed], settings["images_per_seed"],
                         samplers=samplers, scales=(), log=lambda _: None)
    first_batches = [row for row in published["per_batch"] if row["seed"] == seed]
    assert len(results["per_batch"]) == QUICK_PAIRS
    for measured, expected in zip(results["per_batch"], first_batches):
        assert (measured["prompt"], measured["seed"]) == (expected["prompt"], expected["seed"])
        for sampler in samplers:
            for column, count in expected[sampler].items():
                assert abs(measured[sampler][column] - count) <= 1, (sampler, column, measured, expected)


def test_the_shipped_weights_give_the_published_benchmark_rates(demo):
    """README, js/docs/fidelity.json."""
    from harness.fidelity import SAMPLERS
    published_rates_again(demo, FIDELITY, SAMPLERS)


@pytest.mark.parametrize("published", [FIDELITY, JOINT_FIDELITY], ids=["unet", "joint"])
def test_the_readme_shows_each_demo_models_table_as_its_benchmark_wrote_it(published):
    from harness.fidelity import readme_table
    with open(published) as f:
        table = readme_table(json.load(f))
    with open(os.path.join(REPO, "README.md")) as f:
        assert table in f.read()


def test_the_benchmarks_plain_row_is_the_stock_ksampler(demo):
    """Plain sampling in the benchmark runs the Attend-and-Excite KSampler at scale 0 with no
    thresholds, to log the peaks the loss would read: its pictures are the stock KSampler's, bit
    for bit, and its log has a peak per subject at every guided step."""
    from harness.fidelity import SAMPLING, guided_peaks, prompt_of, sample
    model, clip, vae = demo
    pair = list(subject_pairs()[0])
    sampling = dict(SAMPLING, steps=10)
    pictures, record = sample(model, clip, vae, pair, 3, 2, "plain", sampling)
    with torch.inference_mode():
        positive = AttendExciteTextEncode.execute(clip, prompt_of(pair), ", ".join(pair)).result[0]
        negative = nodes.CLIPTextEncode().encode(clip, "")[0]
        latent = {"samples": torch.zeros(2, 4, 16, 16)}
        stock = nodes.common_ksampler(model, 3, 10, sampling["cfg"], sampling["sampler_name"],
                                      sampling["scheduler"], positive, negative, latent)[0]
        expected = vae.decode(stock["samples"]).movedim(-1, 1).clamp(0, 1)
    assert torch.equal(pictures, expected)
    peaks = guided_peaks(record)
    assert peaks.shape[:2] == (2, 2) and peaks.shape[2] >= 1
    assert ((peaks > 0) & (peaks <= 1)).all()


def test_caption_words_are_one_token_each_at_their_columns(demo):
    """The grounding term and the probe find each kind word by its column (shapes.kind_column)."""
    from attend_and_excite.nodes.demo.shapes import SHAPES, kind_column
    clip = demo[1]
    ids = [token for token, _ in clip.tokenize("a circle and a square")["l"][0]]
    for number, word in enumerate(("circle", "square")):
        assert ids[kind_column(number)] == clip.tokenize(word)["l"][0][1][0]
    for word in SHAPES:
        assert len([t for t, _ in clip.tokenize(word)["l"][0] if t != 49407]) == 2, word   # start token + word


def test_training_capture_computes_what_comfyui_computes(demo):
    """The training script's explicit attention (for the grounding term) gives the model's own
    output, and one map per cross-attention layer whose rows are distributions."""
    from attend_and_excite.nodes.glue.recorder import cross_attention_blocks
    from harness.train_demo import AttentionCapture
    unet = demo[0].model
    capture = AttentionCapture(unet.diffusion_model)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=generator) * 3
    context = torch.randn(2, 77, 64, generator=generator)
    sigma = torch.tensor([3.0, 0.5])
    with torch.no_grad():
        plain = unet.apply_model(x, sigma, c_crossattn=context)
        captured = unet.apply_model(x, sigma, c_crossattn=context, transformer_options=capture.transformer_options)
    maps = capture.take()
    assert torch.allclose(captured, plain, atol=1e-4, rtol=1e-4)
    layers = sum(b.depth for b in cross_attention_blocks(unet.diffusion_model))
    assert len(maps) == layers and capture.take() == []
    assert {m.shape for m in maps} == {(2, 256, 77), (2, 64, 77), (2, 16, 77)}
    for m in maps:
        assert torch.allclose(m.sum(-1), torch.ones(m.shape[:2]), atol=1e-5)



def test_the_shipped_weights_give_the_published_grounding(demo):
    """The grounding of the demo model's words (README, js/docs/grounding.json), measured again:
    each token kind's pointing game within one case of the published share, its mass inside the
    shape within 0.01."""
    from harness.grounding import measure
    with open(GROUNDING) as f:
        published = json.load(f)
    measured = measure(*demo, scenes=published["scenes"])
    cases = 2 * published["scenes"]
    for sigma, row in published["by_sigma"].items():
        for kind, expected in row.items():
            got = measured[float(sigma)][kind]
            assert abs(got["pointing"] - expected["pointing"]) * cases <= 1, (sigma, kind, got, expected)
            assert abs(got["mass_inside"] - expected["mass_inside"]) <= 0.01, (sigma, kind, got, expected)


def make_target_arguments(target: str) -> list[str]:
    """The train_demo.py arguments of a Makefile target's recipe."""
    with open(os.path.join(REPO, "Makefile")) as f:
        recipe = re.search(rf"^{target}:\n\t(.*)$", f.read(), re.M).group(1)
    return shlex.split(recipe.split("train_demo.py", 1)[1])


def test_shipped_joint_weights_come_from_their_make_target():
    from safetensors import safe_open
    from harness.train_demo import arguments, training_settings
    assert os.path.getsize(demo_model.JOINT_WEIGHTS) <= 25 * 2 ** 20
    with safe_open(demo_model.JOINT_WEIGHTS, "pt") as f:
        metadata = f.metadata()
    expected = training_settings(arguments().parse_args(make_target_arguments("demo-model-joint")))
    assert json.loads(metadata["settings"]) == expected and expected["architecture"] == "joint"


@pytest.fixture(scope="module")
def joint_demo():
    with torch.inference_mode():
        return AttendExciteDemoModelLoader.execute(JOINT).result


def test_the_joint_demo_is_comfyuis_flux_whose_maps_come_from_its_double_blocks(joint_demo):
    """The loader's second model: ComfyUI's Flux class (flow matching), found as the joint demo
    family; Attend-and-Excite reads its 8 x 8 maps (2 x 2 patches of the 16 x 16 latent) from the
    double-stream blocks' joint attention."""
    import comfy.ldm.flux.model
    import comfy.model_sampling
    from support import default_inputs
    model, clip, vae = joint_demo
    assert isinstance(model.model.diffusion_model, comfy.ldm.flux.model.Flux)
    assert detect_family(model.model) is DEMO_JOINT
    assert isinstance(model.model.model_sampling, comfy.model_sampling.CONST)
    with torch.inference_mode():
        positive = AttendExciteTextEncode.execute(clip, "a circle and a square", "").result[0]
        negative = nodes.CLIPTextEncode().encode(clip, "")[0]
        latent = nodes.EmptyLatentImage().generate(128, 128, 2)[0]
        result = AttendExciteKSampler.execute(model, 0, 10, 5.0, "euler", "normal", positive, negative, latent, 1.0,
                                              **dict(default_inputs(), max_refinement=1)).result
    assert result[3].maps[0].shape == (2, 2, 8, 8) and json.loads(result[4])["model"] == DEMO_JOINT.name


def test_the_joint_weights_give_the_published_benchmark_rates(joint_demo):
    """README, js/docs/fidelity_joint.json: every sampler the joint model's table has."""
    from harness.fidelity import JOINT_SAMPLERS, SAMPLERS
    published_rates_again(joint_demo, JOINT_FIDELITY, SAMPLERS + JOINT_SAMPLERS)


def test_a_stopped_benchmark_resumes_from_its_kept_batches(demo, tmp_path):
    """fidelity.py --batches: a batch measured once is read back (pictures, scores, plain
    sampling's peaks) with the same results; what is read is the kept file, not a new sample."""
    from harness.fidelity import SAMPLING, measure
    sampling = dict(SAMPLING, steps=4)
    run = lambda: measure(*demo, subject_pairs()[:1], [0], 2, sampling=sampling, samplers=("plain",), scales=(),
                          log=lambda _: None, batches=str(tmp_path))
    first, first_pictures = run()
    again, again_pictures = run()
    assert again == first
    assert all(torch.equal((p * 255).round(), again_pictures[k] * 255) for k, p in first_pictures.items())
    [kept] = tmp_path.glob("*.pt")
    batch = torch.load(kept)
    batch["scores"] = [dict(s, kinds=[True, True], extra=0, unflat_background=0.0) for s in batch["scores"]]
    torch.save(batch, kept)
    assert run()[0]["per_batch"][0]["plain"] == {"both_kinds": 2, "exact": 2, "damaged": 0}


def test_the_joint_weights_pack_under_the_names_every_comfyui_reads(joint_demo):
    """Newer ComfyUI names Flux's RMSNorm scales "weight" in the model (and renames "scale" on loading):
    packing the loaded model again gives the shipped file's names, so weights trained on any tree load on
    every tree."""
    from safetensors import safe_open
    model, clip, vae = joint_demo
    with safe_open(demo_model.JOINT_WEIGHTS, "pt") as f:
        shipped = set(f.keys())
        rows = f.get_tensor(demo_model.TOKEN_ROWS).tolist()
    packed = demo_model.pack(model.model.diffusion_model, clip.cond_stage_model, vae.first_stage_model, rows)
    assert set(packed) == shipped
    assert any(k.endswith("query_norm.scale") for k in packed)
