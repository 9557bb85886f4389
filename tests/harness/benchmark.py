"""Plain KSampler against KSampler (Attend-and-Excite), and against the stock KSampler on a
model patched by the attention boost or (joint attention) the attention temperature, on one model,
seed and sampler.

    make benchmark            (or: python tests/harness/benchmark.py [--out DIR] [--shape NAME] [--reference PATH])

Each configuration: one warm-up call, two timed calls (the faster counts), then on the CPU one call with
per-part timers. On the CPU each configuration runs in its own process (its own peak RSS); on a GPU all of
a shape's in one (its peak allocated reset before each), with the eager-pass and batch-4 rows and the
guidance pass's wall and kernel time. On a GPU: the SD1.5 shape at 512 px and the SDXL shape at 1024 px,
50 steps, fp16, random weights (they cost what real ones do), and, when given one with --reference (or
AE_REFERENCE_SCRIPT), the diffusers reference script in the same call for the reference's figures; without
one it says so and runs the package alone. On the CPU: a small SD1.x-topology model at 256 px, 20 steps,
fp32, so that it finishes in minutes, and SDXL's topology at width 64, 512 px, 10 steps (the fast and lean
passes' time and peak RSS). Both: a small Flux.1 dev (see shape()). guidance_memory is fast (auto on the
CPU) unless a row says lean. Writes result.json (the figures, with the machine, date and code under "run")
and table.md to the output folder and prints the tables. A run the docs show is copied to docs/figures/
(benchmark_*.json); docs/design.md carries its tables as table() writes them.
"""
import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from harness.provenance import run_record  # noqa: E402
from harness.server import REPO  # noqa: E402

CONFIGS = {  # name -> (sampler, changes): to the paper's settings for "guided", to a patch node's otherwise
    "plain KSampler": ("plain", {}),
    "A&E, no refinement": ("guided", {"thresholds": ""}),
    "A&E, default thresholds": ("guided", {}),
    "A&E, forced 3 x 20 refinement": ("guided", {"thresholds": "0:1.0, 10:1.0, 20:1.0"}),
    "A&E, no refinement, lean": ("guided", {"thresholds": "", "guidance_memory": "lean"}),
    "A&E, default thresholds, lean": ("guided", {"guidance_memory": "lean"}),
    "A&E, forced 3 x 20 refinement, lean": ("guided", {"thresholds": "0:1.0, 10:1.0, 20:1.0",
                                                        "guidance_memory": "lean"}),
    "SynGen": ("guided", {"loss": "syngen"}),
    "Divide & Bind, its thresholds": ("guided", {"loss": "divide_and_bind"}),
    "A-STAR": ("guided", {"loss": "a_star"}),
    "attention boost (KSampler)": ("boost", {}),
    "attention boost, renormalised (KSampler)": ("boost", {"renormalise": True}),
    "attention temperature (KSampler)": ("temperature", {}),
}
# On a GPU only: the guidance pass run eagerly (the CUDA graph's "before"), and a batch of 4.
GPU_CONFIGS = {
    "A&E, no refinement, eager pass": ("guided", {"thresholds": ""}),
    "A&E, forced 3 x 20 refinement, eager pass": ("guided", {"thresholds": "0:1.0, 10:1.0, 20:1.0"}),
    "plain KSampler, batch 4": ("plain", {}),
    "A&E, no refinement, batch 4": ("guided", {"thresholds": ""}),
}
MEMORY_CONFIGS = ["plain KSampler", "A&E, no refinement", "A&E, no refinement, lean", "A&E, default thresholds",
                  "A&E, default thresholds, lean", "A&E, forced 3 x 20 refinement",
                  "A&E, forced 3 x 20 refinement, lean"]
