from comfy_api.latest import io

from .demo import model as demo_model
from .parameters import CATEGORY


class AttendExciteDemoModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AttendExciteDemoModelLoader",
            display_name="Load Demo Model (Attend-and-Excite shapes)",
            category=CATEGORY,
            description="A small text-to-image model shipped with this package (6 MB): 128 px pictures of one or "
                        "two light shapes on a dark background ('a circle and a triangle'), to try the nodes with no "
                        "download; the stock CLIP Text Encode, KSampler and VAE Decode accept its outputs.",
            inputs=[],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(*demo_model.load())
