"""guidance_memory: the lean pass (layers rerun in the backward) against the fast one, through
ComfyUI's real sampling, on small random models of the SD1.x, SDXL and MMDiT topologies."""
import functools
import types

import pytest
import torch

import support
import test_mmdit
from attend_and_excite.nodes.core.losses import LOSSES
from attend_and_excite.nodes.glue.family import SD1, SDXL
from attend_and_excite.nodes.glue.guidance import GuidancePass
from attend_and_excite.nodes.glue.recompute import recomputing
from attend_and_excite.nodes.glue.recorder import AttentionRecorder, blocks_at_level

# SDXL's topology at a width of 32 (the sampling runs below take minutes at 64).
UNETS = {"SD1.x": ("SD15", support.SD15_TOPOLOGY, 768, None),
         "SDXL": ("SDXL", dict(support.SDXL_TOPOLOGY, model_channels=32), 2048, 1280)}
MODELS = list(UNETS) + ["flux", "sd3"]
RELATIVE = 1e-6


@functools.cache
def model_of(name: str):
    if name in test_mmdit.MODELS:
        return test_mmdit.model_of(name)
    config_class, topology, context, pooled = UNETS[name]
    with torch.inference_mode():     # as ComfyUI's loader: the weights are inference tensors
        model = support.tiny_model(seed=5, config=dict(topology, context_dim=context), family=config_class)
    return types.SimpleNamespace(name=name, model=model, context=context, pooled=pooled)


def conditionings(name: str, paired: bool):
    model = model_of(name)
    if name in test_mmdit.MODELS:
        positive, negative = test_mmdit.conds(model)
        if paired:
            positive[0][1]["attend_excite"] = support.PAIRED_SUBJECTS["attend_excite"]
        return positive, negative
    extra = {"pooled_output": torch.randn(1, model.pooled, generator=torch.Generator().manual_seed(3))} \
        if model.pooled else {}
    subjects = support.PAIRED_SUBJECTS if paired else support.SUBJECTS
    return (support.random_conditioning(1, model.context, **extra, **subjects),
            support.random_conditioning(2, model.context, **extra))


def run(name: str, memory: str, loss: str = "attend_and_excite", stock: bool = False, **changes):
    positive, negative = conditionings(name, paired=loss != "attend_and_excite")
    latent = torch.zeros(1, 16, 16, 12) if name in test_mmdit.MODELS else torch.zeros(1, 4, 8, 8)
    cfg = 1.0 if name == "flux" else 4.0
    return support.sample(model_of(name).model, "euler", support.forced(loss=loss, guidance_memory=memory, **changes),
                          positive, negative, latent, cfg=cfg, stock=stock)


@functools.cache
def stock(name: str) -> torch.Tensor:
    return run(name, "fast", stock=True)[0]


