"""Which model family a loaded model is, and what Attend-and-Excite needs of it."""
from dataclasses import dataclass

import torch

from ..core.maps import kept_columns

CLIP_CHUNK = 77


@dataclass(frozen=True)
class Family:
    name: str
    latent_formats: tuple  # ComfyUI latent format classes this family uses
    drop_from_end: bool    # pads with another token than the end token: drop from the end token on
    map_level: int = 2     # UNets: maps at latent/4, the paper's 16x16 at 512 px, SDXL's 32x32 at 1024 px
    joint: bool = False    # MMDiT: image and text tokens attend jointly; maps from every joint block
    flow: bool = False     # samples x = (1 - sigma) x0 + sigma noise
    context: str = "clip"  # the context's columns: "clip" (77-token chunks), "clip+t5" (SD3: 77 CLIP
                           # columns, then T5's), "t5" (Flux: T5 alone, no start token)

    def kept(self, token_count: int, end_columns: list[int]) -> torch.Tensor:
        """The columns that take part in the token softmax. SD3's T5 columns are left out:
        the subjects are read on the CLIP columns, as on SDXL."""
        if self.context == "t5":
            return kept_columns(token_count, token_count, end_columns[:1], True, has_start=False)
        length = min(token_count, CLIP_CHUNK) if self.context == "clip+t5" else token_count
        return kept_columns(length, CLIP_CHUNK, end_columns, self.drop_from_end)


SD1 = Family("SD1.x", ("SD15",), drop_from_end=False)
SD2 = Family("SD2.x", ("SD15",), drop_from_end=True)
SDXL = Family("SDXL", ("SDXL", "SDXL_Playground_2_5"), drop_from_end=True)
SD3 = Family("SD3", ("SD3",), drop_from_end=True, joint=True, flow=True, context="clip+t5")
FLUX = Family("Flux.1", ("Flux",), drop_from_end=True, joint=True, flow=True, context="t5")
# The package's demo model (demo/model.py): 128 px pictures, so its maps are read at the
# latent's own 16 x 16, where each shape covers several cells (latent/4 would give 4 x 4).
DEMO = Family("SD1.x demo (shapes)", ("SD15",), drop_from_end=False, map_level=0)

# ComfyUI's config classes (comfy.supported_models); subclasses such as SSD-1B, Vega,
# KOALA, the instruct-pix2pix variants, Flux schnell and Flux fill are found through their bases.
FAMILIES = {"SD15": SD1, "SD20": SD2, "SDXL": SDXL, "SD3": SD3, "Flux": FLUX, "AttendExciteShapesDemo": DEMO}
# Subclasses of a supported config that are not text-to-image models.
NOT_TEXT_TO_IMAGE = {"SD_X4Upscaler", "LotusD"}


def detect_family(base_model) -> Family:
    """From the model's own config class (set by ComfyUI's detection) and latent format,
    not from file names."""
    config = getattr(base_model, "model_config", None)
    latent_format = type(getattr(config, "latent_format", None)).__name__
    for cls in type(config).__mro__:
        if cls.__name__ in NOT_TEXT_TO_IMAGE:
            break
        family = FAMILIES.get(cls.__name__)
        if family is not None and latent_format in family.latent_formats:
            return family
    supported = ", ".join(f.name for f in (SD1, SD2, SDXL, SD3, FLUX))
    raise ValueError(f"Attend-and-Excite supports {supported} models; this model is {type(config).__name__}, "
                     f"which is not supported")
