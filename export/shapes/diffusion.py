"""Training-side diffusion: the forward process of Karlo's schedule and the losses.

The noise schedule is taken from diffusers' `UnCLIPScheduler` itself (squaredcos_cap_v2, 1000
steps), so training and sampling share one source of ᾱ. The decoder's hybrid loss follows
Improved DDPM (Nichol & Dhariwal 2021, §3.1; openai/improved-diffusion `gaussian_diffusion.py`,
`training_losses` and `_vb_terms_bpd`): L_hybrid = L_simple + λ·L_vlb with λ = 0.001, where the
model outputs ε and v ∈ [−1, 1], Σ = exp(v' log β_t + (1 − v') log β̃_t) with v' = (v + 1)/2 — the
same `learned_range` interpolation `UnCLIPScheduler._get_variance` applies at sampling — and L_vlb
sees the mean through a stop-gradient so it only trains the variance.
"""

from __future__ import annotations

import math

import numpy as np
import torch


class Schedule:
    def __init__(self, num_train_timesteps: int = 1000):
        from diffusers import UnCLIPScheduler

        sched = UnCLIPScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2")
        self.T = num_train_timesteps
        betas = sched.betas.double().numpy()
        ac = np.cumprod(1.0 - betas)
        ac_prev = np.append(1.0, ac[:-1])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
        self.alphas_cumprod = sched.alphas_cumprod.float()
        self.sqrt_ac = f(np.sqrt(ac))
        self.sqrt_1m_ac = f(np.sqrt(1.0 - ac))
        self.sqrt_recip_ac = f(np.sqrt(1.0 / ac))
        self.sqrt_recipm1_ac = f(np.sqrt(1.0 / ac - 1.0))
        self.log_betas = f(np.log(betas))
        # β̃_0 = 0: clipped to β̃_1 as improved-diffusion does (the t = 0 term is a decoder NLL).
        self.post_log_var = f(np.log(np.append(post_var[1], post_var[1:])))
        self.post_coef_x0 = f(betas * np.sqrt(ac_prev) / (1.0 - ac))
        self.post_coef_xt = f((1.0 - ac_prev) * np.sqrt(1.0 - betas) / (1.0 - ac))

    @staticmethod
    def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values[t].reshape(-1, *([1] * (like.ndim - 1)))

    def sample_t(self, batch: int, g: torch.Generator, focus: dict | None = None) -> torch.Tensor:
        """Uniform training timesteps, or with `focus` = {"range": [lo, hi], "share": p} a share p of
        them uniform in [lo, hi) instead: the noise levels where a sample's layout and outline are
        decided (the decoder's shapes were lost between t = 500 and 850; `probe_samples.py
        --start-t`). Without `focus` the generator's stream is the one earlier runs used."""
        t = torch.randint(0, self.T, (batch,), generator=g)
        if focus is not None:
            lo, hi = focus["range"]
            inside = torch.rand(batch, generator=g) < focus["share"]
            t = torch.where(inside, torch.randint(lo, hi, (batch,), generator=g), t)
        return t

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self._at(self.sqrt_ac, t, x0) * x0 + self._at(self.sqrt_1m_ac, t, x0) * noise

    def simple_loss(self, pred: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                    prediction_type: str = "epsilon", snr_cap: float | None = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
        """L_simple per sample, and the x̂₀ the prediction implies.

        `prediction_type` is the stage scheduler's: "epsilon" (GLIDE, Karlo) makes L_simple
        ‖ε̂ − ε‖²; "sample" makes it (1 + min(SNR_t, γ))·‖x̂₀ − x₀‖², γ = `snr_cap`: the
        v-objective, ‖v̂ − v‖² = (1 + SNR_t)·‖x̂₀ − x₀‖² (Salimans & Ho 2022, §4), truncated at
        γ as Min-SNR-γ truncates (Hang et al. 2023), or not at all for None. Uncapped it is the
        ε-loss's weight plus 1, so the last steps keep the ε-model's precision (with γ = 5 the
        decoder's L_vlb, which sees x̂₀ with weight ≈ SNR, stayed 30× the ε run's). It
        weighs x̂₀'s error by ≥ 1 at every t, where the ε-loss weighs it by SNR_t ≪ 1 at the first
        sampling steps — the steps where a model must take the colors from its conditioning. An
        ε-model cannot be fixed by weighting alone: at t = 999, x̂₀ = (x_t − √(1−ᾱ)·ε̂)/√ᾱ
        multiplies ε̂'s error by 640, and UnCLIPScheduler's first step feeds that x̂₀ (clipped to
        ±1) into every later one."""
        if prediction_type == "epsilon":
            mse = (pred - noise).square().mean(dim=(1, 2, 3))
            x0_pred = self._at(self.sqrt_recip_ac, t, xt) * xt - self._at(self.sqrt_recipm1_ac, t, xt) * pred
        elif prediction_type == "sample":
            snr = self._at(self.sqrt_recipm1_ac, t, pred).square().reciprocal()
            weight = 1.0 + (snr if snr_cap is None else snr.clamp(max=snr_cap))
            mse = (weight * (pred - x0).square()).mean(dim=(1, 2, 3))
            x0_pred = pred
        else:
            raise ValueError(f"prediction_type {prediction_type!r}: training knows 'epsilon' and 'sample'")
        return mse, x0_pred

    def hybrid_loss(self, output: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
                    noise: torch.Tensor, vlb_weight: float = 0.001, prediction_type: str = "epsilon",
                    snr_cap: float | None = 5.0, range_weight: float = 0.0) -> tuple[torch.Tensor, dict]:
        """L_simple + λ·T·L_t for a 6-channel output (ε or x₀, then v) at uniformly sampled t. With
        uniform t, T·E_t[L_t] estimates L_vlb, so λ = 0.001 and T = 1000 weigh the per-t term by 1 —
        the same number improved-diffusion's `loss = mse + vb` computes.

        `range_weight` > 0 adds range_weight·max(|v| − 1, 0)²: L_vlb constrains v only where β_t
        and β̃_t differ, t ≲ 20 for single steps, and Improved DDPM leaves v unconstrained ("we did
        not observe the network doing this in practice", §3.1). Ours did: after the x₀ fine-tune
        v ≈ 14.6 at every t, harmless in training but at sampling, where a 25-step stride widens
        the gap between log β and log β̃ some 40-fold, it made the last steps' variance explode."""
        c = x0.shape[1]
        pred, v = output.float().split(c, dim=1)
        mse, x0_pred = self.simple_loss(pred, x0, xt, t, noise, prediction_type, snr_cap)
        # Stop-gradient on the mean: L_vlb trains only the variance (improved-diffusion's `frozen_out`).
        x0_pred = x0_pred.detach()
        mean_pred = self._at(self.post_coef_x0, t, xt) * x0_pred + self._at(self.post_coef_xt, t, xt) * xt
        frac = (v + 1) / 2
        min_log = self._at(self.post_log_var, t, xt)
        max_log = self._at(self.log_betas, t, xt)
        log_var_pred = frac * max_log + (1 - frac) * min_log
        mean_true = self._at(self.post_coef_x0, t, xt) * x0 + self._at(self.post_coef_xt, t, xt) * xt
        kl = normal_kl(mean_true, min_log, mean_pred, log_var_pred).mean(dim=(1, 2, 3)) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x0, mean_pred, 0.5 * log_var_pred).mean(dim=(1, 2, 3)) / math.log(2.0)
        vb = torch.where(t == 0, nll, kl)
        loss = mse + vlb_weight * self.T * vb
        parts = {"mse": mse.mean().item(), "vb": vb.mean().item()}
        if range_weight > 0:
            out_of_range = (v.abs() - 1.0).clamp(min=0.0).square().mean(dim=(1, 2, 3))
            loss = loss + range_weight * out_of_range
            parts["v_range"] = out_of_range.mean().item()
        return loss.mean(), parts


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2).square() * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log-likelihood of 8-bit images in [−1, 1] under a Gaussian discretized to 256 bins
    (improved-diffusion `losses.py`)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))
