"""The model families Attend-and-Excite supports, one entry each: everything the package knows
of a family is here, as data; the glue reads it (detection, the recorder, the token columns,
the flow step, the memory estimate, the heatmaps' scale).

Adding a family is one entry below and its tests (CONTRIBUTING.md, "Adding a model family").
"""
from dataclasses import dataclass

import torch

from .maps import kept_columns

# Where a family's maps come from (the glue has a recorder for each):
CROSS_ATTENTION = "cross-attention"   # UNet cross-attention layers at one latent level (attn2 patches)
JOINT_BLOCKS = "joint blocks"         # double-stream blocks: image and text in one softmax, each with its own
                                      # weights (a `dit` double_block replace patch on each)
JOINT_LAYERS = "joint layers"         # single-stream layers over [text, image] (ComfyUI's attention override)

# Which context columns are words of the prompt:
CLIP = "clip"          # 77-token CLIP chunks, each with its start and end token
CLIP_T5 = "clip+t5"    # SD3: 77 CLIP columns, then T5's; the subjects are read on the CLIP columns
T5 = "t5"              # T5 alone: no start token, an end token, padding after it
PROMPT = "prompt"      # an LLM behind a chat template: the columns of the prompt's own pieces, found by
                       # 'CLIP Text Encode (Attend-and-Excite)' (template, special and padding tokens are not)

CLIP_CHUNK = 77


@dataclass(frozen=True)
class Family:
    name: str
    configs: tuple[str, ...]          # ComfyUI's config classes (comfy.supported_models); subclasses match too
    latent_formats: tuple[str, ...]   # ... with one of these latent formats (comfy.latent_formats)
    maps: str = CROSS_ATTENTION
    map_level: int = 2                # CROSS_ATTENTION: halvings of the latent at the recorded level
    blocks: str = ""                  # JOINT_*: the diffusion model's list of the recorded blocks or layers
    recorded_share: float = 1.0       # JOINT_LAYERS: the first share of the layers is recorded
    context: str = CLIP
    drop_from_end: bool = True        # CLIP: pads with another token than the end token: drop from it on
    flow: bool = False                # samples x = (1 - sigma) x0 + sigma noise
    context_padded_left: bool = False  # the model pads the context on the left (the subjects' columns move)
    refuses_reference_latents: bool = False   # its Edit models' reference images are not supported
    pixels_per_cell: int = 8          # the VAE's pixels per latent cell (heatmaps and masks at the image's size)
    # What the fast pass keeps for its backward per image at 2-byte activations, for each full-size variant:
    # (parameters in billions, GiB, latent cells), counted on the meta device by
    # tests/harness/saved_activations.py; none: no count (auto then takes fast).
    fast_pass: tuple[tuple[float, float, int], ...] = ()

    @property
    def joint(self) -> bool:
        """Image and text tokens attend jointly (MMDiT and single-stream DiTs)."""
        return self.maps != CROSS_ATTENTION

    def recorded_count(self, layers: int) -> int:
        """JOINT_LAYERS: how many of the first layers are recorded (at least one)."""
        return max(1, round(layers * self.recorded_share))

    def kept(self, token_count: int, end_columns: list[int], prompt_columns: list[int] = ()) -> torch.Tensor:
        """The context columns that take part in the token softmax: the prompt's words (and, on SD1.x
        as the reference, the padding after them). SD3's T5 columns are left out: the subjects are read
        on the CLIP columns, as on SDXL."""
        if self.context == PROMPT:
            return torch.tensor(sorted(prompt_columns), dtype=torch.long)
        if self.context == T5:
            return kept_columns(token_count, token_count, end_columns[:1], True, has_start=False)
        length = min(token_count, CLIP_CHUNK) if self.context == CLIP_T5 else token_count
        return kept_columns(length, CLIP_CHUNK, end_columns, self.drop_from_end)


