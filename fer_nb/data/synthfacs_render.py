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
COLOUR_PARAMS = ("skin", "hair", "lipc", "iris", "bg1", "bg2", "occc")  # each (B, 3) RGB in [0, 1]
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


NOISE_BANK = 16


def noise_bank(key: int, k: int, channels: int, h: int, w: int, device) -> torch.Tensor:
    """``k`` fixed noise textures (k, C, H, W), uniform in [-0.5, 0.5), from integer hashes."""
    idx = torch.arange(k * channels * h * w, device=device, dtype=torch.int64)
    x = hash32(hash32(idx + (key & M32)) ^ 0x5BD1E995)
    return (x.to(torch.float32) * (1.0 / 2**32) - 0.5).view(k, channels, h, w)


class _Window:
    """A rectangle of the canonical frame evaluated on its own: rows ``r0:r1``, columns ``c0:c1``."""

    def __init__(self, h: int, w: int, v0: float, v1: float, u0: float, u1: float, u, v):
        self.r0, self.r1 = _rows(h, v0, v1)
        self.c0, self.c1 = _rows(w, u0, u1)
        self.u = u[..., self.c0:self.c1]
        self.v = v[:, self.r0:self.r1]

    def of(self, img: torch.Tensor) -> torch.Tensor:
        """The window's view of a (B, C, H, W) image."""
        return img[:, :, self.r0:self.r1, self.c0:self.c1]


