"""SynthFACS: determinism, schema, label consistency, every knob, bad input."""
from __future__ import annotations

import pytest
import torch

from fer_nb.data import synthfacs as sf
from fer_nb.data.schema import AUS, EXPRESSIONS, LABEL_DTYPES, FaceArrays, au_index

N = 64


@pytest.fixture(scope="module")
def lab():
    return sf.generate(N, seed=1, image_size=48)


def _same(a: FaceArrays, b: FaceArrays) -> bool:
    return torch.equal(a.images, b.images) and all(torch.equal(a.labels[k], b.labels[k]) for k in a.labels)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_tensors(lab):
    again = sf.generate(N, seed=1, image_size=48)
    assert _same(lab, again)


def test_other_seed_differs(lab):
    other = sf.generate(N, seed=2, image_size=48)
    assert not torch.equal(lab.images, other.images)
    assert not torch.equal(lab.labels["expression"], other.labels["expression"])


@pytest.mark.parametrize("domain", ["lab", "wild"])
def test_prefix_property(domain):
    small = sf.generate(30, seed=5, domain=domain, image_size=40)
    big = sf.generate(300, seed=5, domain=domain, image_size=40)   # > one render chunk
    assert _same(small, big.subset(torch.arange(30)))
    assert torch.equal(small.info["true_expression"], big.info["true_expression"][:30])


def test_deterministic_regardless_of_global_rng():
    torch.manual_seed(0)
    a = sf.generate(8, seed=3, domain="wild", image_size=40)
    torch.manual_seed(123)
    torch.rand(10)
    b = sf.generate(8, seed=3, domain="wild", image_size=40)
    assert _same(a, b)


def test_stream_matches_generate():
    ds = sf.generate(16, seed=4, image_size=40)
    it = sf.stream(8, seed=4, image_size=40)
    b1, b2 = next(it), next(it)
    assert torch.equal((b1["image"] * 255).round().to(torch.uint8), ds.images[:8])
    assert torch.equal(b2["expression"], ds.labels["expression"][8:])


def test_sequences_and_trace_deterministic():
    a = sf.generate_sequences(2, frames=5, seed=1, image_size=40)
    b = sf.generate_sequences(2, frames=5, seed=1, image_size=40)
    assert _same(a, b)
    t1 = sf.generate_trace(10, seed=1, subject=2, image_size=40)
    t2 = sf.generate_trace(10, seed=1, subject=2, image_size=40)
    assert _same(t1, t2)


# ----------------------------------------------------------------------------- schema


def _check_schema(ds: FaceArrays, n: int, channels: int, size: int):
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (n, channels, size, size)
    assert set(ds.labels) == set(LABEL_DTYPES)
    for k, v in ds.labels.items():
        assert v.dtype == LABEL_DTYPES[k], k
        assert v.shape[0] == n
    assert ds.labels["aus"].shape == (n, len(AUS)) and ds.labels["aus_mask"].shape == (n, len(AUS))
    assert ds.labels["va"].shape == (n, 2)
    assert bool(ds.labels["aus_mask"].all())
    assert float(ds.labels["aus"].min()) >= 0 and float(ds.labels["aus"].max()) <= 1
    assert float(ds.labels["va"].abs().max()) <= 1


def test_schema_stills(lab):
    _check_schema(lab, N, 1, 48)
    assert lab.class_names == EXPRESSIONS[:7]
    assert bool((lab.labels["sequence"] == -1).all()) and bool((lab.labels["frame"] == 0).all())
    assert bool((lab.labels["domain"] == 0).all())
    batch = next(lab.batches(16))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (16, 1, 48, 48)


def test_schema_sequences():
    seq = sf.generate_sequences(3, frames=6, seed=0, image_size=40)
    _check_schema(seq, 18, 1, 40)
    assert seq.labels["sequence"].tolist() == [i for i in range(3) for _ in range(6)]
    assert seq.labels["frame"].tolist() == list(range(6)) * 3
    # one subject and one label per clip; AUs rise to the apex and fall again
    for s in range(3):
        rows = seq.labels["sequence"] == s
        assert seq.labels["subject"][rows].unique().numel() == 1
        assert seq.labels["expression"][rows].unique().numel() == 1
    curve = seq.info["curve"].view(3, 6)
    assert bool((curve[:, 0] < 0.05).all()) and bool((curve.max(1).values > 0.95).all())
    assert bool((curve[:, -1] < curve.max(1).values).all())


