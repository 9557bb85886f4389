"""The Attend-and-Excite SAMPLER: any ComfyUI sampler, with the latent moved in
place right before each guided step's denoiser evaluation.

The base sampler runs once over all sigmas, so its own state stays intact
(multistep history, ancestral and SDE noise); a thin wrapper around the model it
calls finds each guided step's state evaluation and moves that tensor first.
"""
import contextlib
import logging
import math

import torch

import comfy.model_management
import comfy.samplers
from comfy.k_diffusion.sampling import offset_first_sigma_for_snr

from ..core.excite import excite
from ..core.families import PROMPT, Family
from ..core.losses import binding_weight, loss_named
from ..core.record import AttentionRecord
from ..core.schedule import Schedule, build_schedule
from ..core.settings import Settings
from .family import detect_family, recorder_for
from .guidance import GuidancePass, autograd_weights
from .text import SUBJECTS_KEY, context_shift, in_model_columns

# Evaluations that some samplers make at a later step's own sigma before that step
# starts: step j's state is evaluated after min(j, n) of them. Heun's predictor lands
# on the next sigma (exp_heun_2_x0 too: SEEDS-2 with r = 1); so does the ancestral
# DPM-2 midpoint at eta 1, since sqrt(sigma_i * sigma_down) = sigma_(i+1) there.
PREDICTOR_CALLS = {"heun": 1, "heunpp2": 2, "exp_heun_2_x0": 1, "exp_heun_2_x0_sde": 1, "dpm_2_ancestral": 1,
                   "dpmpp_2s_ancestral": 1, "dpmpp_2s_ancestral_cfg_pp": 1}
# On flow models (SD3, Flux) ComfyUI runs DPM++(2S) ancestral as its RF variant, whose midpoint
# is not the next sigma.
FLOW_PREDICTOR_CALLS = {**PREDICTOR_CALLS, "dpmpp_2s_ancestral": 0}
SIGMA_MATCH = 1e-4
# Samplers that choose their own evaluation sigmas: step j is guided at the first
# evaluation at or below its sigma.
OWN_GRID = {"dpm_fast", "dpm_adaptive"}
# UniPC evaluates a rescaled copy of its state: the move reaches that evaluation,
# not the solver's corrector.
RESCALED_STATE = {"uni_pc", "uni_pc_bh2"}
# Samplers whose progress callback reports their initial latent, not the current state.
STALE_CALLBACK_STATE = {"ipndm", "ipndm_v", "deis"}


def _subjects_of(positive: list[dict], settings: Settings, family: Family):
    for entry in positive:
        info = entry.get(SUBJECTS_KEY)
        if info is not None or settings.token_indices and family.context != PROMPT:
            return entry, info or {}
    if settings.token_indices:
        raise ValueError(f"on {family.name}, token_indices need the conditioning of 'CLIP Text Encode "
                         f"(Attend-and-Excite)': it marks which of the text encoder's columns are the prompt's words "
                         f"(the chat template's are not)")
    raise ValueError("the positive conditioning carries no Attend-and-Excite subjects: encode the prompt with "
                     "'CLIP Text Encode (Attend-and-Excite)', or give token_indices on the sampler")


def _check_loss(settings: Settings, modifiers: list):
    loss = loss_named(settings.loss)
    if loss.needs_pairs and not any(modifiers):
        raise ValueError(f"the {settings.loss} loss binds modifiers to their nouns, and no subject has one: describe "
                         f"the nouns in the prompt ('a red circle and a blue square'), or write each subject in "
                         f"'subjects' as a group that ends with its noun ('red circle, blue square'); token_indices "
                         f"give no modifiers")
    if not loss.refines and settings.thresholds:
        logging.warning("Attend-and-Excite: the %s loss never refines to a threshold (as its paper); the thresholds "
                        "are not used (set them to auto or leave them empty)", settings.loss)
    if loss.reads_modifier_maps and not any(modifiers):
        logging.info("Attend-and-Excite: no subject has a modifier, so divide_and_bind runs its attendance term alone")


