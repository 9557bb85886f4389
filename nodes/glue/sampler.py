"""The Attend-and-Excite SAMPLER: any ComfyUI sampler, with the latent moved in
place right before each guided step's denoiser evaluation.

The base sampler runs once over all sigmas, so its own state stays intact
(multistep history, ancestral and SDE noise); a thin wrapper around the model it
calls finds each guided step's state evaluation and moves that tensor first.
"""
import contextlib
import logging

import torch

import comfy.model_management
import comfy.samplers
from comfy.k_diffusion.sampling import offset_first_sigma_for_snr

from ..core.excite import excite
from ..core.losses import binding_weight, loss_named
from ..core.record import AttentionRecord
from ..core.settings import Settings
from ..core.steps import OWN_GRID, StepGrid, locate
from .family import detect_family, recorder_for
from .guidance import GuidancePass, autograd_weights
from .target import guidance_target

# UniPC evaluates a rescaled copy of its state: the move reaches that evaluation,
# not the solver's corrector.
RESCALED_STATE = {"uni_pc", "uni_pc_bh2"}
# Samplers whose progress callback reports their initial latent, not the current state.
STALE_CALLBACK_STATE = {"ipndm", "ipndm_v", "deis"}


class GuidedRun:
    """One sampling call: decides which model calls are guided and guides them."""

    def __init__(self, model_k, sigmas: torch.Tensor, settings: Settings, sampler_name: str,
                 record: AttentionRecord):
        guider = model_k.inner_model
        base_model = guider.inner_model
        family = detect_family(base_model)
        target = guidance_target(guider.conds.get("positive", []), settings, family, steps=len(sigmas) - 1)
        self.schedule = target.schedule
        record.start(family.name, target.labels, self.schedule.thresholds, self.schedule.steps, loss=settings.loss,
                     pixels_per_cell=family.pixels_per_cell)
        recorder = recorder_for(base_model.diffusion_model, family, settings.map_level, target.token_count)
        self.guidance = GuidancePass(base_model, target.entry, recorder, subjects=target.subjects, kept=target.kept,
                                     smoothing_kernel=settings.smoothing_kernel,
                                     smoothing_sigma=settings.smoothing_sigma, loss=settings.loss,
                                     modifiers=target.modifiers, prompt_columns=target.prompt_columns,
                                     guidance_memory=settings.guidance_memory, family=family.name)
        self.loss, self.schedule_steps = settings.loss, settings.schedule_steps
        loss = loss_named(settings.loss)
        self.unmet, self.binds = loss.unmet, loss.binding_schedule
        sigma_list = sigmas.tolist()
        # Samplers that work in log-SNR start a flow model just under sigma 1 (ComfyUI's
        # offset_first_sigma_for_snr): step 0 is found at either sigma.
        first_sigmas = (sigma_list[0], float(offset_first_sigma_for_snr(sigmas, base_model.model_sampling)[0]))
        self.grid = StepGrid.of(sigma_list, first_sigmas, sampler_name, family.flow)
        self.pending = tuple(j for j in range(self.schedule.steps) if self.schedule.is_guided(j))
        self.calls_seen = (0,) * len(self.pending)
        self.sampler_name = sampler_name
        if sampler_name in RESCALED_STATE:
            logging.warning("Attend-and-Excite: %s keeps a rescaled copy of its state, so each update reaches only "
                            "that step's model evaluation; pick another sampler for exact Attend-and-Excite",
                            sampler_name)
        self.moved = {}
        self.unread = []      # (UnreadLog, maps) of each guided step
        self.record = record
        self.weights = contextlib.ExitStack()
        self.weights_swapped = False

    def before_model_call(self, x: torch.Tensor, sigma: torch.Tensor, model_options: dict):
        if self.pending:     # after the last guided step, no sigma is read on the host
            sigma_value = float(sigma.reshape(-1)[0])
            found = locate(sigma_value, self.pending, self.calls_seen, self.grid)
            self.pending, self.calls_seen = found.pending, found.calls_seen
            if found.step is not None:
                self._guide(x, sigma, found.step, sigma_value, model_options)

    def callback(self, callback):
        def checked(info):
            step = info.get("i")
            if step in self.moved and self.sampler_name not in OWN_GRID | RESCALED_STATE | STALE_CALLBACK_STATE:
                if info["x"].data_ptr() != self.moved.pop(step):
                    logging.warning("Attend-and-Excite: sampler %s evaluated step %d on another tensor than "
                                    "its state; the latent update may not carry", self.sampler_name, step)
            if callback is not None:
                callback(info)
        return checked

    def _guide(self, x: torch.Tensor, sigma: torch.Tensor, step: int, sigma_value: float, model_options: dict):
        if not self.weights_swapped:
            self.weights.enter_context(autograd_weights(self.guidance.modules))
            self.weights_swapped = True
        s = self.schedule

        def on_iteration(iteration):
            comfy.model_management.throw_exception_if_processing_interrupted()
            _progress_text(f"Attend-and-Excite: step {step + 1}, refinement {iteration}/{s.max_refinement}")

        out_of_memory = False
        self.guidance.begin_step(binding_weight(step, s.steps, self.schedule_steps) if self.binds else 0.0)
        try:
            with torch.inference_mode(False), torch.enable_grad():
                moved, log = excite(x, lambda z: self.guidance.evaluate(z, sigma, model_options), step=step,
                                    step_size=s.step_size(step, sigma_value), alter=step < s.steps_to_alter,
                                    threshold=s.thresholds.get(step), max_refinement=s.max_refinement,
                                    on_iteration=on_iteration, unmet=self.unmet)
                self.guidance.end_step()
        except torch.OutOfMemoryError:
            out_of_memory = True     # raised below, once this error's frames (and the graph) are released
        if out_of_memory:
            self.close(keep_graph=False)
            what = "lower the image size or the batch size (the lean pass keeps only its layers' inputs)" \
                if self.guidance.plan.lean else \
                "set guidance_memory to lean (the pass then keeps only its layers' inputs for its backward and runs " \
                "them again there: a fraction of the memory for about 1.4x the pass's work), or lower the image size " \
                "or the batch size"
            raise torch.OutOfMemoryError(
                f"Attend-and-Excite ran out of memory in its guidance pass (latent {tuple(x.shape)}, step {step + 1}, "
                f"{self.guidance.memory or 'fast'} pass): {what}; the model was left as it was")
        self.unread.append((log, self.guidance.last_maps.clone()))   # a captured pass rewrites its maps
        x.copy_(moved)
        self.moved[step] = x.data_ptr()
        if not self.pending:    # the weights put back, the logs read, before the unguided steps
            self.close()

    def close(self, keep_graph: bool = True):
        self.guidance.close(keep_graph)
        self.weights.close()
        self._read_logs()

    def _read_logs(self):
        """Every guided step's log and maps, read from the device once the steps are done."""
        self.record.guidance_pass = self.guidance.mode
        self.record.guidance_memory = self.guidance.memory
        for unread, maps in self.unread:
            log = unread.read()
            self.record.add(log, maps)
            if log.skipped_updates:
                logging.warning("Attend-and-Excite step %d: %d latent updates skipped because the loss or its "
                                "gradient was not finite (an fp16 overflow?); those latents were left as they were",
                                log.step + 1, log.skipped_updates)
            logging.info("Attend-and-Excite step %d (%s): loss %s -> %s, peaks %s, refinement iterations %s%s",
                         log.step + 1, self.loss, _rounded(log.losses[0]), _rounded(log.losses[-1]),
                         _rounded(log.peaks[-1]), log.refinement_iterations,
                         "".join(f", {name} {_rounded(values[-1])}" for name, values in log.terms.items()))
        self.unread = []