def test_sequence_labels_follow_curve():
    seq = sf.generate_sequences(6, frames=9, seed=2, image_size=40, class_priors=[0, 0, 0, 0, 1, 0, 0])
    radius = seq.labels["va"].norm(dim=1).view(6, 9)
    assert bool((radius[:, 4] > radius[:, 0] + 0.3).all())     # apex is far stronger than onset
    au12 = seq.labels["aus"][:, au_index(12)].view(6, 9)
    assert bool((au12[:, 4] > au12[:, 0]).all())


def test_schema_trace():
    tr = sf.generate_trace(40, seed=0, subject=7, image_size=40)
    _check_schema(tr, 40, 3, 40)
    assert bool((tr.labels["subject"] == 7).all()) and tr.labels["frame"].tolist() == list(range(40))
    assert bool((tr.labels["domain"] == 1).all())
    steps = (tr.labels["va"][1:] - tr.labels["va"][:-1]).abs().max()
    assert float(steps) < 0.3        # a continuous trace, not independent draws


# ----------------------------------------------------------------------------- label consistency


@pytest.mark.parametrize("name", ["anger", "disgust", "fear", "happiness", "sadness", "surprise"])
def test_prototype_aus_active(name):
    k = EXPRESSIONS.index(name)
    prior = [0.0] * 7
    prior[k] = 1.0
    ds = sf.generate(40, seed=0, image_size=32, class_priors=prior)
    aus = ds.labels["aus"]
    for au in sf.PROTOTYPES[name]:
        assert float(aus[:, au_index(au)].min()) > 0.15, (name, au)
        assert float(aus[:, au_index(au)].mean()) > 0.5, (name, au)
    others = [au_index(a) for a in AUS if a not in sf.PROTOTYPES[name] and a not in
              [c[0] for c in sf.COMPANIONS.get(name, ())]]
    assert float(aus[:, others].mean()) < 0.05


def test_contempt_is_unilateral():
    prior = [0.0] * 7 + [1.0]
    ds = sf.generate(4, seed=0, image_size=64, class_priors=prior, with_contempt=True)
    assert bool((ds.labels["aus"][:, au_index(12)] > 0.15).all()) and bool((ds.labels["aus"][:, au_index(14)] > 0.15).all())
    neutral = sf.render_aus([{}], image_size=64).float()
    one = sf.render_aus([{12: 1.0, 14: 1.0}], image_size=64, unilateral=True).float()
    diff = (one - neutral).abs()[..., 36:56, :]                       # mouth rows
    left, right = diff[..., :30].mean(), diff[..., 34:].mean()
    assert float(right) > 5 * float(left) and float(right) > 1.0      # only the right side moves


@pytest.mark.parametrize("name,quadrant", [("happiness", (1, 1)), ("sadness", (-1, -1)), ("anger", (-1, 1))])
def test_va_quadrant(name, quadrant):
    prior = [0.0] * 7
    prior[EXPRESSIONS.index(name)] = 1.0
    ds = sf.generate(60, seed=0, image_size=32, class_priors=prior)
    va = ds.labels["va"]
    strong = ds.info["intensity"] > 0.7          # high intensity
    assert int(strong.sum()) > 15
    sgn = torch.sign(va[strong])
    assert bool((sgn[:, 0] == quadrant[0]).all()) and bool((sgn[:, 1] == quadrant[1]).all())


def test_neutral_va_near_origin_and_weak_aus():
    prior = [1.0] + [0.0] * 6
    ds = sf.generate(60, seed=0, image_size=32, class_priors=prior)
    assert float(ds.labels["va"].norm(dim=1).mean()) < 0.15
    assert float(ds.labels["aus"].max()) <= 0.31


def test_wild_is_weaker_than_lab():
    lab = sf.generate(200, seed=0, image_size=32)
    wild = sf.generate(200, seed=0, image_size=32, domain="wild")
    emo_l = lab.info["true_expression"] > 0
    emo_w = wild.info["true_expression"] > 0
    assert float(lab.labels["va"][emo_l].norm(dim=1).mean()) > float(wild.labels["va"][emo_w].norm(dim=1).mean()) + 0.1


def test_each_au_changes_the_image():
    base = sf.render_aus({}, image_size=48).float()
    for au in AUS:
        img = sf.render_aus({au: 1.0}, image_size=48).float()
        assert float((img - base).abs().mean()) > 0.2, f"AU{au} changes nothing"


