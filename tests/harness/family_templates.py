"""Writes the templates of the families behind an LLM text encoder and Chroma (example_workflows/
attend_and_excite_<family>.json): the loaders and file names ComfyUI's own templates of the family use,
its usual sampler, steps and cfg, the pack's nodes at their defaults. Sockets, widget order and
defaults come from a live server's /object_info, so a template is what the editor would save.

    bash tests/harness/comfy_env.sh python tests/harness/family_templates.py
"""
import json
import os
import sys
import tempfile
import tomllib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness.server import running_server  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACK_NODES = {"AttendExciteTextEncode", "AttendExciteKSampler", "AttendExciteSampler", "AttendExciteHeatmaps",
              "AttendExciteHeatmapOverlay"}
SEED = 42
FEW_STEPS = ("Step indices are written for schedule_steps (50) and rescaled to the {steps} steps here: steps "
             "{guided} are guided, refinement runs at steps {refined}, the same noise levels as the paper's "
             "50 steps within one step (the help page has the table).")


class Graph:
    """A UI-format workflow built node by node, each node's sockets and widgets as /object_info has them."""

    def __init__(self, info: dict, version: str):
        self.info, self.version = info, version
        self.nodes, self.links = [], []

    def add(self, node_type: str, pos, size, title: str | None = None, **values) -> int:
        node_id = len(self.nodes) + 1
        spec = self.info[node_type]
        node = {"id": node_id, "type": node_type, "pos": list(pos), "size": list(size), "flags": {},
                "order": node_id - 1, "mode": 0, "inputs": [], "outputs": [],
                "properties": {"Node name for S&R": node_type}}
        if node_type in PACK_NODES:
            node["properties"].update({"cnr_id": "attend-and-excite", "ver": self.version})
        widgets = []
        for group in ("required", "optional"):
            for name in spec["input_order"].get(group, []):
                kind, *options = spec["input"][group][name]
                options = options[0] if options else {}
                if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
                    choices = kind if isinstance(kind, list) else options.get("options") or [None]
                    widgets.append(values.pop(name) if name in values else options.get("default", choices[0]))
                    if options.get("control_after_generate"):
                        widgets.append("fixed")
                else:
                    node["inputs"].append({"name": name, "type": kind, "link": None})
        if values:
            raise ValueError(f"{node_type} has no widget {', '.join(values)}")
        if widgets:
            node["widgets_values"] = widgets
        node["outputs"] = [{"name": name, "type": kind, "links": [], "slot_index": slot}
                           for slot, (kind, name) in enumerate(zip(spec["output"], spec["output_name"]))]
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node_id

    def connect(self, source: int, output: str, target: int, input_name: str):
        source_node, target_node = self.nodes[source - 1], self.nodes[target - 1]
        slot = next(i for i, o in enumerate(source_node["outputs"]) if o["name"] == output)
        target_slot = next(i for i, s in enumerate(target_node["inputs"]) if s["name"] == input_name)
        link_id = len(self.links) + 1
        kind = source_node["outputs"][slot]["type"]
        self.links.append([link_id, source, slot, target, target_slot, kind])
        source_node["outputs"][slot]["links"].append(link_id)
        target_node["inputs"][target_slot]["link"] = link_id

    def note(self, pos, size, text: str):
        node_id = len(self.nodes) + 1
        self.nodes.append({"id": node_id, "type": "Note", "pos": list(pos), "size": list(size), "flags": {},
                           "order": node_id - 1, "mode": 0, "inputs": [], "outputs": [],
                           "properties": {"Node name for S&R": "Note"}, "widgets_values": [text]})

    def workflow(self) -> dict:
        return {"last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes,
                "links": self.links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.6, "offset": [20, 20]}},
                "version": 0.4}


def loaders(g: Graph, unet: str, clip: str, clip_type: str, vae: str) -> tuple[int, int, int]:
    return (g.add("UNETLoader", (40, 40), (315, 82), unet_name=unet),
            g.add("CLIPLoader", (40, 170), (315, 106), clip_name=clip, type=clip_type),
            g.add("VAELoader", (40, 320), (315, 58), vae_name=vae))


