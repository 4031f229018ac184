"""Trains the diffusion prior: diffusers PriorTransformer (Karlo's structure, small), text →
CLIP image embedding (DALL·E 2 §2.2, diffusion prior).

    python export/shapes/train_prior.py [--config prior] [--clip-run DIR] [--scenes FILE]
                                        [--threads N] [--max-steps N] [--max-minutes M]

As Karlo's prior: it works on embeddings standardized with per-dimension `clip_mean`/`clip_std`
(computed here from the scenes' image embeddings and stored in the model, where
`PriorTransformer.post_process_latents` undoes them), predicts the clean embedding
(`prediction_type: sample`) with an MSE loss at uniformly sampled timesteps of the squaredcos_cap_v2
schedule, and is conditioned on the CLIP text embedding and token states with their mask, as
`UnCLIPPipeline` calls it. The caption is replaced by the empty prompt 10% of the time
(`text_drop_prob`), which is the unconditional branch of classifier-free guidance at sampling.
Needs the CLIP run and `embed_scenes.py`'s file.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import training  # noqa: E402

training.ensure_import_path()
import models  # noqa: E402
import world  # noqa: E402
from clip_model import ClipTowers, pad_tokens  # noqa: E402
from diffusion import Schedule  # noqa: E402
from embed_scenes import DEFAULT_OUT, load_scenes  # noqa: E402


def forward_short(prior, hidden_states, timestep, proj_embedding, states, mask):
    """`PriorTransformer.forward` (diffusers models/transformers/prior_transformer.py) on the L real
    token positions instead of all 77: the text positions ≥ L are padding, masked out of every
    query's attention with −10000 (exactly zero weight), so the prd token's output is the same
    function (`check_forward_short` asserts it); the sequence is ~3× shorter. Positional embeddings
    are gathered at the positions the full sequence gives each token (0..L−1, then 77..80)."""
    b, length = states.shape[:2]
    n_text = prior.config.num_embeddings
    time = prior.time_embedding(prior.time_proj(timestep).to(hidden_states.dtype))
    tokens = torch.cat([
        prior.encoder_hidden_states_proj(states),
        prior.embedding_proj(proj_embedding)[:, None],
        time[:, None],
        prior.proj_in(hidden_states)[:, None],
        prior.prd_embedding.expand(b, -1, -1),
    ], dim=1)
    positions = torch.cat([torch.arange(length), torch.arange(n_text, n_text + prior.additional_embeddings)])
    tokens = tokens + prior.positional_embedding[:, positions]
    keys = torch.cat([mask, torch.ones(b, prior.additional_embeddings, dtype=torch.bool)], dim=1)
    bias = (1 - keys.to(tokens.dtype)) * -10000.0
    s = tokens.shape[1]
    causal = torch.full((s, s), -10000.0).triu_(1)
    bias = (bias[:, None, :] + causal).repeat_interleave(prior.config.num_attention_heads, dim=0)
    for block in prior.transformer_blocks:
        tokens = block(tokens, attention_mask=bias)
    return prior.proj_to_clip_embeddings(prior.norm_out(tokens)[:, -1])


@torch.no_grad()
def check_forward_short(prior, clip: ClipTowers, captions: list[str]) -> float:
    """Max |forward_short − PriorTransformer.forward| on a batch; raises above 1e-4."""
    g = torch.Generator().manual_seed(0)
    prior = copy.deepcopy(prior)  # nonzero positional and prd embeddings, so a wrong gather shows
    prior.positional_embedding.normal_(0.0, 1.0, generator=g)
    prior.prd_embedding.normal_(0.0, 1.0, generator=g)
    text_embeds, states, mask = clip.encode_text(captions, full_length=False)
    x = torch.randn(len(captions), text_embeds.shape[1], generator=g)
    t = torch.randint(0, 1000, (len(captions),), generator=g)
    short = forward_short(prior, x, t, text_embeds, states, mask)
    full = prior(x, timestep=t, proj_embedding=text_embeds, encoder_hidden_states=pad_tokens(states, 77),
                 attention_mask=pad_tokens(mask, 77)).predicted_image_embedding
    diff = (short - full).abs().max().item()
    if not diff <= 1e-4:
        raise SystemExit(f"forward_short differs from PriorTransformer.forward by {diff:.3e}")
    return diff


def main() -> None:
    ap = training.arguments(__doc__, "prior")
    ap.add_argument("--clip-run", type=Path, default=training.RUNS / "clip")
    ap.add_argument("--scenes", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    config = models.load_config(args.config)
    run = training.Run(args, config)
    train, seed = config["train"], config["seed"]
    torch.manual_seed(seed)
    clip = ClipTowers(args.clip_run)
    data = load_scenes(args.scenes, clip)
    scenes, embeds = data["scenes"], data["image_embeds"]
    schedule = Schedule()

    prior = models.prior(config["prior"], clip.config["embed_dim"]).train()
    with torch.no_grad():
        prior.clip_mean.copy_(embeds.mean(0, keepdim=True))
        prior.clip_std.copy_(embeds.std(0, keepdim=True))
    prior.clip_mean.requires_grad_(False)
    prior.clip_std.requires_grad_(False)
    ema = training.EMA(prior, train["ema_decay"])
    opt = training.optimizer(prior.parameters(), train)
    start = 0
    if (state := run.load()) is not None:
        if state["clip_step"] != clip.step:
            raise SystemExit(f"{run.dir} was trained on CLIP step {state['clip_step']}, the CLIP run is at step "
                             f"{clip.step}: start a new run (another --run-dir) for the new CLIP")
        prior.load_state_dict(state["prior"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
    rng = np.random.default_rng(seed)
    diff = check_forward_short(prior, clip, [world.caption(scenes[i], rng) for i in range(16)] + [""])
    run.log(f"prior {models.count_parameters(prior) / 1e6:.2f} M parameters, {len(scenes)} scenes, "
            f"CLIP step {clip.step}; short forward = full forward within {diff:.1e}")

    def step_fn(step: int) -> dict:
        rng, g = training.generators(seed, step)
        b = train["batch_size"]
        index = rng.integers(len(scenes), size=b)
        captions = [world.caption(scenes[i], rng) if rng.random() >= train["text_drop_prob"] else "" for i in index]
        text_embeds, states, mask = clip.encode_text(captions, full_length=False)
        x0 = (embeds[torch.from_numpy(index)] - prior.clip_mean) / prior.clip_std
        t = schedule.sample_t(b, g)
        noise = torch.randn(x0.shape, generator=g)
        xt = schedule.q_sample(x0, t, noise)
        for group in opt.param_groups:
            group["lr"] = training.learning_rate(train, step)
        with training.autocast(train):
            pred = forward_short(prior, xt, t, text_embeds, states, mask)
        loss = (pred.float() - x0).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad = torch.nn.utils.clip_grad_norm_(prior.parameters(), train.get("grad_clip", 1.0))
        opt.step()
        ema.update(prior)
        with torch.no_grad():
            cos = torch.nn.functional.cosine_similarity(pred.float() * prior.clip_std + prior.clip_mean,
                                                        x0 * prior.clip_std + prior.clip_mean).mean()
        return {"loss": loss.item(), "cos": cos.item(), "grad": grad.item()}

    def state_fn(step: int) -> dict:
        return {"step": step, "config": config, "clip_step": clip.step, "prior": prior.state_dict(),
                "ema": ema.state_dict(), "optimizer": opt.state_dict()}

    training.train_loop(run, step_fn, state_fn, start)


if __name__ == "__main__":
    main()
