"""Trains a demo model (nodes/demo/model.py) on pictures of shapes captioned with their kinds.

    python tests/harness/train_demo.py [--architecture unet|joint] [--vae-from FILE] [--work DIR]
        [--device cpu|cuda] [--out FILE] [--snapshot-every N]

Three stages, each resumable from the files it keeps in --work: the autoencoder, its
decoder alone, then the diffusion model and the text model together. Every batch is drawn from
--seed and its step number, so a resumed run trains on what an uninterrupted one would have.
With --vae-from, the autoencoder is another demo model's (the same shapes world, its latent
space): only the diffusion stage runs. --architecture joint trains ComfyUI's Flux at a tiny width
(flow matching; the kind words grounded in every double-stream block's joint attention) instead of
the UNet (v-prediction; grounded in every cross-attention layer).
With --snapshot-every, the diffusion stage also writes the averaged weights every N steps
to --work/snapshots/ (for tests/harness/screen.py's learning curves).
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from support import import_comfy, import_package  # noqa: E402

CHECKPOINT_EVERY = 200
SHAPE_WEIGHT = 4.0      # the autoencoder's loss on a shape's pixels, over the background's: edges come first
MASK_CELLS = 16         # the shapes' masks on the finest attention grid (the latent's), pooled for coarser layers
# The encoder's initial posterior: a log-variance this low leaves the decoder the latent's
# mean to read from the first step (an initial variance of 1 buries it in noise, and the
# encoder learns to shout over it: a latent space of a few huge values).
INITIAL_LOGVAR = -8.0


def reset(module: torch.nn.Module, seed: int):
    """ComfyUI's layers skip their initialisation (weights are loaded): give each the
    one of its torch.nn class, from `seed`; a layer of ComfyUI's own (Flux's RMSNorm) has
    its scale at 1."""
    torch.manual_seed(seed)
    for m in module.modules():
        cls = next((c for c in type(m).__mro__ if c.__module__.startswith("torch.nn.modules")
                    and "reset_parameters" in c.__dict__), None)
        if cls is not None:
            cls.reset_parameters(m)
        elif "scale" in m._parameters:
            torch.nn.init.ones_(m.scale)
        if isinstance(m, torch.nn.Embedding):
            torch.nn.init.normal_(m.weight, std=0.02)


def scenes(seed: int, step: int, count: int, two_share: float, kinds: tuple | None = None):
    """Pictures of `kinds` (default: every kind the detector knows, what the autoencoder learns)."""
    from attend_and_excite.nodes.demo.shapes import KINDS, random_scene
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return [random_scene(generator, bool(torch.rand((), generator=generator) < two_share), kinds=kinds or KINDS)
            for _ in range(count)]


def crops(batch: list, seed: int, step: int, size: int = 64) -> torch.Tensor:
    """A square of each picture anywhere in it: the autoencoder is convolutional, and a
    quarter of the pixels trains it faster; shapes cut by the crop's edge and crops of
    background alone are what it must also encode."""
    generator = torch.Generator().manual_seed(seed * 3_000_017 + step)
    images = pictures(batch)
    limit = images.shape[-1] - size
    out = []
    for image in images:
        x, y = (int(torch.randint(limit + 1, (), generator=generator)) for _ in range(2))
        out.append(image[:, y:y + size, x:x + size])
    return torch.stack(out)


def pictures(batch) -> torch.Tensor:
    from attend_and_excite.nodes.demo.shapes import draw
    return torch.stack([draw(s) for s in batch]) * 2 - 1


class Stage:
    """A model, its optimiser and an exponential average of its weights, saved every
    CHECKPOINT_EVERY steps to `path` and resumed from it."""

    def __init__(self, path: str, parameters: list, lr: float, steps: int, ema: float):
        self.path, self.steps, self.step = path, steps, 0
        self.parameters = parameters
        self.optimiser = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
        self.lr = lr
        self.ema_decay = ema
        self.ema = [p.detach().clone() for p in parameters]
        if os.path.exists(path):
            saved = torch.load(path, map_location="cpu")
            self.step = saved["step"]
            with torch.no_grad():
                for p, value in zip(parameters, saved["parameters"]):
                    p.copy_(value)
                for e, value in zip(self.ema, saved["ema"]):
                    e.copy_(value)
            self.optimiser.load_state_dict(saved["optimiser"])
            print(f"resumed {os.path.basename(path)} at step {self.step}", flush=True)

    def update(self, loss: torch.Tensor):
        warmup = min(1.0, (self.step + 1) / 100)
        cosine = 0.5 * (1 + math.cos(math.pi * self.step / self.steps))
        for group in self.optimiser.param_groups:
            group["lr"] = self.lr * warmup * (0.1 + 0.9 * cosine)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        self.optimiser.step()
        decay = min(self.ema_decay, (1 + self.step) / (10 + self.step))   # the average forgets the init early
        with torch.no_grad():
            for e, p in zip(self.ema, self.parameters):
                e.lerp_(p, 1 - decay)
        self.step += 1
        if self.step % CHECKPOINT_EVERY == 0 or self.step == self.steps:
            self.save()

    def save(self):
        state = {"step": self.step, "parameters": [p.detach().cpu() for p in self.parameters],
                 "ema": [e.cpu() for e in self.ema], "optimiser": self.optimiser.state_dict()}
        torch.save(state, self.path + ".tmp")
        os.replace(self.path + ".tmp", self.path)

    def use_average(self):
        with torch.no_grad():
            for p, e in zip(self.parameters, self.ema):
                p.copy_(e)


def reconstruction_loss(decoded: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    from attend_and_excite.nodes.demo.shapes import BACKGROUND
    background = torch.tensor(BACKGROUND, device=images.device).view(1, 3, 1, 1) * 2 - 1
    error = (decoded - images).abs()
    shape_pixels = 1 + SHAPE_WEIGHT * ((images - background).abs().amax(dim=1, keepdim=True) > 0.1)
    return (shape_pixels * (error + error ** 2)).mean()


def posterior(vae, images: torch.Tensor, seed: int) -> tuple:
    """(a sample of the latent, its mean, its log-variance)."""
    mean, logvar = vae.quant_conv(vae.encoder(images)).chunk(2, dim=1)
    logvar = logvar.clamp(-30, 20)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed)).to(images.device)
    return mean + noise * (0.5 * logvar).exp(), mean, logvar


def train_vae(args, device):
    from attend_and_excite.nodes.demo import model as demo_model
    vae = demo_model.vae_model(vae_config(args)).to(device)
    reset(vae, args.seed)
    with torch.no_grad():
        vae.quant_conv.bias[vae.quant_conv.out_channels // 2:] = INITIAL_LOGVAR
    stage = Stage(os.path.join(args.work, "vae.pt"), list(vae.parameters()), args.vae_lr, args.vae_steps, 0.999)
    started = time.time()
    while stage.step < stage.steps:
        images = crops(scenes(args.seed, stage.step, args.vae_batch, 0.5), args.seed, stage.step).to(device)
        z, mean, logvar = posterior(vae, images, args.seed * 5_000_011 + stage.step)
        kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean()
        loss = reconstruction_loss(vae.decoder(vae.post_quant_conv(z)), images) + 1e-6 * kl
        stage.update(loss)
        if stage.step % 50 == 0:
            print(f"vae {stage.step}/{stage.steps} loss {loss.item():.4f} ({time.time() - started:.0f} s)", flush=True)
    stage.use_average()
    return vae.eval().requires_grad_(False)


def train_decoder(vae, args, device):
    """The decoder alone, on the frozen encoder's latents (those the UNet learns) of whole
    pictures, in place: the picture's edges and a flat background everywhere, while the
    latent space stays."""
    decoder = [vae.post_quant_conv, vae.decoder]
    parameters = [p for m in decoder for p in m.parameters()]
    for m in decoder:
        m.train().requires_grad_(True)
    stage = Stage(os.path.join(args.work, "decoder.pt"), parameters, args.vae_lr / 2, args.decoder_steps, 0.99)
    started = time.time()
    while stage.step < stage.steps:
        step = args.vae_steps + stage.step       # pictures the first stage did not see
        images = pictures(scenes(args.seed, step, args.decoder_batch, 0.5)).to(device)
        with torch.no_grad():
            z = posterior(vae, images, args.seed * 5_000_011 + step)[0]
        loss = reconstruction_loss(vae.decoder(vae.post_quant_conv(z)), images)
        stage.update(loss)
        if stage.step % 50 == 0:
            print(f"decoder {stage.step}/{stage.steps} loss {loss.item():.4f} ({time.time() - started:.0f} s)",
                  flush=True)
    stage.use_average()
    for m in decoder:
        m.eval().requires_grad_(False)


@torch.no_grad()
def scale_latents(vae, args, device):
    """Rescales the latent space in place so that the SD1 latent scale (0.18215) brings it
    to unit variance, the variance the UNet's noise schedule assumes."""
    import comfy.latent_formats
    images = pictures(scenes(args.seed, -1, 256, 0.5)).to(device)
    mean = vae.quant_conv(vae.encoder(images)).chunk(2, dim=1)[0]
    factor = 1 / (comfy.latent_formats.SD15().scale_factor * mean.std().item())
    channels = mean.shape[1]
    vae.quant_conv.weight[:channels] *= factor
    vae.quant_conv.bias[:channels] *= factor
    vae.quant_conv.bias[channels:] += 2 * math.log(factor)
    vae.post_quant_conv.weight /= factor