def outputs(g: Graph, sampled: int, plain: int | None, vae: int, attention: int, x: int = 1280):
    """Decode and save both runs; the overlay, the peak plot and the log of the guided one."""
    guided_image = g.add("VAEDecode", (x, 40), (210, 46))
    g.connect(sampled, "LATENT", guided_image, "samples")
    g.connect(vae, "VAE", guided_image, "vae")
    save = g.add("SaveImage", (x + 260, 40), (380, 420), filename_prefix="attend_excite")
    g.connect(guided_image, "IMAGE", save, "images")
    overlay = g.add("AttendExciteHeatmapOverlay", (x + 680, 40), (380, 420))
    g.connect(guided_image, "IMAGE", overlay, "image")
    g.connect(attention, "attention", overlay, "attention")
    if plain is not None:
        plain_image = g.add("VAEDecode", (x, 980), (210, 46))
        g.connect(plain, "LATENT", plain_image, "samples")
        g.connect(vae, "VAE", plain_image, "vae")
        plain_save = g.add("SaveImage", (x + 260, 980), (380, 420), filename_prefix="plain")
        g.connect(plain_image, "IMAGE", plain_save, "images")
    plot = g.add("PreviewImage", (x, 500), (620, 400), title="Peak attention per step")
    g.connect(attention, "peak_plot", plot, "images")
    log = g.add("PreviewAny", (x + 680, 500), (380, 380), title="Per-step log")
    g.connect(attention, "log", log, "source")


def ksampler_template(g: Graph, files: tuple, clip_type: str, sampling: dict, prompt: str, subjects: str,
                      size: tuple, note: str, shift: float | None = None, negative_text: str | None = None,
                      t5_options: bool = False):
    """Loaders, (ModelSamplingAuraFlow), the pack's encode and KSampler beside a plain KSampler."""
    unet, clip, vae = loaders(g, *files[:2], clip_type, files[2])
    model, model_output = unet, "MODEL"
    if shift is not None:
        model = g.add("ModelSamplingAuraFlow", (400, 40), (315, 58), shift=shift)
        g.connect(unet, "MODEL", model, "model")
    text_clip = clip
    if t5_options:
        text_clip = g.add("T5TokenizerOptions", (40, 430), (315, 82), min_padding=1, min_length=0)
        g.connect(clip, "CLIP", text_clip, "clip")
    positive = g.add("AttendExciteTextEncode", (400, 150), (420, 330), text=prompt, subjects=subjects)
    g.connect(text_clip, "CLIP", positive, "clip")
    if negative_text is None:      # a distilled model at cfg 1: the negative is not used, as ComfyUI's template
        negative = g.add("ConditioningZeroOut", (400, 520), (315, 26))
        g.connect(positive, "CONDITIONING", negative, "conditioning")
    else:
        negative = g.add("CLIPTextEncode", (400, 520), (420, 150), text=negative_text)
        g.connect(text_clip, "CLIP", negative, "clip")
    latent = g.add("EmptySD3LatentImage", (400, 720), (315, 106), width=size[0], height=size[1])
    guided = g.add("AttendExciteKSampler", (860, 40), (380, 1060), seed=SEED, **sampling)
    plain = g.add("KSampler", (860, 1140), (380, 262), title="KSampler (plain, same seed)", seed=SEED, **sampling)
    for sampler in (guided, plain):
        g.connect(model, model_output, sampler, "model")
        g.connect(positive, "CONDITIONING", sampler, "positive")
        g.connect(negative, "CONDITIONING", sampler, "negative")
        g.connect(latent, "LATENT", sampler, "latent_image")
    outputs(g, guided, plain, vae, guided)
    g.note((40, 560), (330, 700), note)


def few_steps(steps: int) -> str:
    from support import import_package
    import_package()
    from attend_and_excite.nodes.core.schedule import build_schedule
    from attend_and_excite.nodes.core.settings import DEFAULTS
    schedule = build_schedule(DEFAULTS, steps, flow=True)
    guided = [j for j in range(steps) if schedule.is_guided(j)]
    return FEW_STEPS.format(steps=steps, guided=", ".join(map(str, guided)),
                            refined=", ".join(map(str, schedule.thresholds)))


