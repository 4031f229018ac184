"""Trains the decoder: UNet2DConditionModel (64×64, GLIDE-style, learned variance) together with
UnCLIPTextProjModel, CLIP image embedding → image (DALL·E 2 §2.1, decoder).

    python export/shapes/train_decoder.py [--config decoder] [--clip-run DIR] [--scenes FILE]
                                          [--threads N] [--max-steps N] [--max-minutes M]
                                          [--init-weights CKPT [--new-clip]]

As the paper and GLIDE: 6 output channels (ε and the variance interpolation v,
`variance_type: learned_range`), hybrid loss L_simple + λ·L_vlb with λ = 0.001 (Improved DDPM;
diffusion.py). Conditioning is computed exactly as `UnCLIPPipeline` does at sampling: text_proj
turns the image embedding, the CLIP text embedding and the token states into 4 extra context
tokens + projected token states and an additive time embedding; the decoder's attention mask is
the text mask with 4 leading Trues. Classifier-free guidance dropout as the paper (§2.1): the CLIP
image embedding is replaced 10% of the time by text_proj's learned null embedding (what the
pipeline's unconditional branch uses) and the caption 50% of the time by the empty prompt.
Targets are 64×64 renders of the scenes whose embeddings `embed_scenes.py` stored.

`prediction_type` (decoder config, default "epsilon"): "sample" makes the decoder predict x₀,
trained with the v-weighting (1 + SNR)·‖x̂₀ − x₀‖², truncated at `snr_cap` unless it is null
(diffusion.py `simple_loss`). This is what made the decoder use its CLIP embedding: probe_decoder.py's background
error at t = 957 went from 75 (ε, 5534 steps; 80.4 = ignoring the embedding) to 16 after 400 steps
of x₀ fine-tuning. An ε-model's x̂₀ at the first sampling steps is its output's error times
√(1/ᾱ − 1) (15 at t = 957, 640 at t = 999): a 3 M-parameter UNet cannot copy x_t that precisely,
and the ε-loss weighs x̂₀'s error by SNR ≈ 0.004 there, so it never learned to. The decoder
scheduler's `prediction_type` follows (assemble.py). `variance_range_weight` (train config, default
0) holds the variance channel in [−1, 1] (diffusion.py `hybrid_loss`).

`offset_noise` (train config, default 0): ε gets an extra per-image, per-channel constant
N(0, offset²) (Guttenberg 2023, "Diffusion with offset noise"; the same defect as Lin et al. 2024,
"Common diffusion noise schedules and sample steps are flawed", §3). Without it, the mean color of
a 64×64 image is readable from x_t down to SNR ≈ 0.004 (a flat background averages the noise of
4096 pixels), so the ε-loss is as low with the CLIP embedding ignored as with it used, and the
decoder learns to ignore it: measured on the plain run at step 5534, x̂₀ at t = 960 from an x_t with
no signal was gray for every embedding. `--init-from RUN` starts a new run (its own config and
directory) from another decoder run's weights, EMA and optimizer, to fine-tune with such a change.

`t_focus` (train config, default none): {"range": [lo, hi], "share": p} draws a share p of the
training timesteps uniformly from [lo, hi) (diffusion.py `Schedule.sample_t`), for the noise
levels where the decoder decides an object's outline.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import training  # noqa: E402

training.ensure_import_path()
import models  # noqa: E402
import world  # noqa: E402
from clip_model import ClipTowers, pad_tokens  # noqa: E402
from diffusion import Schedule  # noqa: E402
from embed_scenes import DEFAULT_OUT, load_scenes  # noqa: E402
from render import render, to_array  # noqa: E402


def prediction_type(config: dict) -> str:
    """What the decoder's 3 first output channels are: "epsilon" (the default, GLIDE's and Karlo's)
    or "sample" (x₀; diffusion.py `hybrid_loss`). assemble.py writes it into decoder_scheduler."""
    return config["decoder"].get("prediction_type", "epsilon")


class DecoderWithProj(torch.nn.Module):
    """The two trained modules, stepped and averaged together."""

    def __init__(self, config: dict, embed_dim: int):
        super().__init__()
        self.decoder = models.decoder(config)
        self.text_proj = models.text_proj(config, embed_dim)

    def forward(self, xt, t, image_embeds, text_embeds, states, mask):
        hidden, additive = self.text_proj(image_embeddings=image_embeds, prompt_embeds=text_embeds,
                                          text_encoder_hidden_states=states, do_classifier_free_guidance=False)
        mask = F.pad(mask, (self.text_proj.clip_extra_context_tokens, 0), value=True)
        return self.decoder(xt, t, encoder_hidden_states=hidden, class_labels=additive, attention_mask=mask).sample


@torch.no_grad()
def check_short_states(model: DecoderWithProj, clip: ClipTowers, captions: list[str], embed_dim: int) -> float:
    """Token states cut at the longest caption give the decoder output of the pipeline's 77."""
    g = torch.Generator().manual_seed(0)
    b = len(captions)
    text_embeds, states, mask = clip.encode_text(captions, full_length=False)
    xt, t, img = torch.randn(b, 3, 64, 64, generator=g), torch.randint(0, 1000, (b,), generator=g), torch.randn(b, embed_dim, generator=g)
    short = model(xt, t, img, text_embeds, states, mask)
    full = model(xt, t, img, text_embeds, pad_tokens(states, 77), pad_tokens(mask, 77))
    diff = (short - full).abs().max().item()
    if not diff <= 1e-4:
        raise SystemExit(f"short token states change the decoder output by {diff:.3e}")
    return diff


