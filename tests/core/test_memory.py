"""guidance_memory's auto choice and the fast pass's estimate (nodes/core/memory.py)."""
import pytest

from attend_and_excite.nodes.core.memory import FAST_PASS_GIB, GIB, choose_pass, fast_pass_bytes


def test_the_estimate_grows_with_batch_area_and_activation_size():
    sdxl = fast_pass_bytes("SDXL", 1, 128 * 128, 2)
    assert sdxl == pytest.approx(FAST_PASS_GIB["SDXL"][0] * GIB)
    assert fast_pass_bytes("SDXL", 2, 128 * 128, 2) == pytest.approx(2 * sdxl)
    assert fast_pass_bytes("SDXL", 1, 64 * 64, 2) == pytest.approx(sdxl / 4)
    assert fast_pass_bytes("SDXL", 1, 128 * 128, 4) == pytest.approx(2 * sdxl)
    assert fast_pass_bytes("SD1.x demo (shapes)", 1, 256, 4) is None


@pytest.mark.parametrize("free_gib, picked", [(2.0, "lean"), (4.5, "lean"), (6.0, "fast")])
def test_auto_takes_lean_where_the_fast_pass_and_the_reserve_exceed_the_free_memory(free_gib, picked):
    mode, why = choose_pass("auto", False, free_gib * GIB, 3.88 * GIB, 1.0 * GIB)
    assert mode == picked
    assert why == f"the fast pass keeps about 3.9 GiB for its backward, {free_gib:.1f} GiB are free beside the model"


def test_auto_is_fast_on_the_cpu_or_without_an_estimate_and_a_choice_is_kept():
    assert choose_pass("auto", True, 0, 3.88 * GIB, GIB) == ("fast",
                                                             "on the CPU the fast pass's memory is ordinary RAM")
    assert choose_pass("auto", False, 0, None, GIB) == ("fast", "no memory estimate for this model")
    assert choose_pass("lean", True, 0, None, GIB) == ("lean", "")
    assert choose_pass("fast", False, 0, 100 * GIB, GIB) == ("fast", "")


def test_the_estimate_is_the_counted_variant_nearest_in_size():
    """Flux.2 Klein 4B, 9B and dev share a family: auto reads the count of the one the model's size is nearest."""
    from attend_and_excite.nodes.core.families import FLUX2
    counts = {params: gib for params, gib, _ in FLUX2.fast_pass}
    for size, params in ((4.0, 3.88), (9.2, 9.08), (31.0, 32.22), (None, 32.22)):
        assert fast_pass_bytes("Flux.2", 1, 64 * 64, 2, size) == pytest.approx(counts[params] * GIB)
