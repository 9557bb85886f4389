from comfy_api.latest import io

from .core.tokens import SubjectError
from .glue.text import encode_with_subjects
from .parameters import CATEGORY


class AttendExciteTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="AttendExciteTextEncode",
            display_name="CLIP Text Encode (Attend-and-Excite)",
            category=CATEGORY,
            description="Encodes a prompt exactly as CLIP Text Encode does and marks the subjects that "
                        "Attend-and-Excite must make appear.",
            inputs=[
                io.Clip.Input("clip", tooltip="The CLIP model used for encoding the text."),
                io.String.Input("text", multiline=True, dynamic_prompts=True, tooltip="The prompt."),
                io.String.Input("subjects", default="",
                                tooltip="Comma-separated subject words ('cat, frog'), or token positions "
                                        "('2,5', start token = 0), or empty to pick the nouns automatically. "
                                        "A word split into several pieces counts as one subject."),
            ],
            outputs=[io.Conditioning.Output(tooltip="The conditioning, with the subjects' token positions.")],
        )

    @classmethod
    def execute(cls, clip, text, subjects) -> io.NodeOutput:
        if clip is None:
            raise RuntimeError("clip input is invalid: None. Does the checkpoint contain a text encoder?")
        try:
            return io.NodeOutput(encode_with_subjects(clip, text, subjects))
        except SubjectError as error:
            raise ValueError(f"Attend-and-Excite: {error}") from None