# ----------------------------------------------------------------------------- knobs


def test_knob_domain(lab):
    wild = sf.generate(N, seed=1, image_size=48, domain="wild", channels=1)
    assert bool((wild.labels["domain"] == 1).all())
    # wild images: more varied backgrounds (corners) than the lab's even grey
    corners = lambda d: d.images[:, 0, :4, :4].float().mean((1, 2))  # noqa: E731
    assert float(corners(wild).std()) > 3 * float(corners(lab).std())


def test_knob_image_size_and_channels():
    for size in (32, 48, 224, 256):
        assert sf.generate(2, image_size=size).images.shape[-2:] == (size, size)
    assert sf.generate(2).images.shape[1] == 1
    assert sf.generate(2, domain="wild").images.shape[1] == 3
    rgb = sf.generate(2, channels=3, image_size=32).images
    assert rgb.shape[1] == 3 and not torch.equal(rgb[:, 0], rgb[:, 2])   # skin is coloured
    grey = sf.generate(2, domain="wild", channels=1, image_size=32).images
    assert grey.shape[1] == 1


def test_knob_class_priors():
    n = 2000
    y_u = sf.sample_params(n, seed=0)["true"]
    y_f = sf.sample_params(n, seed=0, class_priors="ferplus")["true"]
    y_r = sf.sample_params(n, seed=0, class_priors="rafdb")["true"]
    freq = lambda y, k=7: torch.bincount(y, minlength=k).double() / len(y)  # noqa: E731
    assert float((freq(y_u) - 1 / 7).abs().max()) < 0.03
    for y, name in ((y_f, "ferplus"), (y_r, "rafdb")):
        assert float((freq(y) - sf.class_prior(name)).abs().max()) < 0.03
    assert int(freq(y_f).argmax()) == EXPRESSIONS.index("neutral")
    assert int(freq(y_r).argmax()) == EXPRESSIONS.index("happiness")
    only_sad = sf.generate(20, image_size=32, class_priors=[0, 0, 0, 0, 0, 1, 0])
    assert bool((only_sad.labels["expression"] == EXPRESSIONS.index("sadness")).all())


def test_knob_label_noise():
    clean = sf.generate(300, seed=0, image_size=32)
    noisy = sf.generate(300, seed=0, image_size=32, label_noise=0.3)
    assert torch.equal(clean.labels["expression"], clean.info["true_expression"])
    assert torch.equal(clean.info["true_expression"], noisy.info["true_expression"])
    assert torch.equal(clean.images, noisy.images)          # noise is in the labels only
    flipped = noisy.labels["expression"] != noisy.info["true_expression"]
    assert 0.2 < float(flipped.double().mean()) < 0.4
    # flips go to a confusable class
    names = EXPRESSIONS[:7]
    for t, y in zip(noisy.info["true_expression"][flipped].tolist(), noisy.labels["expression"][flipped].tolist()):
        assert names[y] in sf.CONFUSABLE[names[t]]
    assert bool((sf.generate(50, image_size=32, label_noise=1.0).labels["expression"]
                 != sf.generate(50, image_size=32).labels["expression"]).all())


def test_knob_subjects():
    a = sf.generate(200, seed=0, image_size=32, n_subjects=5)
    assert set(a.labels["subject"].tolist()) == set(range(5))
    b = sf.generate(200, seed=0, image_size=32, n_subjects=5, subject_offset=100)
    assert set(b.labels["subject"].tolist()) == set(range(100, 105))
    # a subject id is the same person whatever the seed; other ids are other people
    p0 = sf.identity_params(torch.tensor([3, 3, 4]), "lab")
    assert float(p0["face_w"][0]) == float(p0["face_w"][1]) != float(p0["face_w"][2])
    assert float(sf.identity_params(torch.tensor([3]), "wild")["face_w"]) != float(p0["face_w"][0])
    assert not torch.equal(a.images, b.images)