def init_weights(model: DecoderWithProj, checkpoint: Path, made: dict, clip: ClipTowers, new_clip: bool = False) -> str:
    """Loads the decoder and text_proj of an assembled checkpoint (the committed shipped one, to
    fine-tune it further without its training runs). With `new_clip`, the checkpoint's CLIP may
    differ from the CLIP run's (same embedding width): the UNet's drawing carries over and its
    conditioning re-learns the new embeddings, much sooner than a decoder trained from zero.
    If the run's decoder config differs from the checkpoint's (say, cross-attention added at one
    more level), the tensors of the same name and shape are loaded and the rest keep their fresh
    initialization. `made` is the checkpoint's provenance (training.assembled_components). Returns
    what was loaded, for the log."""
    from diffusers import UNet2DConditionModel

    from _common import register_text_proj

    register_text_proj()
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    made_with = made["clip"]
    if made_with["config"]["embed_dim"] != clip.config["embed_dim"]:
        raise SystemExit(f"{checkpoint}'s decoder takes {made_with['config']['embed_dim']}-wide CLIP embeddings, the "
                         f"CLIP run makes {clip.config['embed_dim']}-wide ones")
    if not new_clip and (made_with["step"] != clip.step or made_with["config"] != clip.config):
        raise SystemExit(f"{checkpoint}'s decoder was trained on CLIP step {made_with['step']}, the CLIP run is at "
                         f"step {clip.step}: re-create the run with unpack_clip.py {checkpoint}, or give --new-clip to "
                         "fine-tune it onto this CLIP")
    model.text_proj.load_state_dict(UnCLIPTextProjModel.from_pretrained(checkpoint / "text_proj").state_dict())
    weights = UNet2DConditionModel.from_pretrained(checkpoint / "decoder").state_dict()
    own = model.decoder.state_dict()
    same = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    if len(same) == len(weights) == len(own):
        model.decoder.load_state_dict(weights)
        return "all weights"
    model.decoder.load_state_dict(same, strict=False)
    fresh = sum(v.numel() for k, v in own.items() if k not in same)
    return (f"{len(same)} of {len(own)} decoder tensors (the architectures differ; "
            f"{fresh / 1e6:.2f} M parameters start fresh)")


