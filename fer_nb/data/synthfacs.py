"""SynthFACS: a procedural, licence-free face-expression dataset with every label the book needs.

Faces are *rendered from parameters* (:mod:`fer_nb.data.synthfacs_render`): an identity per
subject (face and jaw shape, eye size and spacing, brows, nose, mouth, lips, skin tone, hair,
glasses, age lines, beard), FACS action-unit intensities that move the features, and nuisance
(pose, background, lighting, occluders, sensor noise) for the "wild" domain.

Labels (shared schema, :mod:`fer_nb.data.schema`):

* ``expression``: the *annotator* label (the true class, flipped to a confusable class with
  probability ``label_noise``); the clean class is kept in ``info["true_expression"]`` and the
  effective intensity in ``info["intensity"]`` (``info`` tensors cover the whole generated set:
  ``FaceArrays.subset`` copies ``info`` without indexing it, so index them yourself);
* ``aus``: AU intensities in [0, 1] in :data:`~fer_nb.data.schema.AUS` order (what is rendered),
  ``aus_mask`` all True;
* ``va``: valence/arousal = circumplex anchor of the class x effective intensity + noise, clipped
  to [-1, 1], so strong and weak emotions separate by their radius (the CAF paper's grouping);
* ``subject`` in ``[subject_offset, subject_offset + n_subjects)``; ``domain`` (0 lab, 1 wild);
  ``sequence``/``frame`` (-1 / 0 for stills).

Determinism: every per-sample random number is a counter-based hash of
``(seed, stream, index, field)`` and identities are hashes of ``(subject, domain)``. So
``generate(100, seed=s)`` is exactly the first 100 rows of ``generate(200, seed=s)``, nothing
depends on global RNG state, and parameters are drawn on the CPU and rendered on ``device``.
A subject id is the same person for every ``seed`` (use disjoint ``subject_offset`` ranges for
subject-independent splits).
"""
from __future__ import annotations

import math
import zlib
from typing import Iterator, Sequence

import torch

from fer_nb.data.schema import AUS, EXPRESSIONS, FaceArrays
from fer_nb.data.synthfacs_render import M32, NOISE_BANK, hash32, noise_bank, render
from fer_nb.pseudo_emotions import PROTOTYPES as _EMFACS

DOMAINS = ("lab", "wild")
MIN_SIZE, MAX_SIZE = 32, 256

#: EMFACS prototypes (fer_nb.pseudo_emotions, REFERENCE_FACTS.md); contempt is rendered unilateral R12 + R14.
PROTOTYPES: dict[str, tuple[int, ...]] = {"neutral": (), **_EMFACS}
#: Companion AUs that often co-occur (probability, relative intensity); rendered and labelled.
COMPANIONS: dict[str, tuple[tuple[int, float, float], ...]] = {
    "happiness": ((25, 0.5, 0.9),),           # a smile with parted lips shows the teeth
    "surprise": ((25, 1.0, 1.0),),            # a dropped jaw parts the lips
    "fear": ((25, 1.0, 1.0),),
    "disgust": ((25, 0.6, 0.7),),             # the lower-lip depressor parts the lips
    "sadness": ((17, 0.5, 0.7),),             # the pout of the chin raiser
    "anger": ((17, 0.3, 0.6),),
}
#: Valence/arousal of each class at full intensity (placements on Russell's circumplex).
VA_ANCHORS: dict[str, tuple[float, float]] = {
    "neutral": (0.0, 0.0),
    "anger": (-0.6, 0.7),
    "disgust": (-0.65, 0.35),
    "fear": (-0.55, 0.8),
    "happiness": (0.85, 0.45),
    "sadness": (-0.7, -0.45),
    "surprise": (0.25, 0.85),
    "contempt": (-0.45, 0.2),
}
#: Classes an annotator confuses each class with (label noise flips to one of them).
CONFUSABLE: dict[str, tuple[str, ...]] = {
    "neutral": ("sadness", "contempt"),
    "anger": ("disgust", "sadness"),
    "disgust": ("anger", "sadness"),
    "fear": ("surprise", "sadness"),
    "happiness": ("surprise", "neutral"),
    "sadness": ("neutral", "fear"),
    "surprise": ("fear", "happiness"),
    "contempt": ("neutral", "disgust"),
}
#: Class counts behind the named priors, in EXPRESSIONS order (neutral .. surprise, contempt).
#: "ferplus": approximate majority-vote label counts of the FER+ training set (Barsoum et al.,
#: "Training deep networks for facial expression recognition with crowd-sourced label
#: distribution", ICMI 2016), as commonly tabulated: neutral ~10.3k, happiness ~7.5k,
#: surprise ~3.6k, sadness ~3.5k, anger ~2.5k, fear ~0.65k, disgust ~0.19k, contempt ~0.17k.
#: "rafdb": RAF-DB basic-emotion training split (Li et al., CVPR 2017; 12,271 images):
#: surprise 1290, fear 281, disgust 717, happiness 4772, sadness 1982, anger 705, neutral 2524.
#: RAF-DB has no contempt class.
PRIOR_COUNTS: dict[str, tuple[float, ...]] = {
    "uniform": (1, 1, 1, 1, 1, 1, 1, 1),
    "ferplus": (10295, 2466, 191, 652, 7528, 3514, 3562, 165),
    "rafdb": (2524, 705, 717, 281, 4772, 1982, 1290, 0),
}

