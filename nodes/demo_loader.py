from comfy_api.latest import io

from .demo import model as demo_model
from .parameters import CATEGORY

# What the loader offers -> the weights' file: the UNet shapes model (cross-attention, SD1.x's layout)
# and its twin on ComfyUI's Flux class (joint attention), in the same shapes world.
DEMO_MODELS = {"shapes, UNet (cross-attention)": demo_model.WEIGHTS,
               "shapes, Flux-class (joint attention)": demo_model.JOINT_WEIGHTS}


class AttendExciteDemoModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AttendExciteDemoModelLoader",
            display_name="Load Demo Model (Attend-and-Excite shapes)",
            category=CATEGORY,
            description="A small text-to-image model shipped with this package (a few MB): 128 px pictures of one "
                        "or two light shapes on a dark background ('a circle and a triangle'), to try the nodes "
                        "with no download; the stock CLIP Text Encode, KSampler and VAE Decode accept its "
                        "outputs. Two of them: a UNet (cross-attention, as SD1.x) and a Flux-class transformer "
                        "(joint attention, as Flux, SD3 and the newer families).",
            inputs=[io.Combo.Input("model", options=list(DEMO_MODELS), default=next(iter(DEMO_MODELS)),
                                   optional=True,
                                   tooltip="Which demo model: the UNet (cross-attention) or the Flux-class "
                                           "transformer (joint attention); both draw the same shapes.")],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, model: str = next(iter(DEMO_MODELS))) -> io.NodeOutput:
        return io.NodeOutput(*demo_model.load(DEMO_MODELS[model]))
