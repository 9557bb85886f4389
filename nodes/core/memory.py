"""Which guidance pass fits beside the model: the fast pass keeps every activation of the layers
it runs for its backward; the lean pass keeps their inputs and runs each layer again there
(about 1.4x the pass's arithmetic, a fraction of its memory)."""

from .families import FAMILIES

GIB = 2 ** 30

# GiB the fast pass keeps for its backward, per image, at 2-byte activations, at each family's own
# size (latent cells): the families' counts (families.py) of their largest variant.
FAST_PASS_GIB = {f.name: max(f.fast_pass)[1:] for f in FAMILIES if f.fast_pass}


def fast_pass_bytes(family: str, batch: int, latent_cells: int, element_size: int,
                    parameters: float | None = None) -> float | None:
    """What the fast pass keeps for `batch` images of `latent_cells` latent cells; None for a family
    without a count (the package's demo model). parameters: the model's, in billions: the estimate of
    the variant nearest in size (Flux.2 Klein 4B, 9B and dev); by default the largest's."""
    family = next((f for f in FAMILIES if f.name == family), None)
    if family is None or not family.fast_pass:
        return None
    variants = sorted(family.fast_pass)
    _, gib, cells = variants[-1] if parameters is None else min(variants, key=lambda v: abs(v[0] - parameters))
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