SD1 = Family("SD1.x", ("SD15",), ("SD15",), drop_from_end=False, fast_pass=((0.86, 0.322, 64 * 64),))
SD2 = Family("SD2.x", ("SD20",), ("SD15",), fast_pass=((0.86, 0.322, 64 * 64),))    # SD1.x's layout
SDXL = Family("SDXL", ("SDXL",), ("SDXL", "SDXL_Playground_2_5"), fast_pass=((2.57, 3.880, 128 * 128),))
SD3 = Family("SD3", ("SD3",), ("SD3",), maps=JOINT_BLOCKS, blocks="joint_blocks", context=CLIP_T5, flow=True,
             fast_pass=((8.06, 0.732, 128 * 128),))      # SD3.5 large
FLUX = Family("Flux.1", ("Flux",), ("Flux",), maps=JOINT_BLOCKS, blocks="double_blocks", context=T5, flow=True,
              fast_pass=((11.9, 10.704, 128 * 128),))
# The package's demo model (demo/model.py): 128 px pictures, so its maps are read at the
# latent's own 16 x 16, where each shape covers several cells (latent/4 would give 4 x 4).
DEMO = Family("SD1.x demo (shapes)", ("AttendExciteShapesDemo",), ("SD15",), map_level=0, drop_from_end=False)
# The joint-attention demo (demo/model.py): ComfyUI's Flux at a tiny width behind the same CLIP and autoencoder.
DEMO_JOINT = Family("Flux.1 demo (shapes)", ("AttendExciteJointShapesDemo",), ("SD15",), maps=JOINT_BLOCKS,
                    blocks="double_blocks", drop_from_end=False, flow=True)
DEMOS = (DEMO, DEMO_JOINT)

# Single-stream layers (30 at full size): the first third is recorded, the share of Flux.1's blocks that
# its maps come from (19 double-stream blocks of 57), so that the pass stops as early.
ZIMAGE = Family("Z-Image", ("ZImage",), ("Flux",), maps=JOINT_LAYERS, blocks="layers", recorded_share=1 / 3,
                context=PROMPT, flow=True, fast_pass=((6.15, 9.274, 128 * 128),))
QWEN_IMAGE = Family("Qwen-Image", ("QwenImage",), ("Wan21",), maps=JOINT_BLOCKS, blocks="transformer_blocks",
                    context=PROMPT, flow=True, refuses_reference_latents=True,
                    fast_pass=((20.43, 53.727, 166 * 166),))      # at 1328 px, its own size
FLUX2 = Family("Flux.2", ("Flux2",), ("Flux2",), maps=JOINT_BLOCKS, blocks="double_blocks", context=PROMPT,
               flow=True, context_padded_left=True, pixels_per_cell=16,
               # Klein 4B, Klein 9B, dev
               fast_pass=((3.88, 4.396, 64 * 64), (9.08, 9.352, 64 * 64), (32.22, 13.958, 64 * 64)))
CHROMA = Family("Chroma", ("Chroma",), ("Flux",), maps=JOINT_BLOCKS, blocks="double_blocks", context=T5, flow=True,
                fast_pass=((8.9, 10.851, 128 * 128),))

# Every family: detection matches a model's own config class first, then its bases'.
FAMILIES = (*DEMOS, SD1, SD2, SDXL, SD3, FLUX, ZIMAGE, QWEN_IMAGE, FLUX2, CHROMA)

# ComfyUI config classes that subclass a supported one but are not text-to-image models.
NOT_TEXT_TO_IMAGE = {"SD_X4Upscaler", "LotusD"}


def family_of(config_classes: list[str], latent_format: str) -> Family:
    """The family of a model whose config class has these names (its own first, then its bases')
    and this latent format."""
    for name in config_classes:
        if name in NOT_TEXT_TO_IMAGE:
            break
        found = next((f for f in FAMILIES if name in f.configs and latent_format in f.latent_formats), None)
        if found is not None:
            return found
    supported = ", ".join(f.name for f in FAMILIES if f not in DEMOS)
    raise ValueError(f"Attend-and-Excite supports {supported} models; this model is {config_classes[0]}, "
                     f"which is not supported")