COMMON = ("After a run the sampler shows each subject's heatmap (dark = neglected); the overlay shows where each "
          "subject landed; the plot shows each subject's peak per step. The plain KSampler runs the same seed for "
          "comparison. Cost: one extra pass with gradients through the recorded blocks per guided step and "
          "refinement iteration; guidance_memory auto picks the lean pass where the fast one would not fit. "
          "Tested on tiny random models only, no real weights: the defaults are the paper's.")


def zimage(g: Graph):
    ksampler_template(
        g, ("z_image_turbo_bf16.safetensors", "qwen_3_4b.safetensors", "ae.safetensors"), "lumina2",
        dict(steps=9, cfg=1.0, sampler_name="res_multistep", scheduler="simple"),
        "a cat, a frog and a teapot", "", (1024, 1024), shift=3.0, note=(
            "Attend-and-Excite on Z-Image-Turbo (the base model too, at its own steps and cfg) makes every subject "
            "of the prompt appear.\n\n1. Load Z-Image's diffusion model, its Qwen3-4B text encoder (type lumina2) "
            "and the Flux VAE. 'CLIP Text Encode (Attend-and-Excite)' reads the subjects on the words of your "
            "prompt, not on the chat template Qwen3 wraps it in; with 'subjects' empty the nouns are picked.\n2. "
            "Z-Image-Turbo is distilled: 9 steps at cfg 1, so the negative is zeroed as in ComfyUI's template. "
            "'KSampler (Attend-and-Excite)' reads the image tokens' attention to the prompt in the first third of "
            "Z-Image's 30 single-stream layers. " + few_steps(9) + "\n3. " + COMMON))


def qwen_image(g: Graph):
    ksampler_template(
        g, ("qwen_image_fp8_e4m3fn.safetensors", "qwen_2.5_vl_7b_fp8_scaled.safetensors",
            "qwen_image_vae.safetensors"), "qwen_image",
        dict(steps=20, cfg=2.5, sampler_name="euler", scheduler="simple"),
        "a red bicycle, a blue umbrella and a yellow dog", "", (1328, 1328), shift=3.1,
        negative_text="", note=(
            "Attend-and-Excite on Qwen-Image (2512 too: load its file instead) makes every subject of the prompt "
            "appear.\n\n1. Load Qwen-Image's diffusion model, its Qwen2.5-VL text encoder (type qwen_image) and its "
            "VAE. 'CLIP Text Encode (Attend-and-Excite)' reads the subjects on the words of your prompt, counted in "
            "what the model receives (the encoder drops its system prompt); with 'subjects' empty the nouns are "
            "picked.\n2. 'KSampler (Attend-and-Excite)' reads the image tokens' attention to the prompt in all 60 "
            "double-stream blocks. At 1328 px the fast pass keeps about 54 GB for its backward, so on most cards "
            "guidance_memory auto runs the lean pass (about 3.5 GB). The Edit models' reference images are not "
            "supported: the sampler says so.\n3. " + COMMON))


def chroma(g: Graph):
    ksampler_template(
        g, ("Chroma1-HD.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors", "ae.safetensors"), "chroma",
        dict(steps=26, cfg=4.0, sampler_name="euler", scheduler="simple"),
        "a photo of a horse and a bear in a meadow", "horse, bear", (1024, 1024),
        negative_text="low quality, blurry, deformed", t5_options=True, note=(
            "Attend-and-Excite on Chroma makes every subject of the prompt appear.\n\n1. Load Chroma, its T5-XXL "
            "text encoder (type chroma) and the Flux VAE; T5TokenizerOptions pads as ComfyUI's Chroma template. The "
            "subjects are read on T5's pieces, clicked or named ('horse, bear'), or automatic with 'subjects' "
            "empty.\n2. Chroma samples with a real cfg and a negative prompt. 'KSampler (Attend-and-Excite)' reads "
            "the image tokens' attention to the prompt in Chroma's 19 double-stream blocks.\n3. " + COMMON))