def render(p: dict[str, torch.Tensor], image_size: int, channels: int, wild: bool,
           noise_key: int = 0, bank: torch.Tensor | None = None) -> torch.Tensor:
    """Render a batch of faces from parameter tensors ``p`` (all on one device) -> uint8 (B,C,H,W).

    ``p`` holds (B,) float tensors for :data:`AU_PARAMS`, :data:`IDENTITY_PARAMS`,
    :data:`NUISANCE_PARAMS` and (B, 3) RGB tensors for :data:`COLOUR_PARAMS`. ``bank``: the
    :func:`noise_bank` to reuse across calls (computed from ``noise_key`` when None).
    """
    H = W = int(image_size)
    dev = p["face_w"].device
    B = p["face_w"].shape[0]
    if B == 0:
        return torch.zeros(0, channels, H, W, dtype=torch.uint8, device=dev)
    inv_px = H / 2.0          # pixels per canonical unit
    px = 1.0 / inv_px
    minw = 0.75 * px          # strokes are never thinner than ~1.5 px in total
    thin = max(0.0055, 0.6 * minw)
    q = {k: (v.view(B, 1, 1) if v.ndim == 1 else v) for k, v in p.items()}
    u = ((torch.arange(W, device=dev, dtype=torch.float32) + 0.5) * (2.0 / W) - 1.0).view(1, 1, W)
    v = ((torch.arange(H, device=dev, dtype=torch.float32) + 0.5) * (2.0 / H) - 1.0).view(1, H, 1)

    def ramp(d, soft: float = 1.0):
        return _ramp(d, inv_px / soft)

    def col(name: str) -> torch.Tensor:
        c = p[name]
        if channels == 1:
            c = (c * c.new_tensor([0.299, 0.587, 0.114])).sum(1, keepdim=True)
        return c.view(B, channels, 1, 1)

    def grey(x: float) -> torch.Tensor:
        return torch.full((1, channels, 1, 1), x, device=dev)

    skin_c, hair_c, lip_c, iris_c = col("skin"), col("hair"), col("lipc"), col("iris")
    fx = q["yaw"] * 0.12                      # yaw: the inner features slide sideways
    cy = 0.06

    # ================================================================== geometry of the head
    A = 0.56 * q["face_w"] * (1 - 0.25 * q["yaw"].abs())
    Bt = 0.74 * q["face_h"]
    Bb = 0.78 * q["face_h"] + 0.10 * q["r26"]
    z = (v - cy) / torch.where(v < cy, Bt, Bb)                            # (B,H,1)
    zc = z.clamp(0, 1)
    wv = A * (1 - z * z).clamp_min(0).sqrt() * (1 - q["jaw"] * zc * zc)
    wv = torch.where(z.abs() < 1, wv, wv.new_full((), -1.0))
    skin_a = ramp(wv - (u - 0.3 * fx).abs())                               # (B,H,W)
    neck_w = 0.25 * q["face_w"]
    neck_top = cy + 0.5 * Bb
    r_neck = _rows(H, 0.3, 1.0)[0]
    vn = v[:, r_neck:]
    neck = ramp(neck_w - u.abs()) * ramp(vn - neck_top)
    torch.maximum(skin_a[:, r_neck:], neck, out=skin_a[:, r_neck:])
    ey = -0.06 + q["eye_y"]
    ears = _Window(H, W, -0.3, 0.4, -1.0, 1.0, u, v)
    du = (ears.u.abs() - A * 0.98) / (0.075 * q["ear"])
    dv = (ears.v - (ey + 0.1)) / (0.14 * q["ear"])
    ear = ramp((1 - (du * du + dv * dv).sqrt_()) * 0.07)
    sl = skin_a[:, ears.r0:ears.r1]
    torch.maximum(sl, ear, out=sl)
    has_hair = (q["hair_len"] > -0.95).float()
    hz = (v - (cy - 0.06)) / (Bt * (1.1 + 0.12 * q["hair_vol"]))
    hw = A * (1.1 + 0.12 * q["hair_vol"]) * (1 - hz * hz).clamp_min(0).sqrt() - (hz <= -1).float()
    hair_a = ramp(hw - u.abs()) * (ramp(cy + q["hair_len"] - v) * has_hair)
    shade_u = (1 - 0.16 * (u / A) ** 2).clamp_min(0.6)                     # (B,1,W) rounded face
    shade_v = torch.where(v > cy + 0.85 * Bb, 0.8, 1.0)                    # darker neck (B,H,1)

    # ================================================================== composite the head
    if wild:
        img = torch.zeros(B, channels, H, W, device=dev)   # premultiplied, over black
    else:
        img = col("bg1").expand(B, channels, H, W).clone()
    _lerp_(img, hair_c, hair_a)
    a = skin_a.unsqueeze(1)
    img.add_(a * (skin_c * (shade_u * shade_v).unsqueeze(1) - img))
    # fringe: hair over the forehead
    fw = _Window(H, W, -1.0, -0.15, -1.0, 1.0, u, v)
    by = ey - 0.12 * q["brow_h"]
    fringe_line = torch.minimum(cy - Bt + 0.12 + 0.22 * q["fringe"] - 0.25 * (fw.u - fx) ** 2, by - 0.07)
    fr = ramp(fringe_line - fw.v) * skin_a[:, fw.r0:fw.r1] * has_hair
    cover = None
    if wild:
        cover = (hair_a + skin_a - hair_a * skin_a).unsqueeze(1)

    # ================================================================== forehead wrinkles
    fh_win = _Window(H, W, -0.72, -0.12, -0.35, 0.35, u, v)
    mu = (fh_win.u - fx).abs()
    fh = (0.45 * q["r1"] + 0.45 * q["r2"] + 0.25 * q["age"]).clamp(0, 0.95)
    ln = None
    for k in range(3):
        yk = by - 0.09 - 0.055 * k + 0.35 * mu * mu
        s_ = fh * _stroke_y(fh_win.v, yk, thin, inv_px) * ramp(0.26 - mu)
        ln = s_ if ln is None else torch.maximum(ln, s_)
    fh_win.of(img).mul_(1 - 0.5 * ln.unsqueeze(1))
    _lerp_(fw.of(img), hair_c, fr)

    # ================================================================== eyes and brows
    ew_ = _Window(H, W, -0.45, 0.12, -0.62, 0.62, u, v)
    vb = ew_.v
    mu = (ew_.u - fx).abs()                                                # mirrored (B,1,w)
    ex = 0.215 * q["eye_space"]
    ew = 0.095 * q["eye_size"]
    s = (mu - ex) / ew
    fs = (1 - s * s).clamp_min(0).sqrt()
    open_u = (0.05 * q["eye_size"] * (1 + 1.1 * q["r5"] - 0.5 * q["r7"] - 0.35 * q["r6"] - 0.25 * q["r9"])
              * (1 - q["r43"])).clamp_min(0)
    open_l = (0.034 * q["eye_size"] * (1 - 0.6 * q["r7"] - 0.55 * q["r6"] - 0.2 * q["r9"])
              * (1 - q["r43"])).clamp_min(0)
    yu = ey - open_u * fs                                                  # upper lid (B,1,w)
    yl = ey + open_l * fs
    inside_s = ramp((1.06 - s.abs()) * ew)
    white = ramp(vb - yu) * ramp(yl - vb) * ramp((1 - s.abs()) * ew)
    ri = 0.046 * q["eye_size"]
    d = ((mu - ex) ** 2 + (vb - ey - 0.004) ** 2).sqrt_()
    iris_a = ramp(ri - d) * white
    pupil_a = ramp(0.45 * ri - d) * white
    lid = torch.maximum(_stroke_y(vb, yu - 0.004, max(0.012, minw), inv_px),
                        0.45 * _stroke_y(vb, yl, max(0.006, 0.7 * minw), inv_px)) * inside_s
    # skin lines around the eyes: lid crease, infraorbital furrow (AU6/7), crow's feet (AU6)
    crease = 0.35 * _stroke_y(vb, yu - 0.03 - 0.01 * q["eye_size"] + 0.015 * q["r43"], thin, inv_px) \
        * ramp((0.9 - s.abs()) * ew)
    under = (0.6 * q["r6"] + 0.35 * q["r7"] + 0.3 * q["age"]).clamp(0, 0.9) * _stroke_y(
        vb, ey + 0.04 + 1.1 * open_l, thin, inv_px) * ramp((0.75 - s.abs()) * ew)
    ln = torch.maximum(crease, under)
    cf = (0.95 * q["r6"] + 0.3 * q["age"]).clamp(0, 1)
    x0 = ex + ew + 0.018
    dxm, dym = mu - x0, vb - ey
    for ang in (-0.45, 0.0, 0.45):
        c, sn = math.cos(ang), math.sin(ang)
        along = dxm * c + dym * sn
        perp = dym * c - dxm * sn
        ray = ramp(thin - perp.abs()) * ramp(along) * ramp(0.06 - along)
        ln = torch.maximum(ln, cf * ray)
    gl = (0.9 * q["r4"]) * ramp(thin - (mu - 0.03).abs()) * ramp(vb - (by - 0.02)) * ramp(by + 0.07 - vb)
    ln = torch.maximum(ln, gl)
    # brows: inner end up (AU1), outer end up (AU2), lowered and knitted (AU4)
    xi = 0.07 + 0.02 * q["eye_space"] - 0.035 * q["r4"]
    xo = ex + ew * (1.05 + 0.25 * q["brow_len"])
    yi = by + 0.014 * q["brow_slant"] - 0.10 * q["r1"] + 0.055 * q["r4"] + 0.025 * q["r9"]
    yo = by - 0.014 * q["brow_slant"] - 0.085 * q["r2"] + 0.02 * q["r4"] + 0.01 * q["r9"] \
        + 0.025 * q["r1"] * (1 - q["r2"])
    arch = 0.02 * q["brow_arch"] + 0.02 * q["r2"] - 0.012 * q["r4"]
    t = ((mu - xi) / (xo - xi)).clamp(0, 1)
    yc = yi + (yo - yi) * t - arch * 4 * t * (1 - t)
    half = (0.016 * q["brow_thick"] * (1 - 0.4 * t)).clamp_min(minw)
    brow_a = _stroke_y(vb, yc, half, inv_px) * (ramp(mu - xi) * ramp(xo - mu))
    win = ew_.of(img)
    win.mul_(1 - 0.5 * ln.unsqueeze(1))
    _lerp_(win, grey(0.95), white)
    _lerp_(win, iris_c, iris_a)
    _lerp_(win, grey(0.04), pupil_a)
    _lerp_(win, skin_c * 0.2, lid)
    _lerp_(win, hair_c * 0.55 + 0.05, brow_a)
    gd = (((mu - ex) / (0.135 * q["eye_size"])) ** 2 + ((vb - ey) / 0.09) ** 2).sqrt_()
    ring = _ramp(0.1 - (gd - 1).abs(), inv_px * 0.12 * q["eye_size"])
    bridge = _stroke_y(vb, ey - 0.02, minw, inv_px) * ramp(ex - 0.12 * q["eye_size"] - mu)
    _lerp_(win, grey(0.08), q["glasses"] * torch.maximum(ring, bridge))

    # ================================================================== nose
    nwin = _Window(H, W, -0.1, 0.36, -0.3, 0.3, u, v)
    vb = nwin.v
    mu = (nwin.u - fx).abs()
    ny = 0.21 * q["nose_len"] + 0.02 - 0.03 * q["r9"]
    nw = 0.045 * q["nose_w"] + 0.012 * q["r9"]
    dn = (((mu - nw) / 0.027) ** 2 + ((vb - ny) / 0.014) ** 2).sqrt_()
    nostril = 0.85 * ramp((1 - dn) * 0.014)
    ala_d = ((mu - nw - 0.005) ** 2 + (vb - ny + 0.018) ** 2).sqrt_()
    ln = 0.55 * ramp(thin - (ala_d - 0.04).abs()) * ramp(mu - nw - 0.01) * ramp(ny + 0.01 - vb)
    bridge_l = 0.22 * ramp(thin - (mu - 0.05 * q["nose_w"]).abs()) * ramp(vb - (ey + 0.05)) * ramp(ny - 0.05 - vb)
    ln = torch.maximum(ln, bridge_l)
    w9 = (0.95 * q["r9"]).clamp(0, 1)
    for k in range(3):
        yk = ey + 0.035 + 0.028 * k + 0.25 * mu * mu
        ln = torch.maximum(ln, w9 * _stroke_y(vb, yk, thin, inv_px) * ramp(0.065 - mu))
    win = nwin.of(img)
    win.mul_(1 - 0.55 * ln.unsqueeze(1))
    _lerp_(win, skin_c * 0.2, nostril)

    # ================================================================== mouth, folds and chin
    mwin = _Window(H, W, 0.1, 1.0, -0.6, 0.6, u, v)
    vb = mwin.v
    uu = mwin.u - fx
    mu = uu.abs()
    side = uu > 0
    mwL = 0.165 * q["mouth_w"] * (1 + 0.2 * q["r12L"] + 0.3 * q["r20"] - 0.12 * q["r23"] - 0.1 * q["r14L"])
    mwR = 0.165 * q["mouth_w"] * (1 + 0.2 * q["r12R"] + 0.3 * q["r20"] - 0.12 * q["r23"] - 0.1 * q["r14R"])
    dyL = 0.012 * q["mouth_rest"] - 0.1 * q["r12L"] + 0.075 * q["r15"] + 0.015 * q["r20"] - 0.025 * q["r14L"]
    dyR = 0.012 * q["mouth_rest"] - 0.1 * q["r12R"] + 0.075 * q["r15"] + 0.015 * q["r20"] - 0.025 * q["r14R"]
    mw = torch.where(side, mwR, mwL)                                       # (B,1,w)
    dy = torch.where(side, dyR, dyL)
    my = 0.43 + q["mouth_y"] - 0.012 * q["r9"]
    sm = uu / mw
    s2 = (sm * sm).clamp(max=1.0)
    inner = 1 - s2
    sq = inner.sqrt()
    ym = my + dy * s2 - (0.024 * q["r17"] + 0.012 * q["r15"]) * inner
    gap0 = 0.04 * q["r25"] + 0.17 * q["r26"] + 0.03 * q["r16"]
    gap = gap0 * sq
    yo1 = ym - 0.3 * gap
    yo2 = ym + 0.7 * gap
    tu = 0.028 * q["lip"] * (1 - 0.8 * q["r23"]) * (0.5 + 0.5 * sq)
    tl = 0.04 * q["lip"] * (1 - 0.75 * q["r23"]) * (0.35 + 0.65 * sq) * (1 + 0.35 * q["r16"])
    inside_m = ramp((1 - sm.abs()) * mw)
    # nasolabial folds: from the nose wing to beyond the mouth corners (parametrised by v; per side)
    r12 = torch.where(side, q["r12R"], q["r12L"])
    fold = (0.12 + 0.25 * q["age"] + 0.85 * r12 + 0.6 * q["r9"] + 0.25 * q["r6"] + 0.3 * q["r20"]).clamp(0, 1)
    y1, y2 = ny - 0.01, my + dy + 0.04
    x1, x2 = nw + 0.05, mw + 0.03
    tt = (vb - y1) / (y2 - y1)
    ttc = tt.clamp(0, 1)
    xc = x1 + (x2 - x1) * tt + 0.12 * ttc * (1 - ttc)
    ln = fold * ramp(max(0.007, 0.7 * minw) - (mu - xc).abs()) * (ramp(tt, 5.0) * ramp(1 - tt, 5.0))
    # marionette lines (AU15, age) from the corners downwards
    mar = (0.8 * q["r15"] + 0.2 * q["age"]).clamp(0, 1)
    tt2 = (vb - (my + dy + 0.02)) / 0.12
    xc2 = mw + 0.01 + 0.02 * tt2
    ln = torch.maximum(ln, mar * ramp(thin - (mu - xc2).abs()) * (ramp(tt2, 8.0) * ramp(1 - tt2, 8.0)))
    # AU14 dimples and AU20 stretch lines at the corners (side-specific)
    a14 = torch.where(side, q["r14R"], q["r14L"])
    ycorner = my + dy
    dimple = a14 * ramp(max(0.009, 0.8 * minw) - (mu - mw - 0.022).abs()) * ramp(0.05 - (vb - ycorner).abs())
    stretch = (0.8 * q["r20"]) * _stroke_y(vb, ycorner + 0.005, thin, inv_px) \
        * (ramp(mu - mw - 0.005) * ramp(mw + 0.06 - mu))
    ln = torch.maximum(ln, torch.maximum(dimple, stretch))
    # chin: mentolabial sulcus (AU17 deepens it) and the chin boss
    tl_c = 0.04 * q["lip"] * (1 - 0.75 * q["r23"]) * (1 + 0.35 * q["r16"])
    ych = my + 0.7 * gap0 + tl_c + 0.05 + 0.02 * q["r17"] - 0.3 * (mu * mu)
    chin = (0.25 + 0.65 * q["r17"] + 0.4 * q["r23"]).clamp(0, 1) * _stroke_y(vb, ych, thin, inv_px) * ramp(0.08 - mu, 3.0)
    chin2 = (0.7 * q["r17"]) * _stroke_y(vb, ych + 0.07 - 2.5 * mu * mu, thin, inv_px) * ramp(0.07 - mu, 3.0)
    ln = torch.maximum(ln, torch.maximum(chin, chin2))
    lips_a = ramp(vb - (yo1 - tu)) * ramp(yo2 + tl - vb) * inside_m
    cav = ramp(vb - yo1) * ramp(yo2 - vb) * inside_m
    teeth = cav * torch.maximum(ramp(yo1 + 0.03 - vb), (q["r16"] + q["r20"]).clamp(0, 1) * ramp(vb - (yo2 - 0.022)))
    mline = 0.9 * _stroke_y(vb, ym, max(0.006, 0.8 * minw) * (1 + 0.9 * q["r23"]), inv_px) * inside_m
    win = mwin.of(img)
    win.mul_(1 - 0.5 * ln.unsqueeze(1))
    beard_mask = 1 - lips_a
    beard_a = (0.8 * q["beard"]) * skin_a[:, mwin.r0:mwin.r1, mwin.c0:mwin.c1] * ramp(vb - (my - 0.07), 5.0) * beard_mask
    _lerp_(win, hair_c * 0.55, beard_a)
    _lerp_(win, lip_c, lips_a)
    _lerp_(win, skin_c * 0.18, cav)
    _lerp_(win, grey(0.93), teeth * 0.95)
    _lerp_(win, skin_c * 0.2, mline)

    # ================================================================== wild: pose, background, light
    if wild:
        ang = q["rot"].view(B)
        sc = q["scale"].view(B)
        tx, ty = q["tx"].view(B), q["ty"].view(B)
        cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
        theta = torch.stack([
            torch.stack([cos, -sin, -(cos * tx - sin * ty)], 1),
            torch.stack([sin, cos, -(sin * tx + cos * ty)], 1),
        ], 1)
        grid = F.affine_grid(theta, [B, 1, H, W], align_corners=False)
        warped = F.grid_sample(torch.cat([img, cover], 1), grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)
        img, cover = warped[:, :channels], warped[:, channels:]
        bdir = q["bg_dir"]
        tb = (0.5 + 0.5 * (torch.cos(bdir) * u + torch.sin(bdir) * v)).unsqueeze(1)
        bg1, bg2 = col("bg1"), col("bg2")
        img.add_((1 - cover) * (bg1 + (bg2 - bg1) * tb))
        occ = q["occ"] * ramp(q["occ_w"] - (u - q["occ_x"]).abs()) * ramp(q["occ_h"] - (v - q["occ_y"]).abs())
        _lerp_(img, col("occc"), occ)
        light = q["light_base"] + q["light_gx"] * u + q["light_gy"] * v
        img.mul_(light.unsqueeze(1))
    # ================================================================== sensor noise, quantisation
    if bank is None:
        bank = noise_bank(noise_key, NOISE_BANK, channels, H, W, dev)
    sel = p["noise_key"].to(torch.int64) % bank.shape[0]
    img.add_(bank[sel] * q["noise"].view(B, 1, 1, 1))
    return img.mul_(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8)
