"""The lean guidance pass: chosen layers keep only their inputs for the backward, and run again
there, one at a time, to rebuild the activations it reads (activation checkpointing).

A layer's forward is swapped on the module for the length of one pass and put back, whatever
happens. The rerun must compute what the first run computed: ComfyUI changes its
transformer_options dict as the forward goes on (block_index, activations_shape), so the rerun
gets the dicts as they were at the call; where the model changes activations in place (Flux's
blocks, a ControlNet's additions), it gets copies of its input tensors as they were, and keeps
copies of what it saves (as the fast pass does). The rerun records no maps: a recorder is open only
inside the pass's forward (AttentionSum.recording).
"""
import contextlib
import functools

import torch


def copy_activation(tensor: torch.Tensor) -> torch.Tensor:
    """An activation as it is now, safe from later in-place updates; weights are not copied."""
    return tensor if isinstance(tensor, torch.nn.Parameter) else tensor.detach().clone()


def _as_called(argument, copy_tensors: bool):
    """An argument as the rerun must see it: a dict copied (ComfyUI changes transformer_options'
    entries as the forward goes on), tensors, alone or in a list, copied if asked."""
    if isinstance(argument, dict):
        return dict(argument)
    if not copy_tensors:
        return argument
    if isinstance(argument, list):
        return [_as_called(item, True) for item in argument]
    if isinstance(argument, torch.Tensor) and not isinstance(argument, torch.nn.Parameter):
        return argument.clone()     # tracked as the original: a leaf copy would refuse the model's in-place updates
    return argument


class _AllRebuilt(BaseException):    # not an Exception: no `except Exception` in a model may stop it
    """The rerun has rebuilt every saved activation: the rest of the layer is not needed."""


class _LayerRun:
    """One call of a recomputed layer: autograd keeps a number for each activation the layer
    saves; the first number the backward reads reruns the layer, and each activation is freed
    once read."""

    def __init__(self, rerun, copy_saved: bool, rerun_context):
        self.rerun, self.copy_saved, self.rerun_context = rerun, copy_saved, rerun_context
        self.saved = 0
        self.rebuilt = None

    def pack(self, _tensor) -> int:
        self.saved += 1
        return self.saved - 1

    def unpack(self, index: int) -> torch.Tensor:
        if self.rebuilt is None:
            self._rebuild()
        return self.rebuilt.pop(index)

    def _rebuild(self):
        """Relies on the rerun saving the same tensors in the same order as the first run: autograd's
        number for an activation is its place in that order. The recorded layers keep to it by computing
        their probabilities whether their recorder is open or not."""
        rebuilt = {}

        def keep(tensor):
            rebuilt[len(rebuilt)] = copy_activation(tensor) if self.copy_saved else tensor.detach()
            if len(rebuilt) == self.saved:
                raise _AllRebuilt
        with contextlib.suppress(_AllRebuilt), torch.enable_grad(), self.rerun_context(), \
                torch.autograd.graph.saved_tensors_hooks(keep, lambda _: None):
            self.rerun()
        if len(rebuilt) != self.saved:
            raise RuntimeError(f"a layer of the lean guidance pass saved {len(rebuilt)} activations when run again, "
                               f"{self.saved} the first time: it does not compute the same when rerun; set "
                               f"guidance_memory to fast")
        self.rebuilt = rebuilt


def _recomputed(forward, copy_tensors: bool, rerun_context):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        rerun_args = [_as_called(a, copy_tensors) for a in args]
        rerun_kwargs = {key: _as_called(a, copy_tensors) for key, a in kwargs.items()}
        layer = _LayerRun(lambda: forward(*rerun_args, **rerun_kwargs), copy_tensors, rerun_context)
        with torch.autograd.graph.saved_tensors_hooks(layer.pack, layer.unpack):
            return forward(*args, **kwargs)
    return run


@contextlib.contextmanager
def recomputing(modules: list[torch.nn.Module], copy_tensors: bool, rerun_context=contextlib.nullcontext):
    """Until exit, each of `modules` keeps only its inputs for the backward and runs again there;
    copy_tensors: the model changes activations in place; rerun_context(): wraps each rerun."""
    swapped = []
    try:
        for module in modules:
            own = vars(module).get("forward")     # another node's instance-level forward stays underneath
            module.forward = _recomputed(module.forward, copy_tensors, rerun_context)
            swapped.append((module, own))
        yield
    finally:
        for module, own in reversed(swapped):
            if own is None:
                del module.forward
            else:
                module.forward = own
