"""Attend-and-Excite for ComfyUI: thin V3 nodes (extension.py) over nodes.core (pure torch maths)
and nodes.glue (ComfyUI). Importing this package loads nothing of ComfyUI and registers nothing."""