class GuidedRun:
    """One sampling call: decides which model calls are guided and guides them."""

    def __init__(self, model_k, sigmas: torch.Tensor, settings: Settings, sampler_name: str,
                 record: AttentionRecord):
        guider = model_k.inner_model
        base_model = guider.inner_model
        family = detect_family(base_model)
        entry, info = _subjects_of(guider.conds.get("positive", []), settings, family)
        if family.refuses_reference_latents and "ref_latents" in entry["model_conds"]:
            raise ValueError(f"Attend-and-Excite guides {family.name}'s text-to-image models; the Edit models' "
                             f"reference images are not supported: sample without the reference latents, or "
                             f"with the stock KSampler")
        token_count = entry["model_conds"]["c_crossattn"].cond.shape[1]
        shift = context_shift(info, token_count, family)
        info = in_model_columns(info, shift)
        subjects = [[c + shift for c in s] for s in settings.token_indices] if settings.token_indices else \
            [list(c) for c in info["subjects"]]
        kept = family.kept(token_count, info.get("end_columns", []), info.get("prompt_columns", []))
        scored = set(kept.tolist())
        for column in (c for s in subjects for c in s):
            if column >= token_count:
                raise ValueError(f"token index {column} is outside the conditioning's {token_count} tokens")
            if column not in scored:
                raise ValueError(f"token index {column} is not one of the tokens the method scores on {family.name} "
                                 f"(the start token, and on some families the end token and padding, are left out); "
                                 f"pick a word's position, as the token picker lists them")
        modifiers = [[] for _ in subjects] if settings.token_indices else \
            info.get("modifiers", [[] for _ in subjects])
        _check_loss(settings, modifiers)
        self.schedule: Schedule = build_schedule(settings, len(sigmas) - 1, flow=family.flow)
        self.pending = [j for j in range(self.schedule.steps) if self.schedule.is_guided(j)]
        labels = ["+".join(map(str, c)) for c in settings.token_indices] if settings.token_indices else \
            info["labels"]
        record.start(family.name, labels, self.schedule.thresholds, self.schedule.steps, settings.loss,
                     family.pixels_per_cell)
        self.guidance = GuidancePass(base_model, entry, subjects, kept,
                                     recorder_for(base_model.diffusion_model, family, settings.map_level, token_count),
                                     settings.kernel_size, settings.smoothing_sigma, settings.loss, modifiers,
                                     info.get("prompt_columns", []), settings.guidance_memory, family.name)
        self.loss, self.schedule_steps = settings.loss, settings.schedule_steps
        loss = loss_named(settings.loss)
        self.unmet, self.binds = loss.unmet, loss.binding_schedule
        self.sigmas = sigmas.tolist()
        # Samplers that work in log-SNR start a flow model just under sigma 1 (ComfyUI's
        # offset_first_sigma_for_snr): step 0 is found at either sigma.
        self.first_sigmas = (self.sigmas[0], float(offset_first_sigma_for_snr(sigmas, base_model.model_sampling)[0]))
        self.sampler_name = sampler_name
        self.predictor_calls = (FLOW_PREDICTOR_CALLS if family.flow else PREDICTOR_CALLS).get(sampler_name, 0)
        if sampler_name in RESCALED_STATE:
            logging.warning("Attend-and-Excite: %s keeps a rescaled copy of its state, so each update reaches only "
                            "that step's model evaluation; pick another sampler for exact Attend-and-Excite",
                            sampler_name)
        self.calls_at = {}
        self.moved = {}
        self.unread = []      # (UnreadLog, maps) of each guided step
        self.record = record
        self.weights = contextlib.ExitStack()
        self.weights_swapped = False

    def before_model_call(self, x: torch.Tensor, sigma: torch.Tensor, model_options: dict):
        if self.pending:
            sigma_value = float(sigma.reshape(-1)[0])
            if self._is_state_call(sigma_value):
                self._guide(x, sigma, sigma_value, model_options)

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

    def _is_state_call(self, sigma: float) -> bool:
        step = self.pending[0]
        if self.sampler_name in OWN_GRID:
            return sigma <= self.sigmas[step] * (1 + 1e-6)
        for upcoming in self.pending:
            targets = self.first_sigmas if upcoming == 0 else (self.sigmas[upcoming],)
            if any(math.isclose(sigma, target, rel_tol=SIGMA_MATCH) for target in targets):
                self.calls_at[upcoming] = self.calls_at.get(upcoming, 0) + 1
                return upcoming == step and self.calls_at[step] > min(step, self.predictor_calls)
        return False

    def _guide(self, x: torch.Tensor, sigma: torch.Tensor, sigma_value: float, model_options: dict):
        step = self.pending.pop(0)
        while self.sampler_name in OWN_GRID and self.pending and self.sigmas[self.pending[0]] >= sigma_value:
            self.pending.pop(0)
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
                moved, log = excite(x, lambda z: self.guidance.evaluate(z, sigma, model_options), step,
                                    s.step_size(step, sigma_value),
                                    alter=step < s.steps_to_alter, threshold=s.thresholds.get(step),
                                    max_refinement=s.max_refinement, on_iteration=on_iteration,
                                    unmet=self.unmet)
                self.guidance.end_step()
        except torch.OutOfMemoryError:
            out_of_memory = True     # raised below, once this error's frames (and the graph) are released
        if out_of_memory:
            self.close(keep_graph=False)
            what = "lower the image size or the batch size (the lean pass keeps only its layers' inputs)" \
                if self.guidance.lean else \
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
