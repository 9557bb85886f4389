"""Which family a loaded model is (nodes/core/families.py), and the recorder of its maps."""
from ..core.families import CLIP_CHUNK, CROSS_ATTENTION, DEMO, FAMILIES, FLUX, JOINT_BLOCKS, SD1, SD2, SD3, SDXL, \
    Family, family_of
from .joint import JointAttentionRecorder, JointLayerRecorder, joint_blocks
from .recorder import AttentionRecorder, blocks_at_level

__all__ = ["CLIP_CHUNK", "DEMO", "FAMILIES", "FLUX", "SD1", "SD2", "SD3", "SDXL", "Family", "detect_family",
           "recorder_for"]


def detect_family(base_model) -> Family:
    """From the model's own config class (set by ComfyUI's detection) and latent format,
    not from file names."""
    config = getattr(base_model, "model_config", None)
    latent_format = type(getattr(config, "latent_format", None)).__name__
    return family_of([cls.__name__ for cls in type(config).__mro__], latent_format)


def recorder_for(diffusion_model, family: Family, map_level=None, text_length: int = 0):
    """The recorder of a family's maps: UNets' cross-attention at a latent level, or the joint
    attention of its recorded blocks or layers. text_length: the context's columns (single-stream
    layers tell their joint calls by the sequence's length)."""
    if family.maps == CROSS_ATTENTION:
        return AttentionRecorder(blocks_at_level(diffusion_model, family.map_level if map_level is None else map_level))
    if map_level is not None:
        raise ValueError(f"map_level chooses a UNet level; {family.name} reads its maps in its joint attention "
                         f"blocks: set map_level to auto")
    if family.maps == JOINT_BLOCKS:
        return JointAttentionRecorder(joint_blocks(diffusion_model, family.blocks), diffusion_model.patch_size,
                                      family.blocks)
    return JointLayerRecorder(diffusion_model, family.blocks, family.recorded_count, text_length)