FAMILY_CONFIGS = ["plain KSampler", "A&E, no refinement", "A&E, default thresholds"]
GRADIENT_FREE_CONFIGS = ["attention boost (KSampler)", "attention temperature (KSampler)"]   # joint attention's
SHAPE_CONFIGS = {"sd15": [n for n in list(CONFIGS) + list(GPU_CONFIGS) if "temperature" not in n],
                 "sdxl": MEMORY_CONFIGS, "flux": FAMILY_CONFIGS + GRADIENT_FREE_CONFIGS,
                 "zimage": FAMILY_CONFIGS + GRADIENT_FREE_CONFIGS, "qwen_image": FAMILY_CONFIGS,
                 "flux2": FAMILY_CONFIGS, "chroma": FAMILY_CONFIGS}
# The families behind an LLM text encoder: 77 random context columns, "cat" and "frog" at 2 and 5, the
# prompt's words at 1-6 (what 'CLIP Text Encode (Attend-and-Excite)' attaches).
PROMPT_SUBJECTS = {"attend_excite": {"subjects": [[2], [5]], "labels": ["cat", "frog"], "end_columns": [],
                                     "prompt_columns": [1, 2, 3, 4, 5, 6], "context_length": 77}}
CPU_SKIPS = {"sdxl": {"A&E, forced 3 x 20 refinement", "A&E, forced 3 x 20 refinement, lean"}}   # minutes each
SEED, CFG, SAMPLER = 1, 7.5, "euler"
LOG_OUTPUT = 4      # the Attend-and-Excite KSampler's outputs: latent, heatmaps, peak plot, attention, log
PROFILED_STEPS = 20     # the pass profile: this many steps, every one guided, no refinement
TIMED_CALLS = 2     # the faster one counts: these machines are noisy


def shape(name: str, cuda: bool) -> dict:
    """The model and run of a benchmark shape: "sd15" (SD1.4/1.5: 320 channels, 8 heads,
    context 768), "sdxl" (320 channels, depths 2 and 10, context 2048, pooled 1280), or "flux"
    (a small Flux.1 dev: width 256, 4 double and 8 single blocks, T5 width 256, 77 text tokens;
    cfg 1 with guidance 3.5, as Flux dev samples)."""
    import torch
    from support import SD15_TOPOLOGY, SDXL_TOPOLOGY
    unet_shape = dict(latent_channels=4, cfg=CFG)
    if name == "flux":
        unet = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=256,
                    hidden_size=256, mlp_ratio=4.0, num_heads=4, depth=4, depth_single_blocks=8, axes_dim=[16, 24, 24],
                    theta=10000, qkv_bias=True, guidance_embed=True, patch_size=2)
        return dict(family="Flux", unet=unet, width=256, context=256, size=256, steps=20, dtype=torch.float32,
                    extra={"pooled_output": torch.randn(1, 768), "guidance": 3.5}, latent_channels=16, cfg=1.0)
    small_families = {   # small models of the newer families, 256 px, 20 steps, fp32, each at its usual cfg
        "zimage": dict(family="ZImage", unet=dict(
            image_model="lumina2", patch_size=2, in_channels=16, dim=256, n_layers=6, n_refiner_layers=1, n_heads=2,
            n_kv_heads=2, multiple_of=256, ffn_dim_multiplier=8.0 / 3.0, norm_eps=1e-5, qk_norm=True,
            cap_feat_dim=256, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512], rope_theta=256.0,
            z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=32), context=256, extra={}, cfg=1.0),
        "qwen_image": dict(family="QwenImage", unet=dict(
            image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=4,
            attention_head_dim=64, num_attention_heads=4, joint_attention_dim=256, axes_dims_rope=(16, 24, 24)),
            context=256, extra={}, cfg=2.5),
        "flux2": dict(family="Flux2", unet=dict(
            image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None, context_in_dim=768,
            hidden_size=256, mlp_ratio=3.0, num_heads=2, depth=2, depth_single_blocks=4, axes_dim=[32, 32, 32, 32],
            theta=2000, patch_size=1, qkv_bias=False, guidance_embed=True, global_modulation=True,
            mlp_silu_act=True, ops_bias=False, default_ref_method="index", ref_index_scale=10.0),
            context=768, extra={"pooled_output": None, "guidance": 4.0}, cfg=1.0, latent_channels=128, cell=16),
        "chroma": dict(family="Chroma", unet=dict(
            image_model="chroma", in_channels=64, out_channels=64, context_in_dim=256, hidden_size=256,
            mlp_ratio=4.0, num_heads=4, depth=4, depth_single_blocks=8, axes_dim=[16, 24, 24], theta=10000,
            patch_size=2, qkv_bias=True, in_dim=64, out_dim=256, hidden_dim=256, n_layers=2), context=256,
            extra={"pooled_output": None}, cfg=4.0),
    }
    if name in small_families:
        return dict(dict(latent_channels=16, cell=8), width=256, size=256, steps=20, dtype=torch.float32,
                    subjects=PROMPT_SUBJECTS if name != "chroma" else None, **small_families[name])
    if name == "sdxl" and cuda:
        return dict(unet_shape, family="SDXL", unet=dict(SDXL_TOPOLOGY, model_channels=320, dtype=torch.float16),
                    width=320, context=2048, size=1024, steps=50, dtype=torch.float16,
                    extra={"pooled_output": torch.randn(1, 1280)})
    if name == "sdxl":   # the CPU's: SDXL's topology at width 64, 512 px, 10 steps (fast against lean)
        return dict(unet_shape, family="SDXL", unet=dict(SDXL_TOPOLOGY, model_channels=64), width=64, context=2048,
                    size=512, steps=10, dtype=torch.float32, extra={"pooled_output": torch.randn(1, 1280)})
    if cuda:
        return dict(unet_shape, family="SD15", width=320, context=768, size=512, steps=50, dtype=torch.float16,
                    extra={}, unet=dict(SD15_TOPOLOGY, model_channels=320, context_dim=768, dtype=torch.float16))
    return dict(unet_shape, family="SD15", unet=dict(SD15_TOPOLOGY, model_channels=64, context_dim=768), width=64,
                context=768, size=256, steps=20, dtype=torch.float32, extra={})


