"""The package's nodes as ComfyUI's V3 extension."""
from comfy_api.latest import ComfyExtension, io

from .boost import AttendExciteAttentionBoost, AttendExciteAttentionTemperature
from .demo_loader import AttendExciteDemoModelLoader
from .heatmaps import AttendExciteHeatmapOverlay, AttendExciteHeatmaps
from .ksampler import AttendExciteKSampler
from .sampler import AttendExciteSampler
from .text_encode import AttendExciteTextEncode


class AttendExciteExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [AttendExciteTextEncode, AttendExciteKSampler, AttendExciteSampler, AttendExciteHeatmaps,
                AttendExciteHeatmapOverlay, AttendExciteAttentionBoost, AttendExciteAttentionTemperature,
                AttendExciteDemoModelLoader]

