"""ComfyUI glue: patches, the guidance pass and sampler plumbing over nodes.core."""