# ----------------------------------------------------------------------------- hashing


def _key(*parts: int | str) -> int:
    """A 32-bit key from ints and strings (stable across runs and platforms)."""
    h = 0x1234567
    for part in parts:
        if isinstance(part, str):
            x = zlib.crc32(part.encode())
        else:
            x = int(part)
            x = (x & M32) ^ (zlib.crc32(str(x >> 32).encode()) if x >> 32 or x < 0 else 0)
        h = int(hash32(torch.tensor((h * 0x9E3779B1 + x) & M32)))
    return h


class _Rand:
    """Counter-based random numbers: ``u(field)`` is a pure function of (key, index, field)."""

    def __init__(self, key: int, index: torch.Tensor):
        self.base = hash32(index.to(torch.int64) + key)

    def bits(self, field: str) -> torch.Tensor:
        return hash32(self.base ^ zlib.crc32(field.encode()))

    def u(self, field: str) -> torch.Tensor:
        """Uniform in (0, 1), float64."""
        return (self.bits(field).to(torch.float64) + 0.5) / 2**32

    def range(self, field: str, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * self.u(field)

    def normal(self, field: str) -> torch.Tensor:
        u1, u2 = self.u(field + "#1"), self.u(field + "#2")
        return torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)

    def bern(self, field: str, p: float | torch.Tensor) -> torch.Tensor:
        return (self.u(field) < p).to(torch.float64)

    def choice(self, field: str, k: int) -> torch.Tensor:
        return (self.bits(field) % k).to(torch.int64)


# ----------------------------------------------------------------------------- validation


def _check_common(domain: str, image_size: int, n_subjects: int, subject_offset: int,
                  channels: int | None) -> int:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; use one of {DOMAINS}")
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise TypeError(f"image_size must be an int, got {image_size!r}")
    if not MIN_SIZE <= image_size <= MAX_SIZE:
        raise ValueError(f"image_size must be in [{MIN_SIZE}, {MAX_SIZE}] (48..224 is typical), got {image_size}")
    if isinstance(n_subjects, bool) or not isinstance(n_subjects, int) or n_subjects < 1:
        raise ValueError(f"n_subjects must be an int >= 1, got {n_subjects!r}")
    if isinstance(subject_offset, bool) or not isinstance(subject_offset, int) or subject_offset < 0:
        raise ValueError(f"subject_offset must be an int >= 0, got {subject_offset!r}")
    if channels is None:
        return 1 if domain == "lab" else 3
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale), 3 (RGB) or None (domain default), got {channels!r}")
    return channels


def _check_severity(wild_severity: float) -> float:
    if isinstance(wild_severity, bool) or not isinstance(wild_severity, (int, float)) \
            or not 0.0 <= float(wild_severity) <= 1.0:
        raise ValueError(f"wild_severity must be a number in [0, 1] (1 = the full wild domain, 0.5 = milder pose, "
                         f"light and occluders), got {wild_severity!r}")
    return float(wild_severity)


def _check_n(n: int, what: str = "n") -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{what} must be an int >= 0, got {n!r}")