class PartTimer:
    """Wall time of named parts, synchronising the GPU around each."""

    def __init__(self, cuda: bool):
        import torch
        self.sync = torch.cuda.synchronize if cuda else (lambda: None)
        self.seconds = {}

    @contextlib.contextmanager
    def part(self, name):
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def wrap(self, name, function):
        def timed(*args, **kwargs):
            with self.part(name):
                return function(*args, **kwargs)
        return timed


@contextlib.contextmanager
def profiled(timer: PartTimer):
    """Times the package's own parts by wrapping them (no ComfyUI internals touched)."""
    from attend_and_excite.nodes.core import excite as excite_module
    from attend_and_excite.nodes.core.maps import SubjectScorer
    from attend_and_excite.nodes.glue import guidance, recorder, sampler
    originals = [(excite_module, "_descend"), (guidance.GuidancePass, "evaluate"), (SubjectScorer, "maps"),
                 (recorder.AttentionRecorder, "_patch"), (sampler, "autograd_weights")]
    saved = [(owner, name, getattr(owner, name)) for owner, name in originals]
    excite_module._descend = timer.wrap("backward and update", excite_module._descend)
    guidance.GuidancePass.evaluate = timer.wrap("guidance forward (with maps)", guidance.GuidancePass.evaluate)
    SubjectScorer.maps = timer.wrap("subject maps (sharpen, smooth)", SubjectScorer.maps)
    patch = recorder.AttentionRecorder._patch
    recorder.AttentionRecorder._patch = lambda self, previous, is_last: timer.wrap(
        "explicit softmax on recorded blocks", patch(self, previous, is_last))
    swap = sampler.autograd_weights

    @contextlib.contextmanager
    def timed_swap(modules):
        with timer.part("weight preparation"):
            context = swap(modules)
            context.__enter__()
        try:
            yield
        finally:
            with timer.part("weight preparation"):
                context.__exit__(None, None, None)
    sampler.autograd_weights = timed_swap
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def run_configs(names: list[str], shape_name: str) -> dict:
    """{name: result} of configurations on one model, built once (its weights take long to draw)."""
    import torch
    import support
    support.import_comfy(cpu=not torch.cuda.is_available())
    support.import_package()
    import comfy.utils
    import nodes
    from attend_and_excite.nodes.boost import AttendExciteAttentionBoost, AttendExciteAttentionTemperature
    from attend_and_excite.nodes.glue.capture import EAGER_VARIABLE
    from attend_and_excite.nodes.ksampler import AttendExciteKSampler
    from support import default_inputs

    comfy.utils.PROGRESS_BAR_ENABLED = False
    cuda = torch.cuda.is_available()
    setup = shape(shape_name, cuda)
    with torch.inference_mode():      # as ComfyUI's loader: the weights are inference tensors
        base = support.tiny_model(seed=0, config=setup["unet"], family=setup["family"])
    positive, negative = support.conditionings(setup["context"], **setup["extra"])
    if setup.get("subjects"):
        positive = support.random_conditioning(1, setup["context"], **setup["extra"], **setup["subjects"])
    # the binding losses read modifiers: "a red cat and a green frog"
    paired = support.random_conditioning(1, setup["context"], **setup["extra"], **support.PAIRED_SUBJECTS)
    results = {}
    for name in names:
        how, changes = {**CONFIGS, **GPU_CONFIGS}[name]
        batch = 4 if name.endswith("batch 4") else 1
        side = setup["size"] // setup.get("cell", 8)
        frames = [1] if setup["family"] == "QwenImage" else []        # Qwen-Image's latent has a frame axis
        latent = {"samples": torch.zeros(batch, setup["latent_channels"], *frames, side, side)}
        patch = {"boost": AttendExciteAttentionBoost, "temperature": AttendExciteAttentionTemperature}.get(how)
        model = patch.execute(base, **{**default_inputs(patch), **changes}).result[0] if patch else base
        if name.endswith("eager pass"):
            os.environ[EAGER_VARIABLE] = "1"

        last = []

        def sample():
            with torch.inference_mode():
                if how != "guided":
                    return nodes.common_ksampler(model, SEED, setup["steps"], setup["cfg"], SAMPLER, "normal", positive,
                                                 negative, latent)[0]
                last[:] = AttendExciteKSampler.execute(model, SEED, setup["steps"], setup["cfg"], SAMPLER, "normal",
                                                       paired if "loss" in changes else positive,
                                                       negative, latent, 1.0, **{**default_inputs(), **changes}).result
        try:
            results[name] = measure(sample, batch, cuda, profile=how == "guided" and not cuda)
            if name == "A&E, no refinement" and cuda:
                results[name]["pass_costs"] = pass_costs(model, setup, positive, negative, latent)
        finally:
            os.environ.pop(EAGER_VARIABLE, None)
        results[name]["guidance_pass"] = json.loads(last[LOG_OUTPUT])["guidance_pass"] if last else None
        results[name]["shape"] = {"model": shape_name, "size": setup["size"], "steps": setup["steps"], "batch": batch,
                                  "channels": setup["width"], "dtype": str(setup["dtype"]).replace("torch.", ""),
                                  "sampler": SAMPLER, "cfg": setup["cfg"]}
    return results


