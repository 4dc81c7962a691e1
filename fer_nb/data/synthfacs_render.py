"""SynthFACS renderer: faces drawn from parameters with vectorised torch ops.

Everything is drawn in a *canonical* frame: ``u`` (left -> right) and ``v`` (top -> bottom) both run
over ``[-1, 1]`` across the image. Every primitive is an anti-aliased soft shape, the coverage of a
signed distance ``d`` (positive inside) through a one-pixel linear ramp,
``alpha = clamp(d / pixel + 1/2, 0, 1)`` (a box-filter approximation of the pixel footprint), so a
stroke keeps its weight at 48 px and edges stay smooth at 224 px.

Speed comes from two tricks:

* **separability**: a curve ``v = c(u)`` is evaluated on the ``(B, 1, W)`` row of ``u`` values and
  only the final distance ``|v - c(u)|`` touches the ``(B, H, W)`` grid;
* **bands**: each facial feature is evaluated on the rows it can occupy (eyes, nose, mouth), not on
  the whole image.

The wild domain renders the face as a premultiplied RGBA layer, warps it (rotation, scale,
translation) with one ``grid_sample``, then composites it over a textured background and adds a
lighting gradient, an occluder and sensor noise. All random numbers come from the caller (the
parameters) or from integer hashes computed on the device, so a sample looks the same on any device
(up to float rounding before the final ``uint8`` quantisation).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

M32 = 0xFFFFFFFF


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (lowbias32-style) on int64 tensors; no overflow (x < 2**32)."""
    x = x & M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & M32
    x = (((x >> 16) ^ x) * 0x45D9F3B) & M32
    return (x >> 16) ^ x


# Render parameter names (per sample, float). AU names are r<AU>; unilateral AUs have L/R sides.
AU_PARAMS = ("r1", "r2", "r4", "r5", "r6", "r7", "r9", "r12L", "r12R", "r14L", "r14R", "r15", "r16",
             "r17", "r20", "r23", "r25", "r26", "r43")
IDENTITY_PARAMS = (
    "face_w", "face_h", "jaw", "ear", "eye_size", "eye_space", "eye_y", "brow_thick", "brow_h",
    "brow_len", "brow_slant", "brow_arch", "nose_len", "nose_w", "mouth_w", "mouth_y", "lip",
    "mouth_rest", "age", "glasses", "hair_len", "hair_vol", "fringe", "beard",
)
COLOUR_PARAMS = ("skin", "hair", "lipc", "iris", "bg1", "bg2")  # each (B, 3) RGB in [0, 1]
NUISANCE_PARAMS = (
    "rot", "scale", "tx", "ty", "yaw", "light_gx", "light_gy", "light_base", "bg_dir", "occ",
    "occ_x", "occ_y", "occ_w", "occ_h", "noise", "noise_key",
)


def _ramp(d: torch.Tensor, inv_px: float) -> torch.Tensor:
    """Coverage of a signed distance ``d`` (canonical units, > 0 inside) with a 1-pixel ramp."""
    return (d * inv_px + 0.5).clamp_(0.0, 1.0)


def _rows(h: int, v0: float, v1: float) -> tuple[int, int]:
    """Row slice covering canonical ``v`` in ``[v0, v1]`` at height ``h``."""
    r0 = max(0, int(math.floor((v0 + 1) / 2 * h)))
    r1 = min(h, int(math.ceil((v1 + 1) / 2 * h)))
    return r0, max(r0 + 1, r1)


def _lerp_(img: torch.Tensor, colour: torch.Tensor, alpha: torch.Tensor) -> None:
    """In place: ``img += alpha * (colour - img)``; img (B,C,h,W), colour (B,C,1,1), alpha (B,h,W)."""
    a = alpha.unsqueeze(1)
    img.add_(a * (colour - img))


