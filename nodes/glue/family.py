"""Which model family a loaded model is, and what Attend-and-Excite needs of it."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    latent_formats: tuple  # ComfyUI latent format classes this family uses
    drop_from_end: bool    # pads with another token than the end token: drop from the end token on
    map_level: int = 2     # maps at latent/4: the paper's 16x16 at 512 px, SDXL's 32x32 at 1024 px


SD1 = Family("SD1.x", ("SD15",), drop_from_end=False)
SD2 = Family("SD2.x", ("SD15",), drop_from_end=True)
SDXL = Family("SDXL", ("SDXL", "SDXL_Playground_2_5"), drop_from_end=True)
# The package's demo model (demo/model.py): 128 px pictures, so its maps are read at
# latent/2 (8 x 8; latent/4 would give 4 x 4).
DEMO = Family("SD1.x demo (shapes)", ("SD15",), drop_from_end=False, map_level=1)

# ComfyUI's config classes (comfy.supported_models); subclasses such as SSD-1B, Vega,
# KOALA and the instruct-pix2pix variants are found through their bases.
FAMILIES = {"SD15": SD1, "SD20": SD2, "SDXL": SDXL, "AttendExciteShapesDemo": DEMO}
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
    supported = ", ".join(f.name for f in (SD1, SD2, SDXL))
    raise ValueError(f"Attend-and-Excite supports {supported} models (UNet models with cross-attention); this "
                     f"model is {type(config).__name__}, which is not supported")
