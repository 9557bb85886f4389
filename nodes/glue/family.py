"""Which model family a loaded model is, and what Attend-and-Excite needs of it."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    drop_from_end: bool    # pad with another token than the end token: drop from the end token on
    map_level: int = 2     # maps at latent/4


FAMILIES = {
    "SD15": Family("SD1.x", drop_from_end=False),
}


def detect_family(base_model) -> Family:
    """From the model's own config class (set by ComfyUI's detection), not file names."""
    config = type(getattr(base_model, "model_config", None))
    for cls in config.__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    supported = ", ".join(f.name for f in FAMILIES.values())
    raise ValueError(f"Attend-and-Excite supports {supported} models; this model is {config.__name__}")