def main() -> None:
    ap = training.arguments(__doc__, "decoder")
    ap.add_argument("--clip-run", type=Path, default=training.RUNS / "clip")
    ap.add_argument("--scenes", type=Path, default=DEFAULT_OUT)
    training.add_init_from(ap)
    ap.add_argument("--init-weights", type=Path,
                    help="a shapes checkpoint directory (assemble.py's output, e.g. export/shapes/checkpoint) whose "
                         "decoder and text_proj start this new run, with a fresh optimizer; its CLIP must be the "
                         "CLIP run's (unpack_clip.py) unless --new-clip")
    ap.add_argument("--new-clip", action="store_true",
                    help="with --init-weights: the checkpoint was made with another CLIP than --clip-run's; "
                         "fine-tune its decoder onto this one")
    args = ap.parse_args()
    config = models.load_config(args.config)
    run = training.Run(args, config)
    train, seed = config["train"], config["seed"]
    torch.manual_seed(seed)
    clip = ClipTowers(args.clip_run)
    data = load_scenes(args.scenes, clip)
    scenes, embeds = data["scenes"], data["image_embeds"]
    embed_dim = clip.config["embed_dim"]
    schedule = Schedule()

    model = DecoderWithProj(config["decoder"], embed_dim).train()
    init = {}
    if run.checkpoint_path.exists():
        # a resumed run keeps the origin it recorded when it started: the checkpoint directory may
        # have been overwritten since (it is, whenever this run's decoder ships)
        if "init_from" in (resumed := run.load()):
            init = {"init_from": resumed["init_from"]}
    elif args.init_weights is not None:
        if args.init_from is not None:
            raise SystemExit("--init-weights and --init-from both start a run: give one")
        # the checkpoint directory is overwritten when a new one ships: name the run and step behind it
        made = training.assembled_components(args.init_weights)
        init = {"init_from": f"{os.path.relpath(args.init_weights, training.HERE)} "
                             f"(decoder {made['decoder']['run']} step {made['decoder']['step']})"}
        loaded = init_weights(model, args.init_weights, made, clip, args.new_clip)
        run.log(f"initialized from {args.init_weights}: {loaded} (fresh optimizer)")
    ema = training.EMA(model, train["ema_decay"])
    opt = training.optimizer(model.parameters(), train)

    def same_clip(state: dict, where) -> None:
        if state["clip_step"] != clip.step:
            raise SystemExit(f"{where} was trained on CLIP step {state['clip_step']}, the CLIP run is at step "
                             f"{clip.step}: start a new run (another --run-dir) for the new CLIP")

    start = training.restore(run, args.init_from, "decoder", model, ema, opt, same_clip)
    rng = np.random.default_rng(seed)
    diff = check_short_states(model, clip, [world.caption(scenes[i], rng) for i in range(3)] + [""], embed_dim)
    run.log(f"decoder {models.count_parameters(model.decoder) / 1e6:.2f} M + text_proj "
            f"{models.count_parameters(model.text_proj) / 1e6:.3f} M parameters, {len(scenes)} scenes, "
            f"CLIP step {clip.step}; short token states = 77 within {diff:.1e}")
    null = model.text_proj.learned_classifier_free_guidance_embeddings

    def step_fn(step: int) -> dict:
        rng, g = training.generators(seed, step)
        b = train["batch_size"]
        index = rng.integers(len(scenes), size=b)
        x0 = torch.from_numpy(np.stack([to_array(render(scenes[i], 64)) for i in index]))
        captions = [world.caption(scenes[i], rng) if rng.random() >= train["text_drop_prob"] else "" for i in index]
        drop_image = torch.from_numpy(rng.random(b) < train["image_drop_prob"])
        text_embeds, states, mask = clip.encode_text(captions, full_length=False)
        image_embeds = torch.where(drop_image[:, None], null[None].expand(b, -1), embeds[torch.from_numpy(index)])
        t = schedule.sample_t(b, g, train.get("t_focus"))
        noise = torch.randn(x0.shape, generator=g)
        if train.get("offset_noise", 0.0) > 0:
            noise = noise + train["offset_noise"] * torch.randn(b, x0.shape[1], 1, 1, generator=g)
        xt = schedule.q_sample(x0, t, noise)
        for group in opt.param_groups:
            group["lr"] = training.learning_rate(train, step)
        with training.autocast(train):
            out = model(xt, t, image_embeds, text_embeds, states, mask)
        loss, parts = schedule.hybrid_loss(out, x0, xt, t, noise, train["vlb_weight"], prediction_type(config),
                                           train.get("snr_cap", 5.0), train.get("variance_range_weight", 0.0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad = torch.nn.utils.clip_grad_norm_(model.parameters(), train.get("grad_clip", 1.0))
        opt.step()
        ema.update(model)
        return {"loss": loss.item(), **parts, "grad": grad.item()}

    def state_fn(step: int) -> dict:
        return {"step": step, "config": config, "clip_step": clip.step, "model": model.state_dict(),
                "ema": ema.state_dict(), "optimizer": opt.state_dict(), **init}

    training.train_loop(run, step_fn, state_fn, start)


if __name__ == "__main__":
    main()