def pass_costs(model, setup, positive, negative, latent) -> dict:
    """Wall and GPU kernel time of one guidance pass, eager and as a CUDA graph: PROFILED_STEPS
    steps with every step guided, minus plain sampling, per step (the capture's one-time
    cost is in the graph's figures)."""
    import torch
    import nodes
    from torch.profiler import ProfilerActivity, profile
    from attend_and_excite.nodes.glue.capture import EAGER_VARIABLE
    from attend_and_excite.nodes.ksampler import AttendExciteKSampler
    from support import default_inputs
    every_step = {**default_inputs(), "thresholds": "", "steps_to_alter": PROFILED_STEPS,
                  "schedule_steps": PROFILED_STEPS}

    def plain():
        nodes.common_ksampler(model, SEED, PROFILED_STEPS, setup["cfg"], SAMPLER, "normal", positive, negative, latent)

    def guided():
        AttendExciteKSampler.execute(model, SEED, PROFILED_STEPS, setup["cfg"], SAMPLER, "normal", positive, negative,
                                     latent, 1.0, **every_step)

    def costs(run):
        with torch.inference_mode():
            run()
            torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            torch.cuda.synchronize()
            wall = time.perf_counter() - start
            with profile(activities=[ProfilerActivity.CUDA]) as profiler:
                run()
                torch.cuda.synchronize()
        kernels = sum(e.self_device_time_total for e in profiler.key_averages()) / 1e6
        return wall, kernels

    plain_wall, plain_kernels = costs(plain)
    found = {}
    for mode in ("eager", "CUDA graph"):
        if mode == "eager":
            os.environ[EAGER_VARIABLE] = "1"
        try:
            wall, kernels = costs(guided)
        finally:
            os.environ.pop(EAGER_VARIABLE, None)
        found[mode] = {"wall_ms": (wall - plain_wall) / PROFILED_STEPS * 1e3,
                       "kernel_ms": (kernels - plain_kernels) / PROFILED_STEPS * 1e3}
    return found


