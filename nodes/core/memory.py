"""Which guidance pass fits beside the model: the fast pass keeps every activation of the layers
it runs for its backward; the lean pass keeps their inputs and runs each layer again there
(about 1.4x the pass's arithmetic, a fraction of its memory)."""

GIB = 2 ** 30

# GiB the fast pass keeps for its backward, per image, at 2-byte activations, for each family's
# full-width model at its own size (latent cells): counted on the meta device by
# tests/harness/saved_activations.py. It grows with the latent's area; SD2.x is SD1.x's layout.
FAST_PASS_GIB = {"SD1.x": (0.322, 64 * 64), "SD2.x": (0.322, 64 * 64), "SDXL": (3.880, 128 * 128),
                 "SD3": (0.732, 128 * 128), "Flux.1": (40.978, 128 * 128)}


def fast_pass_bytes(family: str, batch: int, latent_cells: int, element_size: int) -> float | None:
    """What the fast pass keeps for `batch` images of `latent_cells` latent cells; None for a
    family without a count (the package's demo model)."""
    if family not in FAST_PASS_GIB:
        return None
    gib, cells = FAST_PASS_GIB[family]
    return gib * GIB * batch * latent_cells / cells * element_size / 2


def choose_pass(requested: str, on_cpu: bool, free_bytes: float, fast_bytes: float | None,
                reserve_bytes: float) -> tuple[str, str]:
    """(fast | lean, why): `requested` unless it is auto. auto takes lean where the fast pass's
    estimate and the reserve the rest of sampling needs exceed the device's free memory."""
    if requested != "auto":
        return requested, ""
    if on_cpu:
        return "fast", "on the CPU the fast pass's memory is ordinary RAM"
    if fast_bytes is None:
        return "fast", "no memory estimate for this model"
    estimate = f"the fast pass keeps about {fast_bytes / GIB:.1f} GiB for its backward, {free_bytes / GIB:.1f} GiB " \
               f"are free beside the model"
    return ("lean" if fast_bytes + reserve_bytes > free_bytes else "fast"), estimate
