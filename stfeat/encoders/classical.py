"""``classical``: a no-weights encoder of hand-crafted H&E features, computed batched in torch.

96 features per crop, deterministic, fast on CPU and GPU, no download: the offline baseline.

* Stains (Ruifrok & Johnston 2001 colour deconvolution, unit-normalised hematoxylin / eosin / DAB
  optical-density vectors): tissue fraction; mean, std and 10/25/50/75/90 % quantiles of H and E
  optical density; H and E means over tissue; DAB mean/std; fractions of strongly stained pixels;
  the H share of stain; a nuclei count (local maxima of smoothed H above a threshold) per pixel and
  per tissue pixel.
* Colour: RGB means/stds, saturation and value means/stds, saturation-weighted mean hue (cos, sin),
  total optical density mean/std.
* Texture at 1x, 1/2x and 1/4x: gradient magnitude (Sobel) mean/std/90 %, Laplacian mean-abs and
  energy, 3x3 local variance; rotation-invariant uniform LBP histograms (10 bins, P=8, R=1) at 1x and
  1/2x; Haralick-lite (contrast, homogeneity, energy, entropy, correlation) from an 8-level
  grey co-occurrence matrix (offsets right and down, symmetric) at 1x and 1/2x; H and E gradient and
  local-variance summaries.

Crops are first area-downsampled to 112 px (texture "1x" is that grid). Inputs are RGB in [0, 1] (the spec's mean is 0 and std 1, so :class:`~stfeat.encoders.Encoder`
only divides by 255). The feature names are in :func:`feature_names`.
"""

from __future__ import annotations

from typing import Any

from stfeat.encoders.base import EncoderSpec, register_encoder

# Ruifrok & Johnston (2001) stain OD vectors (rows: hematoxylin, eosin, DAB), as in scikit-image.
RGB_FROM_HED = ((0.65, 0.70, 0.29), (0.07, 0.99, 0.11), (0.27, 0.57, 0.78))
TISSUE_OD = 0.25  # summed RGB optical density above which a pixel counts as tissue
NUCLEUS_H = 0.35  # smoothed hematoxylin OD for a nucleus peak
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
GLCM_LEVELS = 8
WORK_PX = 112  # crops are area-downsampled to this side first: 4x less work, nuclei still ~5-10 px


def feature_names() -> list[str]:
    """Names of the 96 features, in output order."""
    n = ["tissue_fraction"]
    for s in ("H", "E"):
        n += [f"{s}_mean", f"{s}_std"] + [f"{s}_q{int(q * 100)}" for q in QUANTILES]
    n += ["H_mean_tissue", "E_mean_tissue", "DAB_mean", "DAB_std"]
    n += ["H_frac_gt0.3", "H_frac_gt0.6", "E_frac_gt0.3", "H_share", "nuclei_per_kpx", "nuclei_per_tissue_kpx"]
    n += [f"{c}_mean" for c in "RGB"] + [f"{c}_std" for c in "RGB"]
    n += ["sat_mean", "sat_std", "val_mean", "val_std", "hue_cos", "hue_sin", "od_mean", "od_std"]
    for sc in (1, 2, 4):
        n += [f"grad_mean_s{sc}", f"grad_std_s{sc}", f"grad_q90_s{sc}", f"lap_absmean_s{sc}",
              f"lap_energy_s{sc}", f"locvar_s{sc}", f"H_locstd7_s{sc}"]
    for sc in (1, 2):
        n += [f"lbp{b}_s{sc}" for b in range(10)]
    for sc in (1, 2):
        n += [f"glcm_{f}_s{sc}" for f in ("contrast", "homogeneity", "energy", "entropy", "correlation")]
    n += ["H_grad_s1", "H_grad_s2", "E_grad_s1", "E_grad_s2", "H_locvar_s1", "E_locvar_s1"]
    return n


N_FEATURES = 96


