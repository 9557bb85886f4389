"""Attend-and-Excite for ComfyUI: thin V3 nodes over nodes.core (maths) and nodes.glue (ComfyUI)."""
from comfy_api.latest import ComfyExtension, io

from .demo_loader import AttendExciteDemoModelLoader
from .glue.routes import register_routes
from .heatmaps import AttendExciteHeatmapOverlay, AttendExciteHeatmaps
from .ksampler import AttendExciteKSampler
from .sampler import AttendExciteSampler
from .text_encode import AttendExciteTextEncode

register_routes()  # at import: ComfyUI adds custom routes once every node pack has loaded


class AttendExciteExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [AttendExciteTextEncode, AttendExciteKSampler, AttendExciteSampler, AttendExciteHeatmaps,
                AttendExciteHeatmapOverlay, AttendExciteDemoModelLoader]
