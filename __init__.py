"""Attend-and-Excite for ComfyUI (Chefer et al., 2023)."""
WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    # Imported here, not at the top: pytest imports this file on its own (outside any
    # package) when the repository is checked out under a name that is not an identifier.
    from .nodes import AttendExciteExtension
    return AttendExciteExtension()