@pytest.fixture(autouse=True)
def one_thread():
    """One CPU thread: several threads split reductions by timing, so even two fast runs differ
    (by about 1e-6 in the binding losses' small terms); on one, lean and fast agree to the bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def close(a, b) -> bool:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return bool((a - b).norm() <= RELATIVE * max(a.norm(), b.norm(), 1e-12))


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", MODELS)
def test_lean_and_fast_give_the_same_latent_and_log(name, loss):
    fast, fast_record = run(name, "fast", loss)
    lean, lean_record = run(name, "lean", loss)
    assert (fast_record.guidance_memory, lean_record.guidance_memory) == ("fast", "lean")
    assert not torch.allclose(fast, stock(name))     # the guidance moved it
    assert close(fast, lean)
    assert len(fast_record.logs) == len(lean_record.logs) == 3
    for f, l in zip(fast_record.logs, lean_record.logs):
        assert f.refinement_iterations == l.refinement_iterations
        assert close(f.losses, l.losses) and close(f.peaks, l.peaks)
        assert f.terms.keys() == l.terms.keys() and all(close(f.terms[k], l.terms[k]) for k in f.terms)
    assert all(close(f, l) for f, l in zip(fast_record.maps, lean_record.maps))


@pytest.mark.parametrize("name", ["SD1.x", "flux"])
def test_at_zero_scale_both_passes_are_the_stock_ksampler(name):
    for memory in ("fast", "lean"):
        ours, record = run(name, memory, scale_factor=0.0)
        assert record.logs and record.guidance_memory == memory
        assert torch.equal(ours, stock(name))


def guidance_pass(name: str, memory: str):
    """(GuidancePass, its model's options) on a fresh model of normal (not inference) tensors."""
    import comfy.conds
    config_class, topology, context, pooled = UNETS[name]
    model = support.tiny_model(seed=5, config=dict(topology, context_dim=context), family=config_class)
    conds = {"c_crossattn": comfy.conds.CONDCrossAttn(support.random_conditioning(1, context)[0][0])}
    if pooled:
        conds["y"] = comfy.conds.CONDRegular(torch.randn(1, topology["adm_in_channels"],
                                                         generator=torch.Generator().manual_seed(3)))
    family = SD1 if name == "SD1.x" else SDXL
    recorder = support.listing(AttentionRecorder(blocks_at_level(model.model.diffusion_model, family.map_level)))
    guidance = GuidancePass(model.model, {"model_conds": conds, "uuid": "positive"}, recorder, subjects=[[2], [5]],
                            kept=family.kept(77, [6]), guidance_memory=memory, family=family.name)
    model.model.current_patcher = model     # as sampling's preparation sets it
    return guidance, model.model_options


def counted_calls(layer: torch.nn.Module, calls: list):
    """An instance-level forward, as another node may set: recomputing must keep it underneath."""
    forward = layer.forward

    def counting(*args, **kwargs):
        calls.append(layer)
        return forward(*args, **kwargs)
    return counting


@pytest.mark.parametrize("name", list(UNETS))
def test_lean_records_each_layer_once_keeps_less_and_reruns_every_recomputed_layer(name):
    found = {}
    for memory in ("fast", "lean"):
        guidance, options = guidance_pass(name, memory)
        saved, calls = [], []

        def count(tensor):
            if not isinstance(tensor, torch.nn.Parameter):
                saved.append(tensor.numel() * tensor.element_size())
            return tensor
        for layer in guidance.recomputed_layers:
            layer.forward = counted_calls(layer, calls)
        x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 14.6
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            evaluation = guidance.evaluate(x, torch.tensor([14.6]), options)
            gradient = evaluation.gradient()
        found[memory] = (list(guidance.recorder.recorded), sum(saved), len(calls), gradient, guidance.recorder.total)
        assert guidance.memory == memory
    (fast_recorded, fast_saved, fast_calls, fast_gradient, _), (recorded, lean_saved, calls, gradient, left) = \
        found["fast"], found["lean"]
    assert recorded == fast_recorded and left is None     # the reruns in the backward recorded nothing
    n = len(guidance.recomputed_layers)
    assert n > 0 and fast_calls == n and calls == 2 * n    # every recomputed layer ran again in the backward
    assert gradient.abs().sum() > 0 and close(fast_gradient, gradient)
    assert lean_saved < fast_saved / 4


def test_the_recomputed_layers_are_every_layer_run_but_the_one_that_ends_the_pass():
    model = model_of("SDXL").model.model.diffusion_model
    recorder = AttentionRecorder(blocks_at_level(model, SDXL.map_level))
    layers = recorder.recomputed_layers(model)
    ended = model.output_blocks[2][1].transformer_blocks[-1]      # SDXL's last recorded block at latent/4
    recorded_layers = [t for b in recorder.blocks
                       for t in (model.middle_block if b.name == "middle" else
                                 getattr(model, f"{b.name}_blocks")[b.number])[1].transformer_blocks]
    assert ended not in layers and set(recorded_layers) - {ended} <= set(layers)
    assert model.input_blocks[4][1] in layers          # an earlier block's transformer, whole
    assert model.output_blocks[2][2] not in layers     # the upsampler after the last recorded layer never runs


def test_recomputing_puts_every_forward_back_whatever_happens():
    model = model_of("SD1.x").model.model.diffusion_model
    layers = AttentionRecorder(blocks_at_level(model, 2)).recomputed_layers(model)
    own = lambda *a, **k: None        # noqa: E731 (another node's instance-level forward)
    layers[0].forward = own
    with pytest.raises(KeyError):
        with recomputing(layers, copy_tensors=False):
            assert all("forward" in vars(layer) for layer in layers)
            raise KeyError("interrupted")
    assert layers[0].forward is own and all("forward" not in vars(layer) for layer in layers[1:])
    del layers[0].forward


def test_auto_is_fast_on_the_cpu_and_says_why():
    _, record = run("SD1.x", "auto")
    assert record.guidance_memory == "fast (auto: on the CPU the fast pass's memory is ordinary RAM)"


def test_with_a_controlnet_lean_and_fast_agree():
    """A ControlNet adds to the UNet's skip connections in place: the lean pass's reruns must read
    the activations as they were when the layer first ran."""
    from test_robustness import tiny_controlnet
    with torch.inference_mode():
        model = support.tiny_model(seed=5)
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3)).movedim(-1, 1)
    control = tiny_controlnet().copy().set_cond_hint(hint, 0.8)
    positive = support.random_conditioning(1, control=control, control_apply_to_uncond=False, **support.SUBJECTS)
    negative = support.random_conditioning(2)
    found = {memory: support.sample(model, "euler", support.forced(guidance_memory=memory), positive, negative,
                                    torch.zeros(1, 4, 8, 8)) for memory in ("fast", "lean")}
    (fast, fast_record), (lean, lean_record) = found["fast"], found["lean"]
    assert close(fast, lean)
    assert all(close(f.losses, l.losses) for f, l in zip(fast_record.logs, lean_record.logs))


def test_the_estimate_auto_reads_is_the_counted_figure_and_lean_meets_its_targets():
    """Full-width SD1.5 at 512 px and SDXL at 1024 px, counted on the meta device as
    tests/harness/saved_activations.py counts them (the README's table)."""
    from harness import saved_activations
    from attend_and_excite.nodes.core.memory import FAST_PASS_GIB
    sd15 = saved_activations.measure("sd15", 512, 1)["modes"]
    assert sd15["fast"]["kept_gib"] == FAST_PASS_GIB["SD1.x"][0]
    assert sd15["lean"]["peak_gib"] <= 0.15 and sd15["lean"]["flops_x_fast"] <= 1.5
    sdxl = saved_activations.Build("sdxl", 1024, 1)
    assert saved_activations.run_pass(sdxl, "fast", [])["kept"] / 2 ** 30 == pytest.approx(FAST_PASS_GIB["SDXL"][0],
                                                                                           abs=5e-4)
    lean = saved_activations.run_pass(sdxl, "lean", [])["kept"] + \
        saved_activations.run_pass(sdxl, "fast", sdxl.layers("lean"))["largest_layer"]
    assert lean / 2 ** 30 <= 1.0