def class_prior(class_priors: str | Sequence[float], with_contempt: bool = False) -> torch.Tensor:
    """The class probabilities (float64, sums to 1) of a named preset or an explicit list."""
    k = 8 if with_contempt else 7
    if isinstance(class_priors, str):
        if class_priors not in PRIOR_COUNTS:
            raise ValueError(f"unknown class_priors {class_priors!r}; use one of {sorted(PRIOR_COUNTS)} or a list of {k} weights")
        if class_priors == "rafdb" and with_contempt:
            raise ValueError("RAF-DB has no contempt class: use with_contempt=False, or pass 8 weights as a list")
        w = torch.tensor(PRIOR_COUNTS[class_priors][:k], dtype=torch.float64)
    else:
        w = torch.as_tensor(list(class_priors), dtype=torch.float64)
        if w.ndim != 1 or len(w) != k:
            raise ValueError(f"class_priors as a list needs {k} weights (with_contempt={with_contempt}), got {len(w)}")
        if bool((w < 0).any()) or not bool(torch.isfinite(w).all()) or float(w.sum()) <= 0:
            raise ValueError(f"class_priors weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    return w / w.sum()


# ----------------------------------------------------------------------------- identities


def identity_params(subject: torch.Tensor, domain: str) -> dict[str, torch.Tensor]:
    """Per-subject identity parameters (float64 (N,) or (N, 3) colours); a pure function of the id."""
    wild = domain == "wild"
    r = _Rand(_key("identity", domain), subject)
    sp = 1.35 if wild else 1.0                   # wild identities vary more
    p = {
        "face_w": 1 + sp * r.range("face_w", -0.1, 0.1),
        "face_h": 1 + sp * r.range("face_h", -0.07, 0.07),
        "jaw": r.range("jaw", 0.05, 0.45),
        "ear": r.range("ear", 0.8, 1.2),
        "eye_size": 1 + sp * r.range("eye_size", -0.17, 0.17),
        "eye_space": 1 + sp * r.range("eye_space", -0.08, 0.08),
        "eye_y": sp * r.range("eye_y", -0.035, 0.035),
        "brow_thick": r.range("brow_thick", 0.6, 1.5),
        "brow_h": 1 + sp * r.range("brow_h", -0.2, 0.2),
        "brow_len": r.range("brow_len", 0.0, 1.0),
        "brow_slant": r.range("brow_slant", -1.0, 1.0),
        "brow_arch": r.range("brow_arch", -0.3, 1.0),
        "nose_len": 1 + sp * r.range("nose_len", -0.15, 0.15),
        "nose_w": 1 + sp * r.range("nose_w", -0.2, 0.2),
        "mouth_w": 1 + sp * r.range("mouth_w", -0.14, 0.14),
        "mouth_y": sp * r.range("mouth_y", -0.03, 0.03),
        "lip": r.range("lip", 0.6, 1.4),
        "mouth_rest": r.range("mouth_rest", -1.0, 1.0),
        "age": r.u("age") ** 2,
        "glasses": r.bern("glasses", 0.3 if wild else 0.12),
        "hair_len": torch.where(r.u("bald") < (0.1 if wild else 0.05), torch.full_like(r.u("x"), -1.0),
                                r.range("hair_len", -0.2, 0.75)),
        "hair_vol": r.range("hair_vol", 0.0, 1.0),
        "fringe": r.range("fringe", 0.0, 1.0),
        "beard": r.bern("beard", 0.15 if wild else 0.05) * r.range("beard_d", 0.4, 0.9),
        "expressivity": r.range("expressivity", 0.55, 1.05) if wild else r.range("expressivity", 0.75, 1.1),
    }
    # skin tone: lab identities are lighter and narrower; wild spans the whole range
    tone = r.range("tone", 0.0, 1.0) if wild else r.range("tone", 0.0, 0.55)
    light = torch.tensor([0.97, 0.82, 0.71], dtype=torch.float64)
    dark_ = torch.tensor([0.38, 0.25, 0.18], dtype=torch.float64)
    p["skin"] = light + (dark_ - light) * tone[:, None]
    hue = r.u("hair_hue")[:, None]
    blond = torch.tensor([0.75, 0.62, 0.38], dtype=torch.float64)
    brown = torch.tensor([0.32, 0.2, 0.12], dtype=torch.float64)
    black = torch.tensor([0.08, 0.07, 0.07], dtype=torch.float64)
    hair = torch.where(hue < 0.5, black + (brown - black) * (hue * 2), brown + (blond - brown) * (hue * 2 - 1))
    grey = r.u("grey")[:, None] * p["age"][:, None]
    p["hair"] = hair + (torch.tensor([0.7, 0.7, 0.7], dtype=torch.float64) - hair) * grey
    p["lipc"] = p["skin"] * torch.tensor([0.78, 0.5, 0.5], dtype=torch.float64)
    ih = r.u("iris_hue")[:, None]
    p["iris"] = torch.tensor([0.3, 0.18, 0.1], dtype=torch.float64) * (1 - ih) + torch.tensor([0.3, 0.45, 0.6], dtype=torch.float64) * ih
    return p


# ----------------------------------------------------------------------------- expressions


def _names(with_contempt: bool) -> tuple[str, ...]:
    return EXPRESSIONS if with_contempt else EXPRESSIONS[:7]


def _expression_aus(r: _Rand, cls: torch.Tensor, strength: torch.Tensor, wild: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """AU intensities (N, 17) for classes ``cls`` at effective intensity ``strength``.

    Returns ``(aus, unilateral)``; ``unilateral`` marks samples whose AU12/AU14 act on the right
    side only (contempt).
    """
    n = cls.shape[0]
    aus = torch.zeros(n, len(AUS), dtype=torch.float64)
    # background activity: small random AUs (more in the wild); neutral faces are not blank
    p_bg = 0.12 if wild else 0.08
    for j, au in enumerate(AUS):
        if au == 43:
            continue
        on = r.bern(f"bg_on{au}", p_bg)
        aus[:, j] = on * r.range(f"bg_val{au}", 0.0, 0.25)
    if wild:  # occasional blink in the wild
        aus[:, AUS.index(43)] = r.bern("blink", 0.03) * r.range("blink_v", 0.5, 1.0)
    neutral = cls == 0
    aus[neutral] = torch.where(
        (r.u("neutral_on")[:, None] < 0.15).expand(-1, len(AUS))[neutral],
        aus[neutral] * 0 + 0.3 * r.u("neutral_v")[neutral, None], aus[neutral],
    ) * torch.tensor([1.0 if a != 43 else 0.0 for a in AUS], dtype=torch.float64)
    for ci, name in enumerate(EXPRESSIONS):
        if ci == 0:
            continue
        sel = cls == ci
        if not bool(sel.any()):
            continue
        for au in PROTOTYPES[name]:
            j = AUS.index(au)
            jit = r.range(f"jit{au}", 0.85, 1.1)
            aus[:, j] = torch.where(sel, (strength * jit).clamp(0, 1), aus[:, j])
        for au, prob, rel in COMPANIONS.get(name, ()):
            j = AUS.index(au)
            on = r.u(f"comp{au}") < prob
            aus[:, j] = torch.where(sel & on, (strength * rel).clamp(0, 1), aus[:, j])
    unilateral = cls == EXPRESSIONS.index("contempt")
    return aus.clamp(0, 1), unilateral


def _va(r: _Rand, cls: torch.Tensor, strength: torch.Tensor, noise: float = 0.06) -> torch.Tensor:
    anchors = torch.tensor([VA_ANCHORS[e] for e in EXPRESSIONS], dtype=torch.float64)
    va = anchors[cls] * strength[:, None]
    va = va + noise * torch.stack([r.normal("va_v"), r.normal("va_a")], 1)
    return va.clamp(-1, 1)


def _noisy_labels(r: _Rand, true: torch.Tensor, label_noise: float, with_contempt: bool) -> torch.Tensor:
    names = _names(with_contempt)
    conf = []
    for name in names:
        alts = [names.index(a) for a in CONFUSABLE[name] if a in names]
        conf.append((alts * 2)[:2])
    conf_t = torch.tensor(conf, dtype=torch.int64)
    flip = r.u("label_flip") < label_noise
    alt = conf_t[true, r.choice("label_alt", 2)]
    return torch.where(flip, alt, true)


def _render_params(ident: dict[str, torch.Tensor], aus: torch.Tensor, unilateral: torch.Tensor,
                   nuis: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    p: dict[str, torch.Tensor] = {}
    for k, v in ident.items():
        if k != "expressivity":
            p[k] = v
    col = {au: aus[:, AUS.index(au)] for au in AUS}
    for au in AUS:
        if au in (12, 14):
            continue
        p[f"r{au}"] = col[au]
    for au in (12, 14):
        p[f"r{au}R"] = col[au]
        p[f"r{au}L"] = torch.where(unilateral, torch.zeros_like(col[au]), col[au])
    p.update(nuis)
    return p


def _nuisance(r: _Rand, wild: bool, severity: float = 1.0) -> dict[str, torch.Tensor]:
    """Pose, light, background, occluder and sensor-noise parameters (all fixed in the lab).

    ``severity`` in [0, 1] scales every wild nuisance towards the lab's frontal, evenly lit face
    (rotation, scale change, translation, yaw, light gradients and level, occluder probability,
    noise above the lab's); 1 is the full wild domain. The random draws do not depend on it, so
    two severities render the same faces under milder or harsher conditions.
    """
    n = r.base.shape[0]
    z = torch.zeros(n, dtype=torch.float64)
    grey = r.range("bg_grey", 0.55, 0.72)
    p = {"noise_key": r.choice("noise_key", 16).to(torch.float64)}
    if not wild:
        p.update(rot=z, scale=z + 1, tx=z, ty=z, yaw=z, light_gx=z, light_gy=z, light_base=z + 1,
                 bg_dir=z, occ=z, occ_x=z, occ_y=z, occ_w=z, occ_h=z, noise=z + 0.025)
        p["bg1"] = grey[:, None].expand(n, 3).clone()
        p["bg2"] = p["bg1"]
        p["occc"] = p["bg1"]
        return p
    sv = float(severity)

    def toward(x: torch.Tensor, calm: float) -> torch.Tensor:  # severity 1 leaves x untouched
        return x if sv == 1.0 else calm + (x - calm) * sv

    p.update(
        rot=toward((r.normal("rot") * 0.2).clamp(-0.45, 0.45), 0.0),
        scale=toward(r.range("scale", 0.78, 1.12), 1.0),
        tx=toward(r.range("tx", -0.13, 0.13), 0.0),
        ty=toward(r.range("ty", -0.12, 0.12), 0.0),
        yaw=toward(r.range("yaw", -0.6, 0.6), 0.0),
        light_gx=toward(r.range("lgx", -0.35, 0.35), 0.0),
        light_gy=toward(r.range("lgy", -0.25, 0.25), 0.0),
        light_base=toward(r.range("lbase", 0.7, 1.15), 1.0),
        bg_dir=r.range("bg_dir", 0, 2 * math.pi),
        occ=r.bern("occ", 0.3 * sv),
        occ_x=r.range("occ_x", -0.45, 0.45),
        occ_y=r.range("occ_y", -0.2, 0.7),
        occ_w=r.range("occ_w", 0.1, 0.3),
        occ_h=r.range("occ_h", 0.08, 0.25),
        noise=toward(r.range("noise", 0.03, 0.09), 0.025),
    )
    for name in ("bg1", "bg2", "occ_rgb"):  # muted colours: a random hue mixed with a random grey
        rgb = torch.stack([r.u(f"{name}{c}") for c in "rgb"], 1)
        g = r.range(f"{name}_grey", 0.1, 0.9)[:, None]
        sat = r.range(f"{name}_sat", 0.1, 0.6)[:, None]
        p[name] = (g + sat * (rgb - 0.5)).clamp(0.02, 0.98)
    hand = torch.tensor([0.95, 0.78, 0.66], dtype=torch.float64) * r.range("hand_tone", 0.45, 1.0)[:, None]
    p["occc"] = torch.where(r.u("occ_hand")[:, None] < 0.5, hand, p.pop("occ_rgb"))
    return p


def _strength(r: _Rand, wild: bool, expressivity: torch.Tensor) -> torch.Tensor:
    """Effective intensity: posed and mostly high in the lab (0.3..1, skewed high), lower in the wild."""
    if wild:
        base = 0.2 + 0.75 * r.u("intensity")
    else:
        base = 0.3 + 0.7 * r.u("intensity") ** 0.6
    return (base * expressivity).clamp(0, 1)


def _to_device(p: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device=device, dtype=torch.float32) for k, v in p.items()}


def _chunk(device: torch.device) -> int:
    """Images per render call: small on a CPU (the working set stays in cache), large on a GPU."""
    return 128 if device.type == "cpu" else 4096


def _render_chunked(p: dict[str, torch.Tensor], image_size: int, channels: int, wild: bool,
                    device: torch.device) -> torch.Tensor:
    n = next(iter(p.values())).shape[0]
    out = torch.empty(n, channels, image_size, image_size, dtype=torch.uint8, device=device)
    bank = noise_bank(0, NOISE_BANK, channels, image_size, image_size, device)
    chunk = _chunk(device)
    for s in range(0, n, chunk):
        part = _to_device({k: v[s:s + chunk] for k, v in p.items()}, device)
        out[s:s + chunk] = render(part, image_size, channels, wild, bank=bank)
    return out


# ----------------------------------------------------------------------------- public API


def _draw_class_and_subject(r: "_Rand", prior: torch.Tensor, subject_offset: int,
                            n_subjects: int) -> tuple[torch.Tensor, torch.Tensor]:
    """True expression (from the class ``prior``) and subject id of each row of ``r``."""
    cdf = prior.cumsum(0)
    true = torch.searchsorted(cdf, r.u("class").clamp(max=float(cdf[-1]) - 1e-12)).clamp(max=len(prior) - 1)
    subject = subject_offset + (r.u("subject") * n_subjects).long().clamp(max=n_subjects - 1)
    return true, subject


def sample_params(n: int, *, seed: int = 0, domain: str = "lab", n_subjects: int = 40,
                  subject_offset: int = 0, class_priors: str | Sequence[float] = "uniform",
                  label_noise: float = 0.0, with_contempt: bool = False, start: int = 0,
                  wild_severity: float = 1.0) -> dict:
    """Labels and render parameters of stills ``start .. start + n - 1`` (CPU, float64)."""
    wild = domain == "wild"
    idx = torch.arange(start, start + n, dtype=torch.int64)
    r = _Rand(_key(seed, "still", domain), idx)
    true, subject = _draw_class_and_subject(r, class_prior(class_priors, with_contempt), subject_offset, n_subjects)
    ident = identity_params(subject, domain)
    strength = _strength(r, wild, ident["expressivity"])
    aus, uni = _expression_aus(r, true, strength, wild)
    va = _va(r, true, strength * (true > 0))
    label = _noisy_labels(r, true, label_noise, with_contempt)
    params = _render_params(ident, aus, uni, _nuisance(r, wild, wild_severity))
    return {"true": true, "label": label, "subject": subject, "aus": aus, "va": va,
            "strength": strength * (true > 0), "params": params}


def _labels(n: int, expression, aus, va, subject, domain: str, sequence=None, frame=None) -> dict:
    return {
        "expression": expression.to(torch.int64),
        "aus": aus.to(torch.float32),
        "aus_mask": torch.ones(n, len(AUS), dtype=torch.bool),
        "va": va.to(torch.float32),
        "subject": subject.to(torch.int64),
        "domain": torch.full((n,), DOMAINS.index(domain), dtype=torch.int64),
        "sequence": sequence if sequence is not None else torch.full((n,), -1, dtype=torch.int64),
        "frame": frame if frame is not None else torch.zeros(n, dtype=torch.int64),
    }


def generate(
    n: int,
    *,
    seed: int = 0,
    domain: str = "lab",
    image_size: int = 64,
    n_subjects: int = 40,
    subject_offset: int = 0,
    class_priors: str | Sequence[float] = "uniform",
    label_noise: float = 0.0,
    with_contempt: bool = False,
    channels: int | None = None,
    device: str | torch.device = "cpu",
    wild_severity: float = 1.0,
) -> FaceArrays:
    """``n`` still images with labels in the shared schema.

    ``domain``: ``"lab"`` (grayscale by default, frontal, even light, posed high intensity) or
    ``"wild"`` (RGB by default; pose, scale, rotation, backgrounds, lighting gradients,
    occluders, sensor noise, lower intensity, a different identity distribution).
    ``class_priors``: ``"uniform"``, ``"ferplus"``, ``"rafdb"`` or a list of 7 (8 with contempt)
    weights. ``label_noise``: probability that the annotator label is a confusable class.
    ``channels``: 1 or 3 (default: 1 for lab, 3 for wild). Images are rendered on ``device``.
    ``wild_severity`` in [0, 1] scales the wild domain's pose, light, occluders and noise (1 = full;
    0.5 = a milder wild domain that small networks learn in a few hundred steps); lab ignores it.
    """
    _check_n(n)
    wild_severity = _check_severity(wild_severity)
    channels = _check_common(domain, image_size, n_subjects, subject_offset, channels)
    if isinstance(label_noise, bool) or not isinstance(label_noise, (int, float)) or not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be a probability in [0, 1], got {label_noise!r}")
    s = sample_params(n, seed=seed, domain=domain, n_subjects=n_subjects, subject_offset=subject_offset,
                      class_priors=class_priors, label_noise=float(label_noise), with_contempt=with_contempt,
                      wild_severity=wild_severity)
    device = torch.device(device)
    images = _render_chunked(s["params"], image_size, channels, domain == "wild", device)
    labels = {k: v.to(device) for k, v in _labels(n, s["label"], s["aus"], s["va"], s["subject"], domain).items()}
    info = {
        "generator": "synthfacs", "seed": seed, "domain": domain, "image_size": image_size,
        "channels": channels, "n_subjects": n_subjects, "subject_offset": subject_offset,
        "class_priors": class_priors if isinstance(class_priors, str) else list(class_priors),
        "label_noise": float(label_noise), "with_contempt": with_contempt, "wild_severity": wild_severity,
        "true_expression": s["true"].to(device), "intensity": s["strength"].float().to(device),
    }
    return FaceArrays(images, labels, f"synthfacs-{domain}", _names(with_contempt), info)


def _curve(frames: int, r: _Rand) -> torch.Tensor:
    """Onset -> apex -> offset intensity (n_seq, frames) in [0, 1]."""
    t = torch.linspace(0, 1, frames, dtype=torch.float64)[None, :]
    on = r.range("onset_end", 0.3, 0.45)[:, None]
    off = r.range("offset_start", 0.55, 0.75)[:, None]

    def smooth(x):
        x = x.clamp(0, 1)
        return x * x * (3 - 2 * x)

    return smooth(t / on) * (1 - smooth((t - off) / (1 - off)) * r.range("release", 0.8, 1.0)[:, None])


def generate_sequences(
    n_sequences: int,
    frames: int = 12,
    *,
    seed: int = 0,
    domain: str = "lab",
    image_size: int = 64,
    n_subjects: int = 40,
    subject_offset: int = 0,
    class_priors: str | Sequence[float] = "uniform",
    with_contempt: bool = False,
    device: str | torch.device = "cpu",
    channels: int | None = None,
    wild_severity: float = 1.0,
) -> FaceArrays:
    """``n_sequences`` clips of ``frames`` frames each (rows ordered sequence-major).

    Each clip is one subject posing one expression: onset -> apex -> offset. ``aus`` and ``va``
    follow the intensity curve (``info["curve"]``); ``expression`` is the clip's label on every
    frame (as CK+ / MMI label whole sequences); ``sequence`` = clip id, ``frame`` = index.
    ``wild_severity`` as in :func:`generate` (the head motion inside a clip scales with it).
    """
    _check_n(n_sequences, "n_sequences")
    wild_severity = _check_severity(wild_severity)
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
        raise ValueError(f"frames must be an int >= 2, got {frames!r}")
    channels = _check_common(domain, image_size, n_subjects, subject_offset, channels)
    wild = domain == "wild"
    sid = torch.arange(n_sequences, dtype=torch.int64)
    r = _Rand(_key(seed, "sequence", domain), sid)
    true, subject = _draw_class_and_subject(r, class_prior(class_priors, with_contempt), subject_offset, n_subjects)
    ident = identity_params(subject, domain)
    strength = _strength(r, wild, ident["expressivity"])
    apex, uni = _expression_aus(r, true, strength, wild)
    rest, _ = _expression_aus(r, torch.zeros_like(true), strength, wild)   # the clip's resting face
    curve = _curve(frames, r)                                              # (S, F)
    nuis = _nuisance(r, wild, wild_severity)
    rep = lambda x: x.repeat_interleave(frames, 0)  # noqa: E731
    c = curve.reshape(-1, 1)
    aus = rep(rest) + (rep(apex) - rep(rest)) * c
    fidx = torch.arange(n_sequences * frames, dtype=torch.int64)
    rf = _Rand(_key(seed, "sequence-frame", domain), fidx)
    anchors = torch.tensor([VA_ANCHORS[e] for e in EXPRESSIONS], dtype=torch.float64)
    va = (anchors[rep(true)] * (rep(strength * (true > 0))[:, None] * c)
          + 0.03 * torch.stack([rf.normal("va_v"), rf.normal("va_a")], 1)).clamp(-1, 1)
    ident_f = {k: rep(v) for k, v in ident.items()}
    nuis_f = {k: rep(v) for k, v in nuis.items()}
    if wild:  # slow head motion inside the clip
        tt = torch.linspace(0, 1, frames, dtype=torch.float64).repeat(n_sequences)
        tt = tt * wild_severity
        nuis_f["rot"] = nuis_f["rot"] + rep(r.range("drot", -0.1, 0.1)) * tt
        nuis_f["tx"] = nuis_f["tx"] + rep(r.range("dtx", -0.04, 0.04)) * tt
        nuis_f["yaw"] = nuis_f["yaw"] + rep(r.range("dyaw", -0.2, 0.2)) * tt
    nuis_f["noise_key"] = rf.choice("noise_key", 16).to(torch.float64)
    params = _render_params(ident_f, aus, rep(uni), nuis_f)
    device = torch.device(device)
    n = n_sequences * frames
    images = _render_chunked(params, image_size, channels, wild, device)
    labels = _labels(n, rep(true), aus, va, rep(subject), domain, sequence=rep(sid),
                     frame=torch.arange(frames, dtype=torch.int64).repeat(n_sequences))
    info = {"generator": "synthfacs", "seed": seed, "domain": domain, "image_size": image_size,
            "channels": channels, "frames": frames, "wild_severity": wild_severity, "curve": curve.float().reshape(-1).to(device),
            "true_expression": rep(true).to(device)}
    return FaceArrays(images, {k: v.to(device) for k, v in labels.items()}, f"synthfacs-{domain}-sequences",
                      _names(with_contempt), info)


def generate_trace(
    n_frames: int,
    *,
    seed: int = 0,
    subject: int = 0,
    domain: str = "wild",
    image_size: int = 64,
    channels: int | None = None,
    device: str | torch.device = "cpu",
    wild_severity: float = 1.0,
) -> FaceArrays:
    """One continuous valence/arousal trace of one subject (Aff-Wild-like), ``n_frames`` frames.

    Valence and arousal wander smoothly (a sum of slow sinusoids with random frequencies and
    phases); each frame's face blends the prototypes of the two classes whose circumplex anchors
    are closest in angle, scaled by the radius ``sqrt(v^2 + a^2)``. ``expression`` is the closest
    class when the radius exceeds 0.3, otherwise neutral. ``wild_severity`` as in :func:`generate`.
    """
    _check_n(n_frames, "n_frames")
    wild_severity = _check_severity(wild_severity)
    if isinstance(subject, bool) or not isinstance(subject, int) or subject < 0:
        raise ValueError(f"subject must be an int >= 0, got {subject!r}")
    channels = _check_common(domain, image_size, 1, 0, channels)
    wild = domain == "wild"
    r0 = _Rand(_key(seed, "trace-global", domain, subject), torch.arange(8))
    t = torch.arange(n_frames, dtype=torch.float64)
    va = torch.zeros(n_frames, 2, dtype=torch.float64)
    for d, name in enumerate(("v", "a")):
        period = 40 + 400 * r0.u(f"per{name}")           # frames per cycle, one per component
        phase = 2 * math.pi * r0.u(f"ph{name}")
        amp = r0.range(f"amp{name}", 0.3, 1.0)
        comp = amp[:, None] * torch.sin(2 * math.pi * t[None, :] / period[:, None] + phase[:, None])
        va[:, d] = comp[:4].sum(0) / amp[:4].sum() * 1.1
    rf = _Rand(_key(seed, "trace-frame", domain, subject), t.long())
    va = (va + 0.03 * torch.stack([rf.normal("v"), rf.normal("a")], 1)).clamp(-1, 1)
    names = EXPRESSIONS[1:7]
    anchors = torch.tensor([VA_ANCHORS[e] for e in names], dtype=torch.float64)
    an = anchors / anchors.norm(dim=1, keepdim=True)
    radius = va.norm(dim=1)
    cos = (va / radius.clamp_min(1e-6)[:, None]) @ an.T                    # (F, 6)
    w = torch.softmax(cos * 12, dim=1)
    top2 = w.topk(2, dim=1)
    w2 = torch.zeros_like(w).scatter_(1, top2.indices, top2.values)
    w2 = w2 / w2.sum(1, keepdim=True)
    strength = (radius / anchors.norm(dim=1)[top2.indices[:, 0]]).clamp(0, 1)
    aus = torch.zeros(n_frames, len(AUS), dtype=torch.float64)
    for k, name in enumerate(names):
        for au in PROTOTYPES[name]:
            aus[:, AUS.index(au)] += w2[:, k] * strength
        for au, _, rel in COMPANIONS.get(name, ()):
            aus[:, AUS.index(au)] += w2[:, k] * strength * rel * 0.8
    aus = aus.clamp(0, 1)
    expression = torch.where(radius > 0.3, top2.indices[:, 0] + 1, torch.zeros_like(radius, dtype=torch.int64))
    subj = torch.full((n_frames,), subject, dtype=torch.int64)
    ident = identity_params(subj, domain)
    nuis = _nuisance(_Rand(_key(seed, "trace-nuisance", domain, subject), torch.zeros(n_frames, dtype=torch.int64)), wild,
                     wild_severity)
    if wild:  # slow head motion
        ph = 2 * math.pi * t / 150
        sv = wild_severity
        nuis["rot"] = nuis["rot"] + 0.12 * sv * torch.sin(ph)
        nuis["yaw"] = (nuis["yaw"] * 0.5 + 0.3 * sv * torch.sin(ph * 0.7 + 1)).clamp(-0.6, 0.6)
        nuis["tx"] = nuis["tx"] + 0.04 * sv * torch.cos(ph * 1.3)
    nuis["noise_key"] = rf.choice("noise_key", 16).to(torch.float64)
    params = _render_params(ident, aus, torch.zeros(n_frames, dtype=torch.bool), nuis)
    device = torch.device(device)
    images = _render_chunked(params, image_size, channels, wild, device)
    labels = _labels(n_frames, expression, aus, va, subj, domain, sequence=torch.zeros(n_frames, dtype=torch.int64),
                     frame=t.long())
    info = {"generator": "synthfacs", "seed": seed, "domain": domain, "image_size": image_size, "channels": channels,
            "wild_severity": wild_severity}
    return FaceArrays(images, {k: v.to(device) for k, v in labels.items()}, f"synthfacs-{domain}-trace",
                      EXPRESSIONS[:7], info)


def render_aus(aus: dict[int, float] | Sequence[dict[int, float]], *, subject: int = 0, domain: str = "lab",
               image_size: int = 64, channels: int | None = None, unilateral: bool = False,
               device: str | torch.device = "cpu") -> torch.Tensor:
    """Render one face per AU dict (``{12: 1.0, 6: 0.5}``) for ``subject``: uint8 (N, C, H, W).

    For figures ("each AU alone at three intensities") and for checking the renderer by eye;
    the nuisance of the "wild" domain is switched off (frontal, even light).
    """
    channels = _check_common(domain, image_size, 1, 0, channels)
    items = [aus] if isinstance(aus, dict) else list(aus)
    n = len(items)
    mat = torch.zeros(n, len(AUS), dtype=torch.float64)
    for i, d in enumerate(items):
        for au, val in d.items():
            if au not in AUS:
                raise ValueError(f"AU{au} is not rendered; use one of {AUS}")
            mat[i, AUS.index(au)] = float(val)
    ident = identity_params(torch.full((n,), subject, dtype=torch.int64), domain)
    nuis = _nuisance(_Rand(_key("render_aus"), torch.arange(n)), False)
    nuis["bg1"] = nuis["bg2"] = nuis["occc"] = torch.full((n, 3), 0.63, dtype=torch.float64)
    params = _render_params(ident, mat.clamp(0, 1), torch.full((n,), unilateral), nuis)
    return _render_chunked(params, image_size, channels, False, torch.device(device))


def as_unlabelled(ds: FaceArrays) -> FaceArrays:
    """A copy whose expression labels are -1 and AU masks False (an unlabelled pool)."""
    labels = dict(ds.labels)
    labels["expression"] = torch.full_like(labels["expression"], -1)
    labels["aus_mask"] = torch.zeros_like(labels["aus_mask"])
    return FaceArrays(ds.images, labels, ds.name + "-unlabelled", ds.class_names, dict(ds.info))


def stream(batch_size: int, *, seed: int = 0, start: int = 0, device: str | torch.device = "cpu",
           **kwargs) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches rendered on the fly (an unlabelled pool of any size, or fresh labelled data).

    Batch ``k`` holds stills ``start + k * batch_size ...`` of ``generate(..., seed=seed, **kwargs)``
    (same rows, same labels); images are float in [0, 1] on ``device``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    domain = kwargs.get("domain", "lab")
    image_size = kwargs.get("image_size", 64)
    channels = _check_common(domain, image_size, kwargs.get("n_subjects", 40), kwargs.get("subject_offset", 0),
                             kwargs.get("channels"))
    wild_severity = _check_severity(kwargs.get("wild_severity", 1.0))
    pos = start
    while True:
        s = sample_params(batch_size, seed=seed, start=pos, domain=domain, n_subjects=kwargs.get("n_subjects", 40),
                          subject_offset=kwargs.get("subject_offset", 0),
                          class_priors=kwargs.get("class_priors", "uniform"),
                          label_noise=float(kwargs.get("label_noise", 0.0)),
                          with_contempt=kwargs.get("with_contempt", False),
                          wild_severity=wild_severity)
        img = render(_to_device(s["params"], device), image_size, channels, domain == "wild")
        batch = {"image": img.float().div_(255.0)}
        batch.update({k: v.to(device) for k, v in _labels(batch_size, s["label"], s["aus"], s["va"], s["subject"],
                                                          domain).items()})
        yield batch
        pos += batch_size


def benchmark(n: int = 2048, *, image_size: int = 64, domain: str = "lab", device: str | torch.device = "cpu",
              threads: int | None = 1) -> dict[str, float]:
    """Images per second of :func:`generate` (after a warm-up), wall clock and per CPU-second.

    ``threads``: torch CPU threads during the measurement (1 = the single-core figure; None =
    leave as is). CPU time (``time.process_time``) is robust to other processes sharing the
    machine; wall time is what a user waits. On CUDA the device is synchronised before stopping.
    """
    import time

    device = torch.device(device)
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        generate(64, seed=99, domain=domain, image_size=image_size, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        w0, c0 = time.perf_counter(), time.process_time()
        generate(n, seed=0, domain=domain, image_size=image_size, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    finally:
        torch.set_num_threads(old)
    return {"images_per_s_wall": n / wall, "images_per_s_cpu": n / max(cpu, 1e-9), "n": n,
            "image_size": image_size, "domain": domain, "device": str(device),
            "threads": torch.get_num_threads() if threads is None else threads}