class GuidedModel:
    """The model as the base sampler sees it: guidance first, then the real call."""

    def __init__(self, run: GuidedRun, model_k):
        self.run, self.model_k = run, model_k

    def __getattr__(self, name):
        return getattr(self.model_k, name)

    def __call__(self, x, sigma, **kwargs):
        self.run.before_model_call(x, sigma, kwargs.get("model_options", {}))
        return self.model_k(x, sigma, **kwargs)


def _rounded(values):
    return [_rounded(v) for v in values] if isinstance(values, list) else round(values, 3)


def _progress_text(text: str):
    try:
        from server import PromptServer
        server = PromptServer.instance
    except (ImportError, AttributeError):
        return
    if server.last_node_id is not None:
        server.send_progress_text(text, server.last_node_id)


def attend_excite_sampler(sampler_name: str, settings: Settings, record: AttentionRecord):
    """A KSAMPLER running `sampler_name` with Attend-and-Excite; each run refills `record`."""
    base = comfy.samplers.sampler_object(sampler_name)

    def sample(model_k, noise, sigmas, extra_args=None, callback=None, disable=None, **options):
        if not torch.isfinite(noise).all():    # the noised latent the sampler starts from
            raise ValueError("Attend-and-Excite: the latent to sample contains NaN or infinite values; check the "
                             "node that made it (for instance a VAE Encode or an upscale in fp16)")
        run = GuidedRun(model_k, sigmas, settings, sampler_name, record)
        try:
            return base.sampler_function(GuidedModel(run, model_k), noise, sigmas, extra_args=extra_args,
                                         callback=run.callback(callback), disable=disable, **options)
        finally:
            run.close()

    return comfy.samplers.KSAMPLER(sample, base.extra_options, base.inpaint_options)
