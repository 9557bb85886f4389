"""Attend-and-Excite maths in plain torch: nothing here imports ComfyUI."""
