"""The SynGen and A-STAR terms (nodes/core/losses.py) against gsn-factory's re-implementations
(grimalPaul/gsn-factory, src/models/gsn_criterion/utils_processing_attention_loss.py), on the
same random maps. Nothing of gsn-factory is in this repository: give the path of a checkout.
Its module imports OpenCV and diffusers at the top for functions these terms do not use: both
are stood in for by empty modules, so neither is needed.

    python tests/harness/crosscheck_losses.py PATH/TO/gsn-factory [--cases N]

Prints the largest relative difference per term and writes nothing.
"""
import argparse
import importlib.util
import os
import sys
import types

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from support import import_package  # noqa: E402

MODULE = "src/models/gsn_criterion/utils_processing_attention_loss.py"


def their_functions(checkout: str):
    """gsn-factory's loss module, imported with empty stand-ins for what it imports and these
    terms never call."""
    stand_ins = ["cv2", "diffusers", "diffusers.pipelines", "diffusers.pipelines.stable_diffusion_attend_and_excite",
                 "diffusers.pipelines.stable_diffusion_attend_and_excite.pipeline_stable_diffusion_attend_and_excite"]
    for name in stand_ins:
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules[stand_ins[-1]].GaussianSmoothing = None
    spec = importlib.util.spec_from_file_location("gsn_losses", os.path.join(checkout, MODULE))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return vars(module)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout")
    parser.add_argument("--cases", type=int, default=50)
    args = parser.parse_args()
    import_package()
    from attend_and_excite.nodes.core.losses import Words, a_star_terms, retention_masks, syngen_terms
    theirs = their_functions(args.checkout)
    generator = torch.Generator().manual_seed(0)
    worst = {"syngen": 0.0, "segregation": 0.0, "retention": 0.0}
    for case in range(args.cases):
        tokens = torch.rand(1, 8, 16 * 16, generator=generator, dtype=torch.float64) ** 4 + 1e-4
        tokens = tokens / tokens.sum(-1, keepdim=True)
        # 'a red circle and a blue square' (tokens 1..8 as positions 0..7): red 1, circle 2, blue 5, square 6;
        # every third case a noun without a modifier.
        modifiers = ((((1,),), ((5,),)) if case % 3 else (((1,),), ()))
        words = Words(2, (), ((2,), (6,)), modifiers, 8)
        positive, negative = syngen_terms(tokens, words)
        subtrees = [[m[0] for m in own] + [noun[0]] for noun, own in zip(words.noun_tokens, modifiers)]
        maps = [tokens[0, t].view(16, 16) for t in range(8)]
        reference, _ = theirs["syngen_loss"](maps, subtrees, list(range(8)))
        ours = float(positive + negative)
        worst["syngen"] = max(worst["syngen"], abs(ours - float(reference)) / abs(float(reference)))

        subject_maps = torch.rand(1, 3, 16, 16, generator=generator, dtype=torch.float64)
        previous = retention_masks(torch.rand(1, 3, 16, 16, generator=generator, dtype=torch.float64))
        segregation, retention = a_star_terms(subject_maps, previous)
        listed = [subject_maps[0, s] for s in range(3)]
        their_segregation, _ = theirs["iou_loss"](listed, [0, 1, 2])
        their_retention, _ = theirs["iou_mask"](listed, [0, 1, 2], [previous[0, s] for s in range(3)])
        for name, a, b in (("segregation", segregation, their_segregation), ("retention", retention, their_retention)):
            worst[name] = max(worst[name], abs(float(a) - float(b)) / abs(float(b)))
    for name, difference in worst.items():
        print(f"{name}: largest relative difference over {args.cases} cases {difference:.2e}")


if __name__ == "__main__":
    main()