def test_knob_wild_severity():
    full = sf.generate(64, seed=2, domain="wild", image_size=40)
    assert _same(full, sf.generate(64, seed=2, domain="wild", image_size=40, wild_severity=1.0))
    mild = sf.generate(64, seed=2, domain="wild", image_size=40, wild_severity=0.5)
    calm = sf.generate(64, seed=2, domain="wild", image_size=40, wild_severity=0.0)
    # same faces and labels, only the nuisance changes
    assert all(torch.equal(full.labels[k], mild.labels[k]) for k in full.labels)
    assert not torch.equal(full.images, mild.images)
    p = {sv: sf.sample_params(2000, seed=0, domain="wild", wild_severity=sv)["params"] for sv in (1.0, 0.5, 0.0)}
    for key in ("rot", "tx", "ty", "yaw", "light_gx"):
        s1, s5, s0 = (float(p[sv][key].abs().mean()) for sv in (1.0, 0.5, 0.0))
        assert s0 == 0.0 and abs(s5 - 0.5 * s1) < 1e-9 * max(1.0, s1), key
    assert float((p[0.5]["scale"] - 1).abs().mean()) == pytest.approx(0.5 * float((p[1.0]["scale"] - 1).abs().mean()))
    occ = {sv: float(p[sv]["occ"].mean()) for sv in p}
    assert occ[0.0] == 0.0 and 0.1 < occ[0.5] < 0.2 and 0.25 < occ[1.0] < 0.35
    # a frontal, unoccluded face: severity 0 stays closer to the mild images than the full wild ones
    err = lambda a, b: float((a.images.float() - b.images.float()).abs().mean())  # noqa: E731
    assert err(calm, mild) < err(calm, full)
    # sequences, traces and the stream take it too
    seq = sf.generate_sequences(2, frames=3, seed=1, domain="wild", image_size=32, wild_severity=0.3)
    assert seq.info["wild_severity"] == 0.3
    tr = sf.generate_trace(4, seed=1, domain="wild", image_size=32, wild_severity=0.3)
    assert not torch.equal(tr.images, sf.generate_trace(4, seed=1, domain="wild", image_size=32).images)
    batch = next(sf.stream(4, seed=2, domain="wild", image_size=40, wild_severity=0.5))
    assert torch.equal((batch["image"] * 255).round().to(torch.uint8), mild.images[:4])


def test_knob_with_contempt():
    a = sf.generate(400, seed=0, image_size=32)
    b = sf.generate(400, seed=0, image_size=32, with_contempt=True)
    assert a.num_classes == 7 and b.num_classes == 8
    assert int(a.labels["expression"].max()) <= 6
    assert int((b.labels["expression"] == 7).sum()) > 20


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"domain": "studio"}, ValueError, "unknown domain"),
    ({"class_priors": "affectnet"}, ValueError, "unknown class_priors"),
    ({"class_priors": [1, 2, 3]}, ValueError, "needs 7 weights"),
    ({"class_priors": "rafdb", "with_contempt": True}, ValueError, "no contempt"),
    ({"image_size": 31}, ValueError, "image_size"),
    ({"image_size": 257}, ValueError, "image_size"),
    ({"label_noise": -0.1}, ValueError, "label_noise"),
    ({"label_noise": 1.5}, ValueError, "label_noise"),
    ({"channels": 2}, ValueError, "channels"),
    ({"n_subjects": 0}, ValueError, "n_subjects"),
    ({"subject_offset": -1}, ValueError, "subject_offset"),
    ({"domain": "wild", "wild_severity": 1.5}, ValueError, "wild_severity"),
    ({"wild_severity": -0.1}, ValueError, "wild_severity"),
    ({"wild_severity": "mild"}, ValueError, "wild_severity"),
])
def test_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        sf.generate(2, **kwargs)


def test_bad_n():
    with pytest.raises(ValueError, match="n must be"):
        sf.generate(-1)
    with pytest.raises(ValueError, match="frames"):
        sf.generate_sequences(2, frames=1)
    with pytest.raises(ValueError, match="n_sequences"):
        sf.generate_sequences(-2)
    assert len(sf.generate(0)) == 0


def test_as_unlabelled_and_benchmark():
    ds = sf.as_unlabelled(sf.generate(6, image_size=32))
    assert bool((ds.labels["expression"] == -1).all()) and not bool(ds.labels["aus_mask"].any())
    assert ds.counts() == {**{c: 0 for c in ds.class_names}, "unlabelled": 6}
    b = sf.benchmark(32, image_size=32, domain="wild")
    assert b["images_per_s_wall"] > 0 and b["images_per_s_cpu"] > 0 and b["threads"] == 1


def test_render_aus_rejects_unknown_au():
    with pytest.raises(ValueError, match="AU3"):
        sf.render_aus({3: 1.0})