@torch.no_grad()
def encode_dataset(vae, args, device):
    """Latents, captions, and each shape's mask on the finest attention grid (zero for a
    picture's missing second shape)."""
    from attend_and_excite.nodes.demo.shapes import caption, cell_masks
    path = os.path.join(args.work, "latents.pt")
    if os.path.exists(path):
        return torch.load(path)
    latents, captions, masks = [], [], []
    for chunk in range(args.dataset // 256):
        batch = scenes(args.seed + 1, chunk, 256, args.two_share, vocabulary(args))
        latents.append(vae.quant_conv(vae.encoder(pictures(batch).to(device))).chunk(2, dim=1)[0].cpu())
        captions += [caption(s) for s in batch]
        masks += [F.pad(cell_masks(s, MASK_CELLS), (0, 0, 0, 0, 0, 2 - len(s))) for s in batch]
    data = {"latents": torch.cat(latents), "captions": captions, "masks": torch.stack(masks)}
    torch.save(data, path)
    return data


class JointCapture:
    """dit replace patches for every double-stream block of the joint demo: each block's image queries'
    probabilities over the text keys (softmax over the joint sequence, with their gradients) kept as
    their mean over heads, beside the block's own attention."""

    def __init__(self, diffusion_model):
        from attend_and_excite.nodes.glue.joint import joint_blocks
        self.transformer_options = {"patches_replace": {"dit": {
            block.key: self.block for block in joint_blocks(diffusion_model)}}}
        self.maps = []

    def block(self, args, extra):
        from attend_and_excite.nodes.core.maps import joint_text_probabilities
        text = args["txt"].shape[1]

        def override(func, q, k, v, heads, **kwargs):
            self.maps.append(joint_text_probabilities(q, k, text).mean(dim=1))
            return func(q, k, v, heads, **kwargs)
        options = {**args["transformer_options"], "optimized_attention_override": override}
        return extra["original_block"]({**args, "transformer_options": options})

    def take(self) -> list[torch.Tensor]:
        maps, self.maps = self.maps, []
        return maps


class AttentionCapture:
    """attn2 replace patches for every cross-attention layer: the attention computed
    explicitly (with its gradients), its probabilities kept as their mean over heads."""

    def __init__(self, diffusion_model):
        from attend_and_excite.nodes.glue.recorder import cross_attention_blocks
        attend = self.attend
        self.transformer_options = {"patches_replace": {"attn2": {
            (b.name, b.number, i): attend for b in cross_attention_blocks(diffusion_model) for i in range(b.depth)}}}
        self.maps = []

    def attend(self, q, k, v, extra_options):
        from attend_and_excite.nodes.core.maps import attention_probabilities, merge_heads, split_heads
        heads = extra_options["n_heads"]
        probs = attention_probabilities(q, k, heads)
        self.maps.append(probs.mean(dim=1))
        return merge_heads(probs.to(v.dtype) @ split_heads(v, heads))

    def take(self) -> list[torch.Tensor]:
        maps, self.maps = self.maps, []
        return maps


def grounding_term(maps: list[torch.Tensor], masks: torch.Tensor, captioned: torch.Tensor) -> torch.Tensor:
    """The grounding loss of every shape's kind word, in every captioned picture, at every
    cross-attention layer: the word's map as Attend-and-Excite reads it (the demo family's
    kept columns through the x100 softmax) against the shape's mask pooled to the layer's grid."""
    from attend_and_excite.nodes.core.maps import token_softmax
    from attend_and_excite.nodes.demo.grounding import grounding_loss
    from attend_and_excite.nodes.demo.shapes import kind_column
    from attend_and_excite.nodes.core.families import CLIP_CHUNK, DEMO
    kept = DEMO.kept(CLIP_CHUNK, []).to(masks.device)
    picked = torch.tensor([int((kept == kind_column(n)).nonzero()) for n in range(masks.shape[1])],
                          device=masks.device)
    shown = (masks.flatten(2).sum(-1) > 0) & captioned[:, None]          # (B, shapes)
    terms = []
    for attention in maps:
        side = int(attention.shape[1] ** 0.5)
        grid = F.adaptive_avg_pool2d(masks, side).flatten(2)
        readout = token_softmax(attention, kept)[:, :, picked].transpose(1, 2)   # (B, shapes, cells)
        terms.append(grounding_loss(readout[shown], grid[shown]))
    return torch.stack(terms).mean()


def encode(clip, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """((len(texts), 77, width), (len(texts), width)): what CLIP Text Encode gives for each one-chunk
    prompt, and its pooled vector, with gradients."""
    chunks = [[token for token, _ in clip.tokenize(t)["l"][0]] for t in texts]
    out = clip.cond_stage_model.clip_l.encode(chunks)
    return out[0], out[1]


def v_loss(denoised: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The v-prediction loss, from the denoised latent ComfyUI's V_PREDICTION sampling gives:
    the error in v is the error in x0 times sqrt(sigma^2 + 1) / sigma (unit data variance)."""
    weight = (sigma ** 2 + 1) / sigma ** 2
    return (weight * (denoised - x0).pow(2).mean(dim=(1, 2, 3))).mean()


def flow_loss(denoised: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Rectified flow's velocity loss, from the denoised latent ComfyUI's flow sampling gives
    (x = (1 - sigma) x0 + sigma noise, velocity noise - x0): the error in the velocity is the error in
    x0 over sigma."""
    return (((denoised - x0) / sigma.view(-1, 1, 1, 1)) ** 2).mean()


def train_diffusion(args, device, data, on_snapshot=None):
    from attend_and_excite.nodes.demo import model as demo_model
    from attend_and_excite.nodes.glue.recompute import copy_activation
    joint = args.architecture == "joint"
    unet = (demo_model.build_joint(joint=joint_config(args)) if joint else
            demo_model.build_unet(unet=unet_config(args))).to(device)
    reset(unet.diffusion_model, args.seed + 2)
    clip = demo_model.build_clip()
    text = clip.cond_stage_model.to(device)
    reset(text, args.seed + 3)
    parameters = list(unet.diffusion_model.parameters()) + list(text.parameters())
    stage = Stage(os.path.join(args.work, "diffusion.pt"), parameters, args.lr, args.steps, 0.999)
    latents = unet.process_latent_in(data["latents"]).to(device)
    captions, masks = data["captions"], data["masks"].to(device)
    capture = (JointCapture if joint else AttentionCapture)(unet.diffusion_model)
    sigmas = unet.model_sampling.sigmas.to(device)
    started = time.time()
    while stage.step < stage.steps:
        generator = torch.Generator().manual_seed(args.seed * 7_000_003 + stage.step)
        rows = torch.randint(len(captions), (args.batch,), generator=generator)
        dropped = torch.rand(args.batch, generator=generator) < 0.1
        texts = ["" if drop else captions[i] for i, drop in zip(rows.tolist(), dropped.tolist())]
        x0 = latents[rows.to(device)]
        noise = torch.randn(x0.shape, generator=generator).to(device)
        context, pooled = encode(clip, texts)
        if joint:     # flow matching, noise levels from a logit-normal (as SD3 and Flux are trained)
            sigma = torch.sigmoid(torch.randn(args.batch, generator=generator)).clamp(0.02, 1.0).to(device)
            noisy = x0 * (1 - sigma.view(-1, 1, 1, 1)) + noise * sigma.view(-1, 1, 1, 1)
            with torch.autograd.graph.saved_tensors_hooks(copy_activation, lambda t: t):   # Flux adds in place
                denoised = unet.apply_model(noisy, sigma, c_crossattn=context.to(device), y=pooled.to(device),
                                            transformer_options=capture.transformer_options)
            loss = flow_loss(denoised, x0, sigma)
        else:
            sigma = sigmas[torch.randint(len(sigmas), (args.batch,), generator=generator).to(device)]
            noisy = x0 + noise * sigma.view(-1, 1, 1, 1)
            denoised = unet.apply_model(noisy, sigma, c_crossattn=context.to(device),
                                        transformer_options=capture.transformer_options)
            loss = v_loss(denoised, x0, sigma)
        maps = capture.take()
        if args.ground_weight:
            loss = loss + args.ground_weight * grounding_term(maps, masks[rows.to(device)], ~dropped.to(device))
        stage.update(loss)
        if stage.step % 50 == 0:
            print(f"diffusion {stage.step}/{stage.steps} loss {loss.item():.4f} ({time.time() - started:.0f} s)",
                  flush=True)
        if on_snapshot is not None and args.snapshot_every and stage.step % args.snapshot_every == 0:
            on_snapshot(stage, unet, text)
    stage.use_average()
    return unet, text


def write_weights(path: str, unet, text, vae, args):
    """The shipped file: the three models in fp16, with the settings that made them."""
    from safetensors.torch import save_file
    from attend_and_excite.nodes.demo import model as demo_model
    os.makedirs(os.path.dirname(path), exist_ok=True)
    state = demo_model.pack(unet.diffusion_model, text, vae, used_tokens(demo_model.build_clip(), vocabulary(args)))
    metadata = {"settings": json.dumps(training_settings(args)), "vae": json.dumps(vae_config(args)),
                "architecture": args.architecture}
    if args.architecture == "joint":
        metadata["joint"] = json.dumps(joint_config(args))
    else:
        metadata["unet"] = json.dumps(unet_config(args))
    save_file({k: v.contiguous().cpu() for k, v in state.items()}, path + ".tmp", metadata=metadata)
    os.replace(path + ".tmp", path)


def snapshots(args, vae):
    """A callback of the diffusion stage: the averaged weights at this step, as a file the
    loader reads, in WORK/snapshots/step_N.safetensors; the training weights are put back."""
    def write(stage, unet, text):
        live = [p.detach().clone() for p in stage.parameters]
        stage.use_average()
        write_weights(os.path.join(args.work, "snapshots", f"step_{stage.step:05d}.safetensors"), unet, text, vae,
                      args)
        with torch.no_grad():
            for p, value in zip(stage.parameters, live):
                p.copy_(value)
    return write


@torch.no_grad()
def round_trips(vae, args, device, count: int = 32) -> tuple[int, int]:
    """(pictures read back as drawn, pictures damaged) of `count` pictures (half with two
    shapes) through the autoencoder's mean latent: what the UNet's best can look like."""
    from attend_and_excite.nodes.demo.detector import score
    batch = scenes(args.seed + 2, 0, count, 0.5)
    mean = vae.quant_conv(vae.encoder(pictures(batch).to(device))).chunk(2, dim=1)[0]
    decoded = ((vae.decoder(vae.post_quant_conv(mean)) + 1) / 2).clamp(0, 1).cpu()
    scores = [score([s.kind for s in shapes], image) for shapes, image in zip(batch, decoded)]
    return sum(s.exact for s in scores), sum(s.damaged for s in scores)


def unet_config(args) -> dict:
    from attend_and_excite.nodes.demo import model as demo_model
    return dict(demo_model.UNET, model_channels=args.unet_channels)


def joint_config(args) -> dict:
    from attend_and_excite.nodes.demo import model as demo_model
    return dict(demo_model.JOINT, hidden_size=args.joint_width, depth=args.joint_depth,
                depth_single_blocks=args.joint_single)


def vae_config(args) -> dict:
    from attend_and_excite.nodes.demo import model as demo_model
    if args.vae_from:
        from safetensors import safe_open
        with safe_open(args.vae_from, "pt") as f:
            return json.loads((f.metadata() or {}).get("vae", "null")) or demo_model.VAE
    return dict(demo_model.VAE, ch=args.vae_channels)


def vocabulary(args) -> tuple:
    return tuple(args.kinds.split(","))


def used_tokens(clip, kinds: tuple) -> list[int]:
    words = " ".join(["a and", *kinds])
    return sorted({token for chunk in clip.tokenize(words)["l"] for token, _ in chunk})


def arguments() -> argparse.ArgumentParser:
    import_package()
    from attend_and_excite.nodes.demo.shapes import SHAPES
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", choices=("unet", "joint"), default="unet",
                        help="the UNet demo (cross-attention) or the joint-attention demo (ComfyUI's Flux, tiny)")
    parser.add_argument("--vae-from", help="another demo model's weights whose autoencoder to use as it is")
    parser.add_argument("--joint-width", type=int, default=128)
    parser.add_argument("--joint-depth", type=int, default=4, help="double-stream blocks")
    parser.add_argument("--joint-single", type=int, default=2, help="single-stream blocks")
    parser.add_argument("--work", default=os.path.join(os.path.dirname(os.path.dirname(HERE)), "out", "demo_training"))
    parser.add_argument("--out", help="where to write the weights; default: the package's demo weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae-steps", type=int, default=400)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--vae-lr", type=float, default=2e-3)
    parser.add_argument("--decoder-steps", type=int, default=300)
    parser.add_argument("--decoder-batch", type=int, default=8)
    parser.add_argument("--dataset", type=int, default=16384)
    parser.add_argument("--two-share", type=float, default=0.1, help="share of two-shape pictures")
    parser.add_argument("--kinds", default=",".join(SHAPES), help="the captions' kind words (the pictures the "
                        "autoencoder learns hold every kind the detector knows)")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--unet-channels", type=int, default=32)
    parser.add_argument("--vae-channels", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ground-weight", type=float, default=0.5,
                        help="weight of the grounding term (the kind words' sharpened maps onto their shapes)")
    parser.add_argument("--snapshot-every", type=int, default=0,
                        help="write the averaged weights every N diffusion steps to WORK/snapshots/ (0: never)")
    return parser


JOINT_ONLY = ("architecture", "joint_width", "joint_depth", "joint_single")


def training_settings(args) -> dict:
    """What decides the weights (not where they go or which device computes them); a UNet run's
    without the options that came with the joint demo unless used, as the shipped UNet records them."""
    left_out = ("work", "out", "device", "snapshot_every") + (JOINT_ONLY if args.architecture == "unet" else ())
    return {k: v for k, v in vars(args).items() if k not in left_out and not (k == "vae_from" and v is None)}


def comfy_file(path: str) -> dict:
    import comfy.utils
    return {k: v.float() if v.is_floating_point() else v for k, v in comfy.utils.load_torch_file(path).items()}


def main():
    args = arguments().parse_args()
    os.makedirs(args.work, exist_ok=True)
    settings = training_settings(args)
    settings_path = os.path.join(args.work, "settings.json")
    if os.path.exists(settings_path):
        with open(settings_path) as f:
            if json.load(f) != settings:
                sys.exit(f"{args.work} holds a run with other settings; give another --work")
    with open(settings_path, "w") as f:
        json.dump(settings, f)
    import_comfy(cpu=args.device == "cpu")
    import_package()
    from attend_and_excite.nodes.demo import model as demo_model
    device = torch.device(args.device)
    started = time.time()
    scaled = os.path.join(args.work, "vae_scaled.pt")
    if args.vae_from:
        vae = demo_model.vae_model(vae_config(args)).to(device).eval().requires_grad_(False)
        vae.load_state_dict(demo_model.unpack(comfy_file(args.vae_from), demo_model.VAE_PREFIX))
        data = encode_dataset(vae, args, device)
    else:
        if os.path.exists(scaled):
            vae = demo_model.vae_model(vae_config(args)).to(device).eval().requires_grad_(False)
            vae.load_state_dict(torch.load(scaled))
        else:
            vae = train_vae(args, device)
            scale_latents(vae, args, device)
            torch.save(vae.state_dict(), scaled)
        data = encode_dataset(vae, args, device)
        train_decoder(vae, args, device)
    right, damaged = round_trips(vae, args, device)
    print(f"autoencoder round trips: {right}/32 read back as drawn, {damaged} damaged", flush=True)
    unet, text = train_diffusion(args, device, data, snapshots(args, vae))
    out = args.out or (demo_model.JOINT_WEIGHTS if args.architecture == "joint" else demo_model.WEIGHTS)
    write_weights(out, unet, text, vae, args)
    print(f"wrote {out} ({os.path.getsize(out) / 2 ** 20:.1f} MiB) in {time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