def measure(sample, batch: int, cuda: bool, profile: bool) -> dict:
    """One warm-up call (loads the model, builds kernels), TIMED_CALLS timed calls (the faster
    counts), and on the CPU one call with per-part timers."""
    import torch
    sample()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(TIMED_CALLS):
        timer = PartTimer(cuda)
        with timer.part("total"):
            sample()
        seconds.append(timer.seconds["total"])
    peak = torch.cuda.max_memory_allocated() if cuda else None
    parts = PartTimer(cuda)
    if profile:
        with profiled(parts), parts.part("total"):
            sample()
    return {"seconds": min(seconds) / batch, "peak_gib": peak / 2 ** 30 if cuda else None,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,   # ru_maxrss: KiB
            "parts": parts.seconds, "device": torch.cuda.get_device_name() if cuda else "cpu"}


def run_in_process(names: list[str], shape_name: str) -> dict:
    """Configurations in a fresh process: on the CPU one each (its own peak RSS); on a GPU all of a
    shape in one (the peak of each is reset; the random weights take long to draw)."""
    done = subprocess.run([sys.executable, os.path.abspath(__file__), "--shape", shape_name,
                           *[arg for name in names for arg in ("--config", name)]],
                          capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{names} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: dict) -> str:
    first = next(iter(results.values()))
    lines = [f"shape: {json.dumps(first['shape'])}", "",
             "| configuration | s / image | x plain (same batch) | peak GiB (GPU allocated) | peak RSS GiB | "
             "guidance pass |", "|---|---|---|---|---|---|"]
    for name, row in results.items():
        plain = results["plain KSampler" + (", batch 4" if row["shape"]["batch"] == 4 else "")]["seconds"]
        gpu, rss = (f"{row[key]:.2f}" if row[key] is not None else "-" for key in ("peak_gib", "peak_rss_gib"))
        lines.append(f"| {name} | {row['seconds']:.2f} | {row['seconds'] / plain:.2f} | {gpu} | {rss} | "
                     f"{row['guidance_pass'] or '-'} |")
    for name, row in results.items():
        for mode, cost in row.get("pass_costs", {}).items():
            lines.append(f"\nOne guidance pass ({mode}; {PROFILED_STEPS} steps all guided, minus plain sampling, per "
                         f"step): wall {cost['wall_ms']:.1f} ms, GPU kernels {cost['kernel_ms']:.1f} ms.")
        if row["parts"]:
            total = row["parts"]["total"]
            parts = ", ".join(f"{part} {seconds:.2f} s ({seconds / total:.0%})"
                              for part, seconds in row["parts"].items() if part != "total")
            lines.append(f"\n{name}, profiled run ({total:.2f} s): {parts}; the rest is plain sampling.")
    return "\n".join(lines)