def build_classical() -> Any:
    """The feature module: float RGB (B, 3, H, W) in [0, 1] -> (B, 96) float32."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class ClassicalFeatures(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            m = torch.tensor(RGB_FROM_HED, dtype=torch.float64)
            m = m / m.norm(dim=1, keepdim=True)
            self.register_buffer("hed_from_rgb", torch.linalg.inv(m).float(), persistent=False)
            sob = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]]) / 8
            self.register_buffer("sobel", torch.stack([sob, sob.t()]).unsqueeze(1), persistent=False)
            lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
            self.register_buffer("lap", lap.view(1, 1, 3, 3), persistent=False)

        # -- helpers on (B, 1, H, W) maps ------------------------------------------------
        @staticmethod
        def _flat(x):
            return x.flatten(1)

        def _grad(self, x):
            g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.sobel)
            return g.pow(2).sum(1, keepdim=True).sqrt()

        @staticmethod
        def _box(x, k):
            """k x k mean filter with replicate padding (separable: 2k instead of k^2 work)."""
            pad = k // 2
            xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
            return F.avg_pool2d(F.avg_pool2d(xp, (k, 1), stride=1), (1, k), stride=1)

        @classmethod
        def _locvar(cls, x, k):
            both = cls._box(torch.cat([x, x * x], 1), k)
            mu, mu2 = both[:, :1], both[:, 1:]
            return (mu2 - mu * mu).clamp_min(0)

        def _texture(self, g, h):
            grad = self._flat(self._grad(g))
            lap = self._flat(F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), self.lap))
            return torch.stack([
                grad.mean(1), grad.std(1), torch.quantile(grad, 0.9, dim=1),
                lap.abs().mean(1), lap.pow(2).mean(1),
                self._flat(self._locvar(g, 3)).mean(1),
                self._flat(self._locvar(h, 7)).sqrt().mean(1),
            ], 1)

        @staticmethod
        def _lbp(g):
            b = g.shape[0]
            xp = F.pad(g, (1, 1, 1, 1), mode="replicate")
            h, w = g.shape[-2:]
            offs = [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 1), (2, 0), (1, 0)]  # circular order
            bits = torch.cat([(xp[..., dy:dy + h, dx:dx + w] >= g).float() for dy, dx in offs], 1)
            ones = bits.sum(1)
            trans = (bits - bits.roll(1, dims=1)).abs().sum(1)
            code = torch.where(trans <= 2, ones, torch.full_like(ones, 9.0)).long().view(b, -1)
            hist = torch.zeros(b, 10, device=g.device).scatter_add_(1, code, torch.ones_like(code, dtype=torch.float))
            return hist / code.shape[1]

        @staticmethod
        def _glcm(g):
            b = g.shape[0]
            q = (g * GLCM_LEVELS).long().clamp_(0, GLCM_LEVELS - 1)[:, 0]
            pairs = [q[:, :, :-1] * GLCM_LEVELS + q[:, :, 1:], q[:, :-1, :] * GLCM_LEVELS + q[:, 1:, :]]
            idx = torch.cat([p.reshape(b, -1) for p in pairs], 1)
            c = torch.zeros(b, GLCM_LEVELS**2, device=g.device).scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float))
            c = c.view(b, GLCM_LEVELS, GLCM_LEVELS)
            p = c + c.transpose(1, 2)
            p = p / p.sum((1, 2), keepdim=True)
            i = torch.arange(GLCM_LEVELS, device=g.device, dtype=p.dtype).view(1, -1, 1)
            j = i.view(1, 1, -1)
            d2 = (i - j) ** 2
            mu_i, mu_j = (p * i).sum((1, 2)), (p * j).sum((1, 2))
            sd_i = ((p * (i - mu_i.view(-1, 1, 1)) ** 2).sum((1, 2))).sqrt()
            sd_j = ((p * (j - mu_j.view(-1, 1, 1)) ** 2).sum((1, 2))).sqrt()
            cov = (p * (i - mu_i.view(-1, 1, 1)) * (j - mu_j.view(-1, 1, 1))).sum((1, 2))
            return torch.stack([
                (p * d2).sum((1, 2)),
                (p / (1 + d2)).sum((1, 2)),
                p.pow(2).sum((1, 2)),
                -(p * torch.log(p.clamp_min(1e-12))).sum((1, 2)),
                cov / (sd_i * sd_j + 1e-6),
            ], 1)

        # -- forward -------------------------------------------------------------------------
        def forward(self, x):
            x = x.float().clamp(0, 1)
            if max(x.shape[-2:]) > WORK_PX:
                x = F.interpolate(x, size=(WORK_PX, WORK_PX), mode="area")
            b, _, hh, ww = x.shape
            od = -torch.log10((x * 255 + 1) / 256)  # (B, 3, H, W), 0 for white
            hed = torch.einsum("bchw,cs->bshw", od, self.hed_from_rgb).clamp_min(0)
            H, E, D = hed[:, 0:1], hed[:, 1:2], hed[:, 2:3]
            od_sum = od.sum(1, keepdim=True)
            tissue = (od_sum > TISSUE_OD).float()
            tfrac = self._flat(tissue).mean(1)
            ntis = self._flat(tissue).sum(1).clamp_min(1)
            feats = [tfrac.unsqueeze(1)]
            qs = torch.tensor(QUANTILES, device=x.device)
            for ch in (H, E):
                f = self._flat(ch)
                feats += [f.mean(1, keepdim=True), f.std(1, keepdim=True), torch.quantile(f, qs, dim=1).t()]
            feats.append(torch.stack([
                (self._flat(H * tissue).sum(1) / ntis), (self._flat(E * tissue).sum(1) / ntis),
                self._flat(D).mean(1), self._flat(D).std(1),
            ], 1))
            hs = self._box(H, 5)
            hmax = F.max_pool2d(F.max_pool2d(hs, (9, 1), stride=1, padding=(4, 0)), (1, 9), stride=1, padding=(0, 4))
            peaks = (hs == hmax) & (hs > NUCLEUS_H)
            npk = self._flat(peaks.float()).sum(1)
            hm, em = self._flat(H).mean(1), self._flat(E).mean(1)
            feats.append(torch.stack([
                self._flat((H > 0.3).float()).mean(1), self._flat((H > 0.6).float()).mean(1),
                self._flat((E > 0.3).float()).mean(1), hm / (hm + em + 1e-6),
                npk * 1000.0 / (hh * ww), npk * 1000.0 / ntis,
            ], 1))
            rgb = x.flatten(2)
            mx, mn = x.max(1).values, x.min(1).values
            sat = ((mx - mn) / mx.clamp_min(1e-6)).flatten(1)
            val = mx.flatten(1)
            r, g_, b_ = x[:, 0], x[:, 1], x[:, 2]
            # hue angle from the opponent-colour plane (a smooth, branch-free stand-in for HSV hue)
            hue = torch.atan2(3**0.5 * (g_ - b_), 2 * r - g_ - b_).flatten(1)
            wsum = sat.sum(1).clamp_min(1e-6)
            odf = self._flat(od_sum)
            feats += [rgb.mean(2), rgb.std(2), torch.stack([
                sat.mean(1), sat.std(1), val.mean(1), val.std(1),
                (torch.cos(hue) * sat).sum(1) / wsum, (torch.sin(hue) * sat).sum(1) / wsum,
                odf.mean(1), odf.std(1),
            ], 1)]
            gray = (0.299 * r + 0.587 * g_ + 0.114 * b_).unsqueeze(1)
            pyr = [(gray, H, E)]
            for _ in range(2):
                g0, h0, e0 = pyr[-1]
                pyr.append(tuple(F.avg_pool2d(t, 2) for t in (g0, h0, e0)))
            feats += [self._texture(g, h) for g, h, _ in pyr]
            feats += [self._lbp(pyr[0][0]), self._lbp(pyr[1][0])]
            feats += [self._glcm(pyr[0][0]), self._glcm(pyr[1][0])]
            feats.append(torch.stack([
                self._flat(self._grad(pyr[0][1])).mean(1), self._flat(self._grad(pyr[1][1])).mean(1),
                self._flat(self._grad(pyr[0][2])).mean(1), self._flat(self._grad(pyr[1][2])).mean(1),
                self._flat(self._locvar(pyr[0][1], 3)).mean(1), self._flat(self._locvar(pyr[0][2], 3)).mean(1),
            ], 1))
            out = torch.cat(feats, 1)
            return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)

    return ClassicalFeatures()


@register_encoder(
    EncoderSpec(
        name="classical",
        family="classical",
        embed_dim=N_FEATURES,
        input_px=224,
        um_per_px=None,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        precision="fp32",
        license="Apache-2.0",
        gated=False,
        hub_id=None,
        arch=None,
        pooling="handcrafted",
        notes="No weights: Ruifrok-Johnston H/E/DAB deconvolution statistics, nuclei count, colour, "
        "gradient/Laplacian/local-variance texture at 3 scales, LBP-riu2 histograms and an 8-level "
        "co-occurrence matrix (see stfeat.encoders.classical.feature_names).",
    ),
    aliases=("handcrafted", "no-weights"),
)
def _classical(spec: EncoderSpec, weights: Any = None, *, pretrained: bool = True, tiny: bool = False,
               **kwargs: Any) -> tuple[Any, None]:
    if weights is not None:
        from stfeat.errors import InputError

        raise InputError(weights, "the 'classical' encoder has no weights.", "drop --weights for it.")
    if kwargs:
        raise TypeError(f"classical encoder takes no options, got {sorted(kwargs)}")
    return build_classical(), None
