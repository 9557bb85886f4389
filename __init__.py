"""Attend-and-Excite for ComfyUI (Chefer et al., 2023)."""
from .nodes import AttendExciteExtension

WEB_DIRECTORY = "./js"


async def comfy_entrypoint() -> AttendExciteExtension:
    return AttendExciteExtension()
