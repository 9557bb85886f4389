"""Attend-and-Excite for ComfyUI (Chefer et al., 2023)."""
WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    # ComfyUI is imported and the route registered here, when ComfyUI loads the package, so that
    # importing any part of it (the pure-torch core, say) has no side effect.
    from .nodes.extension import AttendExciteExtension
    from .nodes.glue.routes import register_routes
    register_routes()
    return AttendExciteExtension()