def tables(figures: dict) -> str:
    """A run's tables under a line that says where and with what code they were measured."""
    run = figures["run"]
    text = (f"{run['machine']}, {run['date']}; package {run['package_version']}, ComfyUI {run['comfyui']}, "
            f"torch {run['torch']}.\n\n" + "\n\n".join(table(rows) for rows in figures["results"].values()))
    if figures.get("reference"):
        text += "\n\nReference (diffusers, same call):\n\n" + figures["reference"]
    return text


FIGURES = os.path.join(REPO, "docs", "figures")
DESIGN = os.path.join(REPO, "docs", "design.md")
FIGURES_MARK = "<!-- figures: {} (written by tests/harness/benchmark.py --docs) -->"
END_MARK = "<!-- end of figures -->"


def figures_blocks() -> str:
    """The tables of every published run, newest first, each between markers that name its file."""
    runs = []
    for name in sorted(os.listdir(FIGURES)):
        if name.startswith("benchmark_") and name.endswith(".json"):
            with open(os.path.join(FIGURES, name), encoding="utf-8") as f:
                runs.append((name, json.load(f)))
    runs.sort(key=lambda run: run[1]["run"]["date"], reverse=True)
    return "\n\n".join(f"{FIGURES_MARK.format('docs/figures/' + name)}\n{tables(figures)}\n{END_MARK}"
                         for name, figures in runs)


def write_docs():
    """docs/design.md's figures rewritten from docs/figures/: everything from the first figures mark to
    the last end mark."""
    with open(DESIGN, encoding="utf-8") as f:
        text = f.read()
    start, end = text.index(FIGURES_MARK.split("{}")[0]), text.rindex(END_MARK) + len(END_MARK)
    with open(DESIGN, "w", encoding="utf-8") as f:
        f.write(text[:start] + figures_blocks() + text[end:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", choices=list(CONFIGS) + list(GPU_CONFIGS),
                        help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=list(SHAPE_CONFIGS),
                        help="one shape only (default: every one)")
    parser.add_argument("--out", default=os.path.join(REPO, "out", "benchmark"))
    parser.add_argument("--docs", action="store_true",
                        help="rewrite docs/design.md's tables from the runs in docs/figures/ and stop")
    parser.add_argument("--reference", default=os.environ.get("AE_REFERENCE_SCRIPT"),
                        help="a script that measures the diffusers reference (it prints its table); run on a GPU "
                             "only, in the same call (default: $AE_REFERENCE_SCRIPT; none: the package alone)")
    args = parser.parse_args()
    if args.docs:
        write_docs()
        return
    if args.config:
        print(json.dumps(run_configs(args.config, args.shape or "sd15")))
        return
    import torch
    cuda = torch.cuda.is_available()
    shapes = [args.shape] if args.shape else list(SHAPE_CONFIGS)
    results = {}
    for shape_name in shapes:
        names = SHAPE_CONFIGS[shape_name] if cuda else \
            [n for n in SHAPE_CONFIGS[shape_name] if n in CONFIGS and n not in CPU_SKIPS.get(shape_name, ())]
        results[shape_name] = run_in_process(names, shape_name) if cuda else \
            {name: run_in_process([name], shape_name)[name] for name in names}
    reference = None
    if not (cuda and args.reference):
        print("No reference measured: it runs on a GPU, given with --reference or AE_REFERENCE_SCRIPT.")
    elif not os.path.isfile(args.reference):
        raise SystemExit(f"--reference: no file {args.reference}")
    else:
        os.makedirs(args.out, exist_ok=True)
        done = subprocess.run([sys.executable, args.reference], capture_output=True, text=True,
                              env={**os.environ, "OUT": args.out})
        reference = done.stdout.strip() if done.returncode == 0 else f"failed: {done.stderr[-2000:]}"
    os.makedirs(args.out, exist_ok=True)
    figures = {"run": run_record(), "results": results, "reference": reference}
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(figures, f, indent=1)
    text = tables(figures)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