def flux2(g: Graph):
    """The Flux.2 template of ComfyUI samples with SamplerCustomAdvanced and Flux2Scheduler: the pack's
    SAMPLER takes KSamplerSelect's place."""
    unet, clip, vae = loaders(g, "flux2_dev_fp8mixed.safetensors", "mistral_3_small_flux2_fp8.safetensors", "flux2",
                              "flux2-vae.safetensors")
    positive = g.add("AttendExciteTextEncode", (400, 40), (420, 330),
                     text="a corgi, a violin and a teapot", subjects="")
    g.connect(clip, "CLIP", positive, "clip")
    guidance = g.add("FluxGuidance", (400, 410), (420, 58), guidance=4.0)
    g.connect(positive, "CONDITIONING", guidance, "conditioning")
    latent = g.add("EmptyFlux2LatentImage", (400, 510), (315, 106), width=1024, height=1024)
    sampler = g.add("AttendExciteSampler", (860, 40), (380, 560), sampler_name="euler")
    guider = g.add("BasicGuider", (860, 640), (315, 46))
    g.connect(unet, "MODEL", guider, "model")
    g.connect(guidance, "CONDITIONING", guider, "conditioning")
    scheduler = g.add("Flux2Scheduler", (860, 730), (315, 106), steps=20, width=1024, height=1024)
    noise = g.add("RandomNoise", (860, 880), (315, 82), noise_seed=SEED)
    sample = g.add("SamplerCustomAdvanced", (1240, 40), (300, 330))
    for source, output, name in ((noise, "NOISE", "noise"), (guider, "GUIDER", "guider"),
                                 (sampler, "SAMPLER", "sampler"), (scheduler, "SIGMAS", "sigmas"),
                                 (latent, "LATENT", "latent_image")):
        g.connect(source, output, sample, name)
    heatmaps = g.add("AttendExciteHeatmaps", (1240, 420), (560, 640))
    g.connect(sampler, "attention", heatmaps, "attention")
    g.connect(sample, "output", heatmaps, "samples")
    image = g.add("VAEDecode", (1840, 40), (210, 46))
    g.connect(sample, "output", image, "samples")
    g.connect(vae, "VAE", image, "vae")
    save = g.add("SaveImage", (2100, 40), (380, 420), filename_prefix="attend_excite")
    g.connect(image, "IMAGE", save, "images")
    overlay = g.add("AttendExciteHeatmapOverlay", (2100, 500), (380, 420))
    g.connect(image, "IMAGE", overlay, "image")
    g.connect(sampler, "attention", overlay, "attention")
    log = g.add("PreviewAny", (1840, 980), (380, 380), title="Per-step log")
    g.connect(heatmaps, "log", log, "source")
    g.note((40, 430), (330, 760), (
        "Attend-and-Excite on Flux.2 dev (Klein too, where your ComfyUI has its Qwen3 encoder: load Klein's files, "
        "4 steps, no FluxGuidance) makes every subject of the prompt appear.\n\n1. Load Flux.2's diffusion model, "
        "its Mistral 3 text encoder (type flux2) and its VAE. 'CLIP Text Encode (Attend-and-Excite)' reads the "
        "subjects on the words of your prompt, not on the system prompt Flux.2 puts before it; Flux.2 dev's "
        "tokenizer lives in its text-encoder file, so the token list shows nothing until then: name the subjects "
        "('corgi, violin') or leave them empty for the nouns.\n2. As ComfyUI's Flux.2 template, this samples with "
        "SamplerCustomAdvanced and Flux2Scheduler; 'Attend-and-Excite Sampler' takes KSamplerSelect's place and "
        "reads the attention in Flux.2's double-stream blocks. For Klein at 4 steps: " + few_steps(4) + "\n3. "
        "The heatmaps node shows each subject's map after the run; the overlay where each subject landed. Cost: one "
        "extra pass with gradients through the double-stream blocks per guided step and refinement iteration; "
        "guidance_memory auto picks the lean pass where the fast one would not fit. Tested on tiny random models "
        "only, no real weights: the defaults are the paper's."))


TEMPLATES = {"zimage": zimage, "qwen_image": qwen_image, "flux2": flux2, "chroma": chroma}


def main():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    with tempfile.TemporaryDirectory() as base, running_server(base, os.environ["COMFYUI_DIR"]) as server:
        _, info = server.request("/object_info")
    for name, build in TEMPLATES.items():
        graph = Graph(info, version)
        build(graph)
        path = os.path.join(REPO, "example_workflows", f"attend_and_excite_{name}.json")
        with open(path, "w") as f:
            json.dump(graph.workflow(), f, indent=1)
        print(path)


if __name__ == "__main__":
    main()