def _stroke_y(vb: torch.Tensor, yc: torch.Tensor, half: torch.Tensor | float, inv_px: float) -> torch.Tensor:
    """Coverage of a horizontal-ish curve ``v = yc(u)`` with half thickness ``half``."""
    return _ramp(half - (vb - yc).abs_(), inv_px)


def noise_bank(key: int, k: int, channels: int, h: int, w: int, device) -> torch.Tensor:
    """``k`` fixed noise textures (k, C, H, W), uniform in [-0.5, 0.5), from integer hashes."""
    idx = torch.arange(k * channels * h * w, device=device, dtype=torch.int64)
    x = hash32(hash32(idx + (key & M32)) ^ 0x5BD1E995)
    return (x.to(torch.float32) * (1.0 / 2**32) - 0.5).view(k, channels, h, w)


def render(p: dict[str, torch.Tensor], image_size: int, channels: int, wild: bool,
           noise_key: int = 0) -> torch.Tensor:
    """Render a batch of faces from parameter tensors ``p`` (all on one device) -> uint8 (B,C,H,W).

    ``p`` holds (B,) float tensors for :data:`AU_PARAMS`, :data:`IDENTITY_PARAMS`,
    :data:`NUISANCE_PARAMS` and (B, 3) RGB tensors for :data:`COLOUR_PARAMS`.
    """
    H = W = int(image_size)
    dev = p["face_w"].device
    B = p["face_w"].shape[0]
    if B == 0:
        return torch.zeros(0, channels, H, W, dtype=torch.uint8, device=dev)
    inv_px = H / 2.0          # pixels per canonical unit
    px = 1.0 / inv_px
    minw = 0.75 * px          # strokes never thinner than ~1.5 px in total
    q = {k: (v.view(B, 1, 1) if v.ndim == 1 else v) for k, v in p.items()}
    u = ((torch.arange(W, device=dev, dtype=torch.float32) + 0.5) * (2.0 / W) - 1.0).view(1, 1, W)
    v = ((torch.arange(H, device=dev, dtype=torch.float32) + 0.5) * (2.0 / H) - 1.0).view(1, H, 1)

    def col(name: str) -> torch.Tensor:
        c = p[name]
        if channels == 1:
            c = (c * c.new_tensor([0.299, 0.587, 0.114])).sum(1, keepdim=True)
        return c.view(B, channels, 1, 1)

    skin_c, hair_c, lip_c, iris_c = col("skin"), col("hair"), col("lipc"), col("iris")
    # ------------------------------------------------------------------ head silhouette
    fx = q["yaw"] * 0.12                      # yaw: inner features slide sideways
    cy = 0.06
    A = 0.56 * q["face_w"] * (1 - 0.25 * q["yaw"].abs())
    Bt = 0.74 * q["face_h"]
    Bb = 0.78 * q["face_h"] + 0.10 * q["r26"]
    z = (v - cy) / torch.where(v < cy, Bt, Bb)                            # (B,H,1)
    zc = z.clamp(0, 1)
    wv = A * (1 - z * z).clamp_min(0).sqrt() * (1 - q["jaw"] * zc * zc)
    wv = torch.where(z.abs() < 1, wv, wv.new_full((), -1.0))
    face = _ramp(wv - (u - fx * 0.3).abs(), inv_px)                        # (B,H,W)
    neck = _ramp(0.27 * q["face_w"] - u.abs(), inv_px) * _ramp(v - (cy + 0.35), inv_px)
    skin_a = torch.maximum(face, neck)
    ey = -0.06 + q["eye_y"]
    # ears (mirrored), in the eye/nose band
    r0, r1 = _rows(H, -0.35, 0.4)
    vb = v[:, r0:r1]
    du = (u.abs() - A * 0.98) / (0.075 * q["ear"])
    dv = (vb - (ey + 0.1)) / (0.14 * q["ear"])
    ear = _ramp((1 - (du * du + dv * dv).sqrt_()) * 0.07, inv_px)
    skin_a[:, r0:r1] = torch.maximum(skin_a[:, r0:r1], ear)
    # hair behind the head
    hz = (v - (cy - 0.06)) / (Bt * (1.1 + 0.12 * q["hair_vol"]))
    hw = A * (1.1 + 0.12 * q["hair_vol"]) * (1 - hz * hz).clamp_min(0).sqrt()
    hair_a = _ramp(hw - u.abs(), inv_px) * _ramp(cy + q["hair_len"] - v, inv_px)
    hair_a = hair_a * (hz > -1).float() * (q["hair_len"] > -0.95).float()
    # shading of the skin (rounded face) and a darker neck
    shade = (1 - 0.16 * (u / A) ** 2).clamp_min(0.6) * torch.where(v > cy + 0.85 * Bb, 0.8, 1.0)
    lines = torch.zeros(B, H, W, device=dev)       # wrinkles / folds: darken the skin
    dark = torch.zeros(B, H, W, device=dev)        # lid lines, mouth line, nostrils
    brow_a = torch.zeros(B, H, W, device=dev)
    glass_a = torch.zeros(B, H, W, device=dev)

    # ------------------------------------------------------------------ eyes and brows band
    e0, e1 = _rows(H, -0.75, 0.2)
    vb = v[:, e0:e1]
    mu = (u - fx).abs()                                                    # mirrored (B,1,W)
    ex = 0.215 * q["eye_space"]
    ew = 0.095 * q["eye_size"]
    s = (mu - ex) / ew
    fs = (1 - s * s).clamp_min(0).sqrt()
    open_u = (0.05 * q["eye_size"] * (1 + 1.1 * q["r5"] - 0.5 * q["r7"] - 0.35 * q["r6"] - 0.25 * q["r9"])
              * (1 - q["r43"])).clamp_min(0)
    open_l = (0.034 * q["eye_size"] * (1 - 0.6 * q["r7"] - 0.55 * q["r6"] - 0.2 * q["r9"])
              * (1 - q["r43"])).clamp_min(0)
    yu = ey - open_u * fs                                                  # upper lid (B,1,W)
    yl = ey + open_l * fs
    inside_s = _ramp((1.06 - s.abs()) * ew, inv_px)
    white = _ramp(vb - yu, inv_px) * _ramp(yl - vb, inv_px) * _ramp((1 - s.abs()) * ew, inv_px)
    ri = 0.046 * q["eye_size"]
    d = ((mu - ex) ** 2 + (vb - ey - 0.004) ** 2).sqrt_()
    iris_a = _ramp(ri - d, inv_px) * white
    pupil_a = _ramp(0.45 * ri - d, inv_px) * white
    lid = _stroke_y(vb, yu - 0.004, max(0.012, minw), inv_px) * inside_s
    low = 0.45 * _stroke_y(vb, yl, max(0.006, minw * 0.7), inv_px) * inside_s
    dark[:, e0:e1] = torch.maximum(lid, low)
    crease = 0.35 * _stroke_y(vb, yu - 0.03 - 0.01 * q["eye_size"] + 0.015 * q["r43"], max(0.005, minw * 0.6),
                              inv_px) * _ramp((0.9 - s.abs()) * ew, inv_px)
    under = (0.6 * q["r6"] + 0.35 * q["r7"] + 0.3 * q["age"]).clamp(0, 0.9) * _stroke_y(
        vb, ey + open_l * 0.6 + 0.04 + 0.5 * (yl - ey), max(0.005, minw * 0.6), inv_px
    ) * _ramp((0.75 - s.abs()) * ew, inv_px)
    ln = torch.maximum(crease, under)
    # crow's feet at the outer corners (AU6, age)
    cf = (0.95 * q["r6"] + 0.3 * q["age"]).clamp(0, 1)
    x0 = ex + ew + 0.018
    for ang in (-0.45, 0.0, 0.45):
        c, sn = math.cos(ang), math.sin(ang)
        along = (mu - x0) * c + (vb - ey) * sn
        perp = (vb - ey) * c - (mu - x0) * sn
        ray = _ramp(max(0.006, minw * 0.6) - perp.abs(), inv_px) * _ramp(along, inv_px) * _ramp(0.06 - along, inv_px)
        ln = torch.maximum(ln, cf * ray)
    # brows
    xi = 0.07 + 0.02 * q["eye_space"] - 0.035 * q["r4"]
    xo = ex + ew * (1.05 + 0.25 * q["brow_len"])
    by = ey - 0.12 * q["brow_h"]
    yi = by + 0.014 * q["brow_slant"] - 0.10 * q["r1"] + 0.055 * q["r4"] + 0.025 * q["r9"]
    yo = by - 0.014 * q["brow_slant"] - 0.085 * q["r2"] + 0.02 * q["r4"] + 0.01 * q["r9"] + 0.025 * q["r1"] * (1 - q["r2"])
    arch = 0.02 * q["brow_arch"] + 0.02 * q["r2"] - 0.012 * q["r4"]
    t = ((mu - xi) / (xo - xi)).clamp(0, 1)
    yc = yi + (yo - yi) * t - arch * 4 * t * (1 - t)
    half = (0.016 * q["brow_thick"] * (1 - 0.4 * t)).clamp_min(minw)
    brow_a[:, e0:e1] = _stroke_y(vb, yc, half, inv_px) * _ramp(mu - xi, inv_px) * _ramp(xo - mu, inv_px)
    # glabella (AU4) and forehead (AU1, AU2, age) wrinkles
    gl = q["r4"] * 0.9 * _ramp(max(0.006, minw * 0.6) - (mu - 0.03).abs(), inv_px) * _ramp(vb - (by - 0.02), inv_px) \
        * _ramp(by + 0.07 - vb, inv_px)
    ln = torch.maximum(ln, gl)
    fh = (0.45 * q["r1"] + 0.45 * q["r2"] + 0.25 * q["age"]).clamp(0, 0.95)
    for k in range(3):
        yk = by - 0.09 - 0.055 * k + 0.35 * mu * mu
        ln = torch.maximum(ln, fh * _stroke_y(vb, yk, max(0.005, minw * 0.6), inv_px) * _ramp(0.26 - mu, inv_px))
    # glasses (identity)
    gd = (((mu - ex) / (0.135 * q["eye_size"])) ** 2 + ((vb - ey) / 0.09) ** 2).sqrt_()
    ring = _ramp(0.1 - (gd - 1).abs(), inv_px * 0.12 * q["eye_size"])
    bridge = _stroke_y(vb, ey - 0.02, minw, inv_px) * _ramp(ex - 0.12 * q["eye_size"] - mu, inv_px)
    glass_a[:, e0:e1] = q["glasses"] * torch.maximum(ring, bridge)
    lines[:, e0:e1] = ln

    # ------------------------------------------------------------------ mouth geometry (full u)
    side = (u - fx) > 0
    mwL = 0.165 * q["mouth_w"] * (1 + 0.17 * q["r12L"] + 0.3 * q["r20"] - 0.12 * q["r23"] - 0.06 * q["r14L"])
    mwR = 0.165 * q["mouth_w"] * (1 + 0.17 * q["r12R"] + 0.3 * q["r20"] - 0.12 * q["r23"] - 0.06 * q["r14R"])
    dyL = 0.012 * q["mouth_rest"] - 0.085 * q["r12L"] + 0.07 * q["r15"] + 0.015 * q["r20"] - 0.015 * q["r14L"]
    dyR = 0.012 * q["mouth_rest"] - 0.085 * q["r12R"] + 0.07 * q["r15"] + 0.015 * q["r20"] - 0.015 * q["r14R"]
    mw = torch.where(side, mwR, mwL)                                       # (B,1,W)
    dy = torch.where(side, dyR, dyL)
    my = 0.43 + q["mouth_y"] - 0.012 * q["r9"]
    sm = (u - fx) / mw
    s2 = (sm * sm).clamp(max=1.0)
    inner = 1 - s2
    ym = my + dy * s2 - (0.024 * q["r17"] + 0.012 * q["r15"]) * inner
    gap = (0.028 * q["r25"] + 0.17 * q["r26"] + 0.03 * q["r16"] * q["r25"]) * inner.sqrt()
    yo1 = ym - 0.3 * gap
    yo2 = ym + 0.7 * gap
    sq = inner.sqrt()
    tu = 0.028 * q["lip"] * (1 - 0.65 * q["r23"]) * (0.5 + 0.5 * sq)
    tl = 0.04 * q["lip"] * (1 - 0.6 * q["r23"]) * (0.35 + 0.65 * sq) * (1 + 0.35 * q["r16"])
    inside_m = _ramp((1 - sm.abs()) * mw, inv_px)
    # nose
    ny = 0.21 * q["nose_len"] + 0.02 - 0.03 * q["r9"]
    nw = 0.045 * q["nose_w"] + 0.012 * q["r9"]
    n0, n1 = _rows(H, -0.12, 0.38)
    vb = v[:, n0:n1]
    dn = (((mu - nw) / 0.027) ** 2 + ((vb - ny) / 0.014) ** 2).sqrt_()
    nostril = 0.85 * _ramp((1 - dn) * 0.014, inv_px)
    ala_d = ((mu - nw - 0.005) ** 2 + (vb - ny + 0.018) ** 2).sqrt_()
    ala = 0.55 * _ramp(max(0.006, minw * 0.6) - (ala_d - 0.04).abs(), inv_px) * _ramp(mu - nw - 0.01, inv_px) \
        * _ramp(ny + 0.01 - vb, inv_px)
    bridge_l = 0.22 * _ramp(max(0.005, minw * 0.6) - (mu - 0.05 * q["nose_w"]).abs(), inv_px) \
        * _ramp(vb - (ey + 0.05), inv_px) * _ramp(ny - 0.05 - vb, inv_px)
    dark[:, n0:n1] = torch.maximum(dark[:, n0:n1], nostril)
    nl = torch.maximum(ala, bridge_l)
    w9 = (0.95 * q["r9"]).clamp(0, 1)
    for k in range(3):
        yk = ey + 0.035 + 0.028 * k + 0.25 * mu * mu
        nl = torch.maximum(nl, w9 * _stroke_y(vb, yk, max(0.006, minw * 0.6), inv_px) * _ramp(0.065 - mu, inv_px))
    lines[:, n0:n1] = torch.maximum(lines[:, n0:n1], nl)
    # ------------------------------------------------------------------ mouth band
    m0, m1 = _rows(H, 0.1, 1.0)
    vb = v[:, m0:m1]
    mw_avg = 0.5 * (mwL + mwR)
    dy_avg = 0.5 * (dyL + dyR)
    # nasolabial folds: from the nose wing to beyond the mouth corner (parametrised by v)
    fold = (0.12 + 0.25 * q["age"] + 0.85 * 0.5 * (q["r12L"] + q["r12R"]) + 0.6 * q["r9"] + 0.25 * q["r6"]
            + 0.3 * q["r20"]).clamp(0, 1)
    y1, y2 = ny - 0.01, my + dy_avg + 0.04
    x1, x2 = nw + 0.05, mw_avg + 0.03
    tt = ((vb - y1) / (y2 - y1))
    xc = x1 + (x2 - x1) * tt + 0.03 * 4 * tt.clamp(0, 1) * (1 - tt.clamp(0, 1))
    nasolabial = fold * _ramp(max(0.007, minw * 0.7) - (mu - xc).abs(), inv_px) * _ramp(tt, inv_px * 0.2) \
        * _ramp(1 - tt, inv_px * 0.2)
    # marionette lines (AU15, age): from the corners downwards
    mar = (0.8 * q["r15"] + 0.2 * q["age"]).clamp(0, 1)
    y3 = my + dy_avg + 0.02
    tt2 = (vb - y3) / 0.12
    xc2 = mw_avg + 0.01 + 0.02 * tt2
    marionette = mar * _ramp(max(0.006, minw * 0.6) - (mu - xc2).abs(), inv_px) * _ramp(tt2, inv_px * 0.12) \
        * _ramp(1 - tt2, inv_px * 0.12)
    ml = torch.maximum(nasolabial, marionette)
    # AU14 dimples and AU20 stretch lines at the corners (side-specific)
    a14 = torch.where(side, q["r14R"], q["r14L"])
    corner_x = mw + 0.02
    ycorner = my + dy
    dimple = a14 * _ramp(max(0.007, minw * 0.7) - ((u - fx).abs() - corner_x).abs(), inv_px) \
        * _ramp(0.035 - (vb - ycorner).abs(), inv_px)
    stretch = q["r20"] * 0.8 * _stroke_y(vb, ycorner + 0.005, max(0.005, minw * 0.6), inv_px) \
        * _ramp((u - fx).abs() - mw - 0.005, inv_px) * _ramp(mw + 0.06 - (u - fx).abs(), inv_px)
    ml = torch.maximum(ml, torch.maximum(dimple, stretch))
    # chin: mentolabial sulcus (AU17 deepens) and chin boss
    tl_c = 0.04 * q["lip"] * (1 - 0.6 * q["r23"]) * (1 + 0.35 * q["r16"])
    ych = my + 0.7 * (0.028 * q["r25"] + 0.17 * q["r26"]) + tl_c + 0.05 + 0.02 * q["r17"] - 0.3 * (mu * mu)
    chin = (0.25 + 0.65 * q["r17"]).clamp(0, 1) * _stroke_y(vb, ych, max(0.006, minw * 0.6), inv_px) \
        * _ramp(0.08 - mu, inv_px * 0.3)
    chin2 = 0.7 * q["r17"] * _stroke_y(vb, ych + 0.07 - 2.5 * mu * mu, max(0.005, minw * 0.6), inv_px) \
        * _ramp(0.07 - mu, inv_px * 0.3)
    ml = torch.maximum(ml, torch.maximum(chin, chin2))
    lines[:, m0:m1] = torch.maximum(lines[:, m0:m1], ml)
    lips_a = _ramp(vb - (yo1 - tu), inv_px) * _ramp(yo2 + tl - vb, inv_px) * inside_m
    cav = _ramp(vb - yo1, inv_px) * _ramp(yo2 - vb, inv_px) * inside_m
    teeth = cav * torch.maximum(
        _ramp(yo1 + 0.03 - vb, inv_px),
        (q["r16"] + q["r20"]).clamp(0, 1) * _ramp(vb - (yo2 - 0.022), inv_px),
    )
    mline = 0.9 * _stroke_y(vb, ym, max(0.006, minw * 0.8), inv_px) * inside_m
    dark[:, m0:m1] = torch.maximum(dark[:, m0:m1], mline)
    beard_a = q["beard"] * skin_a[:, m0:m1] * _ramp(vb - (my - 0.07), inv_px * 0.2) * (
        1 - _ramp(vb - (yo1 - tu - 0.01), inv_px) * _ramp(yo2 + tl + 0.02 - vb, inv_px) * _ramp((1.15 - sm.abs()) * mw, inv_px))

    # ------------------------------------------------------------------ composite (premultiplied)
    img = torch.zeros(B, channels, H, W, device=dev)
    cover = torch.zeros(B, 1, H, W, device=dev)

    def over(colour, alpha, r0=0, r1=H):
        _lerp_(img[:, :, r0:r1], colour, alpha)
        a = alpha.unsqueeze(1)
        cover[:, :, r0:r1].add_(a * (1 - cover[:, :, r0:r1]))

    over(hair_c, hair_a)
    skin_shaded = skin_c * (shade * (1 - 0.5 * lines)).unsqueeze(1)
    a = skin_a.unsqueeze(1)
    img.add_(a * (skin_shaded - img))
    cover.add_(a * (1 - cover))
    fr0, fr1 = _rows(H, -1.0, 0.0)
    vb = v[:, fr0:fr1]
    fringe_line = cy - Bt + 0.12 + 0.22 * q["fringe"] - 0.25 * (u - fx) ** 2
    fringe_line = torch.minimum(fringe_line, by - 0.06 - 0.2 * q["fringe"] * 0 + 0.0 * u)
    fr = _ramp(fringe_line - vb, inv_px) * skin_a[:, fr0:fr1] * (q["hair_len"] > -0.95).float()
    _lerp_(img[:, :, fr0:fr1], hair_c, fr)
    _lerp_(img[:, :, m0:m1], hair_c * 0.55, beard_a * 0.8)
    _lerp_(img[:, :, m0:m1], lip_c, lips_a)
    _lerp_(img[:, :, m0:m1], skin_c * 0.18, cav)
    _lerp_(img[:, :, m0:m1], img.new_full((1, channels, 1, 1), 0.93), teeth * 0.95)
    _lerp_(img[:, :, e0:e1], img.new_full((1, channels, 1, 1), 0.95), white)
    _lerp_(img[:, :, e0:e1], iris_c, iris_a)
    _lerp_(img[:, :, e0:e1], img.new_full((1, channels, 1, 1), 0.04), pupil_a)
    _lerp_(img[:, :, e0:e1], hair_c * 0.55 + 0.05, brow_a[:, e0:e1])
    _lerp_(img, skin_c * 0.2, dark)
    _lerp_(img[:, :, e0:e1], img.new_full((1, channels, 1, 1), 0.08), glass_a[:, e0:e1])
    # img is now premultiplied by ``cover`` (every layer was drawn over black with lerps)

    if wild:
        # ---- pose: rotate / scale / translate the face layer
        ang = q["rot"].view(B)
        sc = q["scale"].view(B)
        cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
        theta = torch.stack([
            torch.stack([cos, -sin, -(cos * q["tx"].view(B) - sin * q["ty"].view(B))], 1),
            torch.stack([sin, cos, -(sin * q["tx"].view(B) + cos * q["ty"].view(B))], 1),
        ], 1)
        grid = F.affine_grid(theta, [B, 1, H, W], align_corners=False)
        warped = F.grid_sample(torch.cat([img, cover], 1), grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)
        img, cover = warped[:, :channels], warped[:, channels:]
        # ---- background: two colours along a random direction + a soft blob
        bdir = q["bg_dir"]
        tb = (0.5 + 0.5 * (torch.cos(bdir) * u + torch.sin(bdir) * v)).unsqueeze(1)
        bg1, bg2 = col("bg1"), col("bg2")
        bg = bg1 + (bg2 - bg1) * tb
        img.add_((1 - cover) * bg)
        # ---- occluder (hand / object): a rectangle in image coordinates
        occ = q["occ"] * _ramp(q["occ_w"] - (u - q["occ_x"]).abs(), inv_px) * _ramp(q["occ_h"] - (v - q["occ_y"]).abs(), inv_px)
        _lerp_(img, col("bg2") * 0.6 + skin_c * 0.4, occ)
        # ---- lighting gradient
        light = q["light_base"] + q["light_gx"] * u + q["light_gy"] * v
        img.mul_(light.unsqueeze(1))
    else:
        bg = col("bg1")
        img.add_((1 - cover) * bg)
    # ---- sensor noise from a hashed texture bank (deterministic on every device)
    k = 16
    bank = noise_bank(noise_key, k, channels, H, W, dev)
    sel = (p["noise_key"].to(torch.int64) % k)
    img.add_(bank[sel] * q["noise"].view(B, 1, 1, 1))
    return img.mul_(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8)
