"""UDAT / UDAT-AS (fer_nb.papers.udat_as, fer_nb.models.udat): the algorithm with fixed RNG, bf16 steps,
the dataset pairs and their protocols on fixtures written in each dataset's real on-disk format."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from fer_nb import config
from fer_nb.data.schema import EXPRESSIONS, FaceArrays
from fer_nb.device import autocast
from fer_nb.models.udat import DOMAIN_HEADS, UDATNet, udat_losses
from fer_nb.papers import udat_as

C = {name: i for i, name in enumerate(EXPRESSIONS)}
F_PREFIX = ("backbone.", "fc1.", "fc2.")   # G_f
Y_PREFIX = ("fc3.", "fc4.")                # G_y
D_PREFIX = ("domain.",)                    # G_d


def tiny_net(head, lam, dtype=torch.float64, batch_norm=False, seed=0):
    torch.manual_seed(seed)
    return UDATNet(3, 7, width=1 / 16, fc_dim=16, domain_dim=8, domain_head=head, lambda_=lam,
                   batch_norm=batch_norm, pool_size=1, dropout=0.0).to(dtype)


def batch(dtype=torch.float64, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(n, 3, 32, 32, generator=g, dtype=dtype),
            "expression": torch.randint(0, 7, (n,), generator=g),
            "target_image": torch.rand(n, 3, 32, 32, generator=g, dtype=dtype)}


def group(name):
    for prefix, g in ((F_PREFIX, "f"), (Y_PREFIX, "y"), (D_PREFIX, "d")):
        if name.startswith(prefix):
            return g
    raise AssertionError(f"parameter {name} belongs to no group")


# ----------------------------------------------------------------------------- the algorithm
@pytest.mark.parametrize("head", DOMAIN_HEADS)
def test_reversed_gradient_reaches_only_the_feature_extractor(head):
    """Grad of L_d through the reversal layer: G_d gets the ordinary gradient, G_f exactly -lambda times it,
    G_y nothing (Eq. 9-11 / 19-21)."""
    lam = 0.5  # a power of two: the reversed gradient is bit-exact
    net = tiny_net(head, lam)
    b = batch()
    x = torch.cat([b["image"], b["target_image"]])
    dom = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    names, params = zip(*net.named_parameters())
    with_grl = torch.autograd.grad(net.domain_loss(net.features(x), dom), params, allow_unused=True)
    plain = torch.autograd.grad(net.domain(net.features(x), dom), params, allow_unused=True)  # no reversal layer
    seen = {"f": 0, "y": 0, "d": 0}
    for name, a, p in zip(names, with_grl, plain):
        g = group(name)
        seen[g] += 1
        if g == "y":
            assert a is None and p is None, f"{name}: the label head must get no gradient from L_d"
        elif g == "d":
            assert torch.equal(a, p), f"{name}: the domain head must get the ordinary gradient"
        else:
            assert torch.equal(a, -lam * p), f"{name}: G_f must get -lambda times the domain-loss gradient"
            assert p.abs().sum() > 0
    assert min(seen.values()) > 0


@pytest.mark.parametrize("head", DOMAIN_HEADS)
def test_udat_step_is_eq_19_to_21(head):
    """One udat_step with plain SGD equals the three update rules computed by hand."""
    lam, mu = 0.3, 0.1
    net = tiny_net(head, lam, seed=1)
    b = batch(seed=1)
    n = len(b["image"])
    names, params = zip(*net.named_parameters())
    f = net.features(torch.cat([b["image"], b["target_image"]]))
    l_y = torch.nn.functional.cross_entropy(net.classify(f[:n]), b["expression"])
    l_d = net.domain(f, torch.cat([torch.zeros(n), torch.ones(n)]).long())
    g_y = torch.autograd.grad(l_y, params, retain_graph=True, allow_unused=True)
    g_d = torch.autograd.grad(l_d, params, allow_unused=True)
    z = [torch.zeros_like(p) for p in params]
    g_y = [zi if g is None else g for g, zi in zip(g_y, z)]
    g_d = [zi if g is None else g for g, zi in zip(g_d, z)]
    expect = {}
    for name, p, a, d in zip(names, params, g_y, g_d):
        step = {"y": a, "d": d, "f": a - lam * d}[group(name)]  # Eq. 19, 20, 21
        expect[name] = (p - mu * step).detach()
    opt = torch.optim.SGD(net.parameters(), lr=mu)
    logs = udat_as.udat_step(net, opt, b, torch.device("cpu"))
    assert set(logs) >= {"loss", "loss_y", "loss_d"} and not any(v.requires_grad for v in logs.values())
    worst = max((p.detach() - expect[name]).abs().max().item() for name, p in net.named_parameters())
    assert worst < 1e-12


@pytest.mark.parametrize("head", DOMAIN_HEADS)
def test_one_step_under_cpu_bf16_autocast(head, monkeypatch):
    """The training step under bf16 autocast (as on CUDA) for each domain head: finite losses, weights move.
    Fails if a head reads bf16 features with float32 weights (the softmax head's dtype cast)."""
    monkeypatch.setenv("FER_NB_CPU_BF16", "1")
    cpu = torch.device("cpu")
    net = tiny_net(head, 0.1, dtype=torch.float32, batch_norm=True, seed=2)
    b = batch(torch.float32, seed=2)
    with autocast(cpu):
        assert net.features(b["image"]).dtype == torch.bfloat16, "autocast must be on for this test to mean anything"
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    logs = udat_as.udat_step(net, opt, b, cpu)
    for k in ("loss", "loss_y", "loss_d", "acc", "domain_acc"):
        assert torch.isfinite(logs[k]).all(), f"{k} = {logs[k]}"
    assert logs["loss"].dtype == torch.float32
    moved = {g: any(not torch.equal(before[k], v) for k, v in net.state_dict().items()
                    if k.startswith(prefix) and v.is_floating_point())
             for g, prefix in (("f", F_PREFIX), ("y", Y_PREFIX), ("d", D_PREFIX))}
    assert all(moved.values()), moved


def test_udat_losses_without_target_is_plain_cross_entropy():
    net = tiny_net("softmax", 0.5)
    b = batch()
    out = udat_losses(net, b["image"], b["expression"])
    ref = torch.nn.functional.cross_entropy(net(b["image"]), b["expression"])
    assert "loss_d" not in out and torch.allclose(out["loss"], ref, atol=0, rtol=0)


def test_paired_batches_pair_each_source_batch_with_a_target_batch():
    src = FaceArrays(torch.zeros(10, 3, 4, 4, dtype=torch.uint8), {"expression": torch.arange(10) % 7}, "s")
    tgt = FaceArrays(torch.full((3, 3, 4, 4), 255, dtype=torch.uint8), {"expression": torch.full((3,), 6)}, "t")
    batches = list(udat_as.paired_batches(src, tgt, 2, torch.device("cpu"), seed=0, epoch=0))
    assert len(batches) == 5  # the source pool sets the epoch; the 3-image target pool is cycled
    for b in batches:
        assert b["image"].shape == b["target_image"].shape == (2, 3, 4, 4)
        assert (b["image"] == 0).all() and (b["target_image"] == 1).all()
    assert sorted(torch.cat([b["expression"] for b in batches]).tolist()) == sorted((torch.arange(10) % 7).tolist())
    assert all("target_image" not in b for b in udat_as.paired_batches(src, None, 2, torch.device("cpu"), 0, 0))
    with pytest.raises(ValueError, match="fewer than batch_size"):
        list(udat_as.paired_batches(src, tgt, 4, torch.device("cpu"), 0, 0))


# ----------------------------------------------------------------------------- dataset pairs
def test_dataset_names_match_the_preset_and_resolve(tmp_path):
    preset = yaml.safe_load(open(config.PRESET_DIR / "udat_as.yaml"))
    assert preset["datasets"] == udat_as.dataset_names()
    names = udat_as.dataset_names()
    assert "fer2013-rafdb" in names and "rafdb-fer2013" in names and "ferplus-ckplus" in names
    assert "fer2013-ferplus" not in names and len(names) == 1 + 7 * 6 - 2
    cfg = config.resolve("udat_as", "smoke", "ferplus-ckplus", tmp_path, "cpu", 1, tmp_path / "out")
    assert cfg.dataset == "ferplus-ckplus"


@pytest.mark.parametrize("bad, fragment", [
    ("ckplus-ckplus", "same dataset"),
    ("mmi-rafdb", "not labelled with the 7 basic expressions"),
    ("ferplus-afew_va", "not labelled with the 7 basic expressions"),
    ("fer2013-ferplus", "relabels FER2013"),
    ("ferplus-nosuch", "not a registered dataset"),
    ("ferplus>ckplus", "joined by '-'"),
    ("a-b-c", "joined by '-'"),
])
def test_parse_dataset_refuses_pairs_that_make_no_sense(bad, fragment):
    with pytest.raises(ValueError, match=fragment):
        udat_as.parse_dataset(bad)


def test_parse_dataset_pairs():
    assert udat_as.parse_dataset("synthfacs") is None
    assert udat_as.parse_dataset("ferplus-ckplus") == ("ferplus", "ckplus")
    assert udat_as.parse_dataset("rafdb-fer2013") == ("rafdb", "fer2013")


def test_seven_classes_drops_contempt_and_unlabelled():
    y = torch.tensor([C["neutral"], C["contempt"], C["fear"], -1, C["surprise"], C["contempt"]])
    ds = FaceArrays(torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 1, 2, 2).contiguous(),
                    {"expression": y}, "x", EXPRESSIONS)
    out = udat_as.seven_classes(ds)
    assert out.class_names == EXPRESSIONS[:7] and out.num_classes == 7
    assert out.labels["expression"].tolist() == [C["neutral"], C["fear"], C["surprise"]]
    assert out.images[:, 0, 0, 0].tolist() == [0, 2, 4] and out.info["contempt_dropped"] == 2


# ----------------------------------------------------------------------------- fixtures in the real formats
RNG = np.random.default_rng(0)
SEVEN = ("neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise")


def img(path: Path, size=24, mode="L", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size, size) if mode == "L" else (size, size, 3)
    Image.fromarray(RNG.integers(0, 256, shape, dtype=np.uint8), mode).save(path, format=fmt)


def write_fer2013(root: Path, n=(24, 6, 8)):
    root.mkdir(parents=True)
    with open(root / "fer2013.csv", "w") as fh:
        fh.write("emotion,pixels,Usage\n")
        for usage, k in zip(("Training", "PublicTest", "PrivateTest"), n):
            for i in range(k):
                px = " ".join(map(str, RNG.integers(0, 256, 48 * 48)))
                fh.write(f'{i % 7},"{px}",{usage}\n')


def write_ferplus(root: Path, n=(24, 6, 8)):
    """FER2013{Train,Valid,Test}/ with label.csv (10 vote counts); every 8th training image is contempt."""
    for folder, k in zip(("FER2013Train", "FER2013Valid", "FER2013Test"), n):
        rows = []
        for i in range(k):
            votes = [0] * 10
            votes[i % 8] = 10  # FERPLUS_ORDER column i % 8; column 7 = contempt
            name = f"fer{folder[-4:]}{i:05d}.png"
            img(root / folder / name, 48)
            rows.append([name, "(0, 0, 48, 48)", *votes])
        with open(root / folder / "label.csv", "w", newline="") as fh:
            csv.writer(fh).writerows(rows)


def write_rafdb(root: Path, n=(21, 7)):
    lines = []
    for split, k in zip(("train", "test"), n):
        for i in range(k):
            name = f"{split}_{i + 1:05d}.jpg"
            lines.append(f"{name} {i % 7 + 1}\n")
            img(root / "Image" / "aligned" / name.replace(".jpg", "_aligned.jpg"), 32, "RGB")
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("".join(lines))


def write_sfew(root: Path):
    for split, k in (("Train", 3), ("Val", 1)):
        for cls in ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"):
            for i in range(k):
                img(root / split / cls / f"{cls}_{i}.png", 32, "RGB")


def write_affectnet(root: Path):
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    header = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
              "facial_landmarks", "expression", "valence", "arousal"]
    for fname, k in (("training.csv", 24), ("validation.csv", 8)):
        with open(lists / fname, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for i in range(k):
                path = f"{fname[:3]}/{i}.jpg"
                w.writerow([path, 0, 0, 32, 32, "1.0;2.0", i % 8, 0.1, 0.2])  # code 7 = contempt
                img(root / "Manually_Annotated_Images" / path, 32, "RGB")


def write_ckplus(root: Path, n_subjects=7):
    """Original release: each subject has 7 sequences with codes 1..7 (2 = contempt), 5 frames each."""
    for s in range(n_subjects):
        for q in range(7):
            subject, seq = f"S{s + 10:03d}", f"{q + 1:03d}"
            for f in range(1, 6):
                img(root / "cohn-kanade-images" / subject / seq / f"{subject}_{seq}_{f:08d}.png", 24)
            e = root / "Emotion" / subject / seq / f"{subject}_{seq}_00000005_emotion.txt"
            e.parent.mkdir(parents=True, exist_ok=True)
            e.write_text(f"   {q + 1:.7e}\n")


def write_jaffe(root: Path):
    root.mkdir(parents=True)
    for poser in ("KA", "KL", "KM", "KR", "MK", "NA", "NM", "TM", "UY", "YM"):
        for k, expr in enumerate(("AN", "DI", "FE", "HA", "NE", "SA", "SU")):
            img(root / f"{poser}.{expr}1.{k + 1}.tiff", 32, fmt="TIFF")


WRITERS = {"fer2013": write_fer2013, "ferplus": write_ferplus, "rafdb": write_rafdb, "sfew": write_sfew,
           "affectnet": write_affectnet, "ckplus": write_ckplus, "jaffe": write_jaffe}


def test_every_seven_expression_dataset_has_a_fixture():
    assert set(WRITERS) == set(udat_as.SEVEN_EXPRESSION_DATASETS) == set(udat_as.PROTOCOLS)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_real_pools_from_data_root_alone(name, tmp_path):
    WRITERS[name](tmp_path / name)
    pools = udat_as.real_pools(name, tmp_path, 32, 1000, 1000, 1000, cache=False)
    assert set(pools) == {"train", "val", "test"}
    for split, ds in pools.items():
        assert len(ds) > 0, split
        assert ds.images.shape[1:] == (3, 32, 32) and ds.images.dtype == torch.uint8
        assert ds.class_names == EXPRESSIONS[:7]
        y = ds.labels["expression"]
        assert ((y >= 0) & (y < 7)).all(), f"{name}/{split}: contempt or unlabelled images left"
    train_classes = set(pools["train"].labels["expression"].tolist())
    assert train_classes == set(range(7)), f"{name}: training pool lacks classes {set(range(7)) - train_classes}"
    if udat_as.PROTOCOLS[name][1] is None:  # one split: subject-disjoint pools
        subj = {s: set(d.labels["subject"].tolist()) for s, d in pools.items()}
        assert not (subj["train"] & subj["val"] or subj["train"] & subj["test"] or subj["val"] & subj["test"])
    else:  # official test split, a held-out tenth of the training split for validation
        tr, va = pools["train"].images.flatten(1), pools["val"].images.flatten(1)
        assert not (tr[:, None] == va[None]).all(-1).any(), "a validation image is also in the training pool"


def test_contempt_is_dropped_from_ferplus_ckplus_affectnet(tmp_path):
    for name in ("ferplus", "ckplus", "affectnet"):
        WRITERS[name](tmp_path / name)
    ferplus = udat_as.real_pools("ferplus", tmp_path, 32, 1000, 1000, 1000, cache=False)
    assert sum(len(d) for d in ferplus.values()) == 24 + 8 - 3 - 1  # train 24 (3 contempt), test 8 (1 contempt)
    ck = udat_as.real_pools("ckplus", tmp_path, 32, 1000, 1000, 1000, cache=False)
    # 7 subjects x 7 sequences x (3 last frames + the neutral first frame); the 3 contempt frames of each
    # subject's contempt sequence are dropped, its neutral first frame is kept
    assert sum(len(d) for d in ck.values()) == 7 * 7 * 4 - 7 * 3
    aff = udat_as.real_pools("affectnet", tmp_path, 32, 1000, 1000, 1000, cache=False)
    assert sum(len(d) for d in aff.values()) == 21 + 7


def test_a_real_pair_trains_from_data_root_alone(tmp_path):
    """ferplus-ckplus at smoke size: both domains and one UDAT-AS run of each direction, finite accuracies."""
    write_ferplus(tmp_path / "ferplus", n=(40, 6, 16))
    write_ckplus(tmp_path / "ckplus", n_subjects=8)
    cfg = config.resolve("udat_as", "smoke", "ferplus-ckplus", str(tmp_path), "cpu", 1, tmp_path / "out",
                         n_pretrain=16, pretrain_subjects=4, batch_size=8, epochs=1)
    dom = udat_as.load_domains(cfg, cache=False)
    assert dom["names"] == {"A": "FER+", "B": "CK+"}
    assert all(d.num_classes == 7 for pools in dom["data"].values() for d in pools.values())
    for direction in udat_as.DIRECTIONS:
        r = udat_as.run(cfg, dom["data"], "table1", direction, "UDAT-AS with margin", 0.1, 0)
        assert math.isfinite(r["val"]) and math.isfinite(r["test"]) and r["history"].records
        assert "train/loss_d" in r["history"].records[-1], "a UDAT run must train on target batches too"
        assert r["feat_source"].shape[1] == r["feat_target"].shape[1] == cfg.fc_dim


# ----------------------------------------------------------------------------- presets
def test_gpu_preset_resolves_and_one_step_runs_on_cpu(tmp_path):
    """The gpu scale: the paper's VGG16 at 224 px and batch 64; one step of it (on a tiny batch) on the CPU."""
    cfg = config.resolve("udat_as", "gpu", "synthfacs", None, "cpu", 1, tmp_path)
    assert (cfg.image_size, cfg.batch_size, cfg.width, cfg.fc_dim, cfg.pool_size) == (224, 64, 1.0, 4096, 7)
    assert len(cfg.lambdas) >= 2 and len(cfg.lambdas_pretrained) >= 2
    steps = (cfg.n_train // cfg.batch_size) * cfg.epochs
    assert steps <= 400, "the gpu schedule is sized for <= 10 minutes on one H100"
    net = udat_as.make_net(cfg, "angular_margin", cfg.lambdas[0])
    assert sum(p.numel() for p in net.backbone.parameters()) > 14_000_000  # VGG16's 13 convs (14.7M)
    g = torch.Generator().manual_seed(0)
    b = {"image": torch.rand(2, 3, 224, 224, generator=g), "expression": torch.tensor([1, 4]),
         "target_image": torch.rand(2, 3, 224, 224, generator=g)}
    logs = udat_as.udat_step(net, udat_as.sgd(cfg, net), b, cfg.device)
    assert all(torch.isfinite(v) for v in logs.values())


def test_run_tables_chooses_lambda_on_target_validation(tmp_path, monkeypatch):
    """The experiment loop: every lambda of the grid on the first seed, the best on target val kept."""
    cfg = config.resolve("udat_as", "smoke", "synthfacs", None, "cpu", 2, tmp_path,
                         n_train=32, n_val=16, n_test=16, n_subjects=4, batch_size=16, epochs=1)
    data = {k: None for k in "AB"}
    calls = []

    def fake_run(cfg_, data_, table, direction, method, lam, seed, init=None):
        calls.append((table, direction, method, lam, seed))
        val = {0.1: 40.0, 1.0: 55.0}.get(lam, 30.0) if method == "UDAT-AS" else 30.0 + lam
        test = 20.0 + seed + (10 - udat_as.CLAIM.index(method) if direction == "A_to_B" else 0)
        return {"val": val, "test": test, "nc": 0, "lambda": lam, "seconds": 1.0}

    monkeypatch.setattr(udat_as, "run", fake_run)
    results, sweeps, chosen = udat_as.run_tables(cfg, data, {"table1": [0.1, 1.0]}, {"table1": None}, progress=False)
    first = [c for c in calls if c[4] == 0]
    assert len(first) == 2 * (2 + 3 * 2)  # two directions: 2 plain rows + 3 UDAT variants x 2 lambdas
    assert chosen[("table1", "A_to_B", "UDAT-AS")] == 1.0
    assert chosen[("table1", "B_to_A", "UDAT (using softmax loss)")] == 1.0
    assert all(c[3] == chosen[c[:3]] for c in calls if c[4] == 1)  # other seeds: chosen lambda only
    assert all(len(rs) == 2 for rs in results.values())
    tables = udat_as.assemble_tables(results, sweeps, chosen, cfg.seeds)
    assert tables["table1"]["Source only"]["acc_B_to_A"] == 20.5
    assert tables["table1"]["Source only"]["acc_B_to_A_std"] == pytest.approx(math.sqrt(0.5))
    holds, ours, nc_rows, summary = udat_as.ordering(results, "table1", "A_to_B")  # strictly in the claim's order
    assert holds and ours == udat_as.CLAIM and summary["table1_A_to_B_ordering_holds"] == 1.0
    assert summary["table1_A_to_B_UDAT-AS_minus_UDAT_using_softmax_loss"] == 1.0
    holds, ours, nc_rows, summary = udat_as.ordering(results, "table1", "B_to_A")  # all tied: no ordering
    assert not holds and not nc_rows and summary["table1_B_to_A_ordering_holds"] == 0.0
    results[("table1", "A_to_B", "Source only")][1]["nc"] = 1
    holds, ours, nc_rows, _ = udat_as.ordering(results, "table1", "A_to_B")
    assert not holds and nc_rows == ["Source only"]
    assert udat_as.cell(results[("table1", "A_to_B", "Source only")]) == {"value": "nc"}


# ----------------------------------------------------------------------------- device discipline
@pytest.mark.parametrize("method", ["Train on target", "UDAT (using softmax loss)", "UDAT-AS", "UDAT-AS with margin"])
def test_a_run_on_fake_cuda(method, tmp_path, monkeypatch):
    """One run with the data and the net on (fake) CUDA (tests/fake_cuda.py): batches, CPU-seeded shuffles,
    channels_last, autocast, backward and evaluation keep every tensor on the device."""
    from fake_cuda import fake_cuda

    from fer_nb.data import synthfacs

    with fake_cuda():
        cfg = config.resolve("udat_as", "smoke", "synthfacs", None, "cuda", 1, tmp_path,
                             n_train=32, n_val=16, n_test=16, n_subjects=4, batch_size=16, epochs=1)
        data = {k: {s: udat_as.three_channels(synthfacs.generate(n, seed=i, domain=dom, image_size=32,
                                                                 n_subjects=4)).to(cfg.device)
                    for i, (s, n) in enumerate((("train", 32), ("val", 16), ("test", 16)))}
                for k, dom in (("A", "lab"), ("B", "wild"))}
        assert data["A"]["train"].images.device.type == "cuda"
        r = udat_as.run(cfg, data, "table1", "A_to_B", method, 0.1, 0)
    assert math.isfinite(r["test"]) and r["feat_target"].device.type == "cpu"


# ----------------------------------------------------------------------------- timing projection
def _timing_inputs():
    """Hand-built sweeps/results: plain runs take 2, 4 (first seed) and 6, 8 s (second seed); UDAT runs 3, 5
    (first seed, two lambdas) and 10 s (second seed). results[k][0] repeats the first seed's chosen run."""
    s = lambda *xs: [{"seconds": float(x)} for x in xs]
    sweeps = {("table1", "A_to_B", "Source only"): s(2), ("table1", "B_to_A", "Train on target"): s(4),
              ("table1", "A_to_B", "UDAT-AS"): s(3, 5)}
    results = {("table1", "A_to_B", "Source only"): s(2, 6), ("table1", "B_to_A", "Train on target"): s(4, 8),
               ("table1", "A_to_B", "UDAT-AS"): s(5, 10)}
    return sweeps, results


def test_timing_measures_plain_and_udat_runs_without_double_counting():
    """Table II ran: only the measured means (plain 5 s, UDAT 6 s) and the total (38 s); the first seed's
    chosen run, repeated in results, is counted once."""
    from types import SimpleNamespace

    sweeps, results = _timing_inputs()
    cfg = SimpleNamespace(seeds=(0, 1), n_train=64, batch_size=16, epochs=2, n_pretrain=96, pretrain_epochs=3,
                          lambdas=(0.1, 0.5, 1.0))
    out = udat_as.timing(cfg, sweeps, results, table2_run=True)
    assert out == {"mean_seconds_per_plain_run": 5.0, "mean_seconds_per_udat_run": 6.0, "training_seconds": 38.0}


def test_timing_projects_table2_by_hand():
    """Table II skipped: per step 5 s / (64 // 16 * 2) = 0.625 s; pre-training 96 // 16 * 3 = 18 steps = 11.25 s;
    plain rows 2 directions x 2 rows x 2 seeds x 5 s = 40 s; UDAT rows 2 x 3 x (3 lambdas + 1 other seed) x 6 s
    = 144 s (same protocol) or 2 x 3 x 2 seeds x 6 s = 72 s (chosen lambda only)."""
    from types import SimpleNamespace

    sweeps, results = _timing_inputs()
    cfg = SimpleNamespace(seeds=(0, 1), n_train=64, batch_size=16, epochs=2, n_pretrain=96, pretrain_epochs=3,
                          lambdas=(0.1, 0.5, 1.0))
    out = udat_as.timing(cfg, sweeps, results, table2_run=False)
    assert out["table2_projected_minutes_same_protocol"] == pytest.approx((11.25 + 40 + 144) / 60, rel=1e-12)
    assert out["table2_projected_minutes_chosen_lambda_only"] == pytest.approx((11.25 + 40 + 72) / 60, rel=1e-12)
    assert set(out) == {"mean_seconds_per_plain_run", "mean_seconds_per_udat_run", "training_seconds",
                        "table2_projected_minutes_same_protocol", "table2_projected_minutes_chosen_lambda_only"}
    # fewer training images than one batch: no division by zero, a plain run counts as one step (5 s per step)
    tiny = SimpleNamespace(**{**vars(cfg), "n_train": 8})
    out = udat_as.timing(tiny, sweeps, results, table2_run=False)
    assert out["table2_projected_minutes_chosen_lambda_only"] == pytest.approx((5 * 18 + 40 + 72) / 60, rel=1e-12)


# ----------------------------------------------------------------------------- ordering, by hand
def test_ordering_by_hand_with_an_nc_row_and_an_inversion():
    """Three seeds. UDAT-AS (mean 76) beats UDAT-AS with margin (71), and the softmax UDAT row has a
    non-converged seed: ours = converged rows by mean, then the nc row; the claim does not hold. The
    neighbouring differences of the claim: mean and sample sd over the seeds."""
    tests = {"Train on target": [80, 82, 84], "UDAT-AS with margin": [70, 70, 73], "UDAT-AS": [75, 76, 77],
             "UDAT (using softmax loss)": [60, 61, 62], "Source only": [50, 52, 54]}
    results = {("table2", "B_to_A", m): [{"test": float(t), "nc": int(m.startswith("UDAT (") and s == 2)}
                                         for s, t in enumerate(ts)] for m, ts in tests.items()}
    holds, ours, nc_rows, summary = udat_as.ordering(results, "table2", "B_to_A")
    assert not holds and nc_rows == ["UDAT (using softmax loss)"]
    assert ours == ["Train on target", "UDAT-AS", "UDAT-AS with margin", "Source only", "UDAT (using softmax loss)"]
    p = "table2_B_to_A_"
    assert summary == pytest.approx({
        p + "Train_on_target_minus_UDAT-AS_with_margin": 11.0, p + "Train_on_target_minus_UDAT-AS_with_margin_sd": 1.0,
        p + "UDAT-AS_with_margin_minus_UDAT-AS": -5.0, p + "UDAT-AS_with_margin_minus_UDAT-AS_sd": 1.0,
        p + "UDAT-AS_minus_UDAT_using_softmax_loss": 15.0, p + "UDAT-AS_minus_UDAT_using_softmax_loss_sd": 0.0,
        p + "UDAT_using_softmax_loss_minus_Source_only": 9.0, p + "UDAT_using_softmax_loss_minus_Source_only_sd": 1.0,
        p + "ordering_holds": 0.0, p + "nc_rows": 1.0}, abs=1e-12)


# ----------------------------------------------------------------------------- the net, the domains, the pools
def test_make_net_builds_the_presets_network(tmp_path):
    """make_net: the preset's widths, dropout, angular s and m, the domain head asked for, lambda in the
    reversal layer; no domain classifier without a head."""
    cfg = config.resolve("udat_as", "smoke", "synthfacs", None, "cpu", 1, tmp_path, domain_dim=12, dropout=0.25,
                         fc_dim=24, angular_scale=30.0, angular_margin=0.3)
    net = udat_as.make_net(cfg, "angular_margin", 0.7)
    assert net.fc1[0].out_features == 24 and net.fc4.out_features == 7 and net.drop.p == 0.25
    assert net.domain.head == "angular_margin" and net.domain.body[0].out_features == 12
    assert (net.domain.out.scale, net.domain.out.margin) == (30.0, 0.3) and net.lambda_ == 0.7
    plain = udat_as.make_net(cfg)
    assert plain.domain is None and plain.drop.p == 0.25


def test_synthfacs_domains_and_identity_pool_are_the_documented_generations(tmp_path):
    """DATASET=synthfacs: A = lab, B = wild; pools generated with seeds 11/21/31 (+1 for B) and subjects from
    10,000 (A) / 20,000 (B), +1,000 val, +2,000 test; the pre-training pool: lab and wild halves (seeds 41, 42)
    of disjoint subjects from 50,000, labelled by identity (lab identities first, each in subject order)."""
    from fer_nb.data import synthfacs

    cfg = config.resolve("udat_as", "smoke", "synthfacs", None, "cpu", 1, tmp_path, n_train=6, n_val=3, n_test=4,
                         n_subjects=3, n_pretrain=12, pretrain_subjects=4)
    dom = udat_as.load_domains(cfg)
    assert dom["names"] == {"A": "lab", "B": "wild"}
    for k, (key, domain) in enumerate((("A", "lab"), ("B", "wild"))):
        for j, (split, n) in enumerate((("train", 6), ("val", 3), ("test", 4))):
            ref = synthfacs.generate(n, seed=11 + 10 * j + k, domain=domain, image_size=32, n_subjects=3,
                                     subject_offset=10_000 * (k + 1) + 1000 * j, wild_severity=cfg.wild_severity)
            got = dom["data"][key][split]
            assert got.images.shape == (n, 3, 32, 32), (key, split)
            assert torch.equal(got.images, udat_as.three_channels(ref).images), (key, split)
            assert torch.equal(got.labels["subject"], ref.labels["subject"]), (key, split)
    pre = dom["pretrain"]
    halves = [synthfacs.generate(6, seed=41 + k, domain=d, image_size=32, n_subjects=2, subject_offset=50_000 + 2 * k,
                                 wild_severity=cfg.wild_severity) for k, d in enumerate(("lab", "wild"))]
    assert torch.equal(pre.images, torch.cat([udat_as.three_channels(h).images for h in halves]))
    keys = [(k, int(s)) for k, h in enumerate(halves) for s in h.labels["subject"]]
    order = sorted(set(keys))
    assert pre.labels["expression"].tolist() == [order.index(key) for key in keys]
    assert dom["n_ids"] == len(order) and pre.class_names == tuple(str(i) for i in range(len(order)))
    assert pre.name == "identities"


def test_three_channels_keeps_labels_names_and_info():
    grey = FaceArrays(torch.arange(8, dtype=torch.uint8).view(2, 1, 2, 2), {"expression": torch.tensor([1, 2])},
                      "g", EXPRESSIONS[:7], {"contempt_dropped": 3})
    rgb = udat_as.three_channels(grey)
    assert rgb.images.shape == (2, 3, 2, 2) and all(torch.equal(rgb.images[:, c], grey.images[:, 0]) for c in range(3))
    assert (rgb.name, rgb.class_names, rgb.info) == ("g", EXPRESSIONS[:7], {"contempt_dropped": 3})
    assert rgb.labels["expression"].tolist() == [1, 2]


def test_real_pools_split_sizes_and_seed(tmp_path):
    """An official test split is the test pool (RAF-DB: 7 test images); a tenth of the training split (2 of 21),
    drawn with generator seed 7 + seed, is the validation pool and the rest the training pool."""
    from fer_nb.data import registry

    write_rafdb(tmp_path / "rafdb")
    full = udat_as.three_channels(udat_as.seven_classes(
        registry.load("rafdb", tmp_path, split="train", image_size=32, channels=3, cache=False)))
    for seed in (0, 1):
        pools = udat_as.real_pools("rafdb", tmp_path, 32, 1000, 1000, 1000, seed=seed, cache=False)
        assert {k: len(v) for k, v in pools.items()} == {"train": 19, "val": 2, "test": 7}
        val = torch.randperm(21, generator=torch.Generator().manual_seed(7 + seed))[:2]
        assert torch.equal(pools["val"].images, full.images[val]), seed


def test_real_pools_subject_split_seeds(tmp_path):
    """One-split dataset (JAFFE, 10 posers): test subjects drawn with ``seed`` (20 %), validation subjects among
    the rest with ``seed + 1`` (15 %)."""
    from fer_nb.data import registry
    from fer_nb.data.splits import train_val_by_subject

    write_jaffe(tmp_path / "jaffe")
    subjects = registry.load("jaffe", tmp_path, split="all", image_size=32, channels=3, cache=False).labels["subject"]
    for seed in (0, 1):
        pools = udat_as.real_pools("jaffe", tmp_path, 32, 1000, 1000, 1000, seed=seed, cache=False)
        rest, test_idx = train_val_by_subject(subjects, 0.2, seed=seed)
        tr, va = train_val_by_subject(subjects[rest], 0.15, seed=seed + 1)
        got = {k: set(v.labels["subject"].tolist()) for k, v in pools.items()}
        assert got == {"train": set(subjects[rest][tr].tolist()), "val": set(subjects[rest][va].tolist()),
                       "test": set(subjects[test_idx].tolist())}, seed
        assert (len(got["test"]), len(got["val"]), len(got["train"])) == (2, 1, 7)


# ----------------------------------------------------------------------------- one run's wiring
def test_run_trains_the_rows_data_and_reports_target_and_source(tmp_path, monkeypatch):
    """run(): which pool is labelled (target for "Train on target", source otherwise), the target training pool
    as unlabelled data for the UDAT rows only, the checkpoint name and the run hash (table, direction, method,
    lambda, seed; recorded runs are found by it), the preset's epochs; val/test on the target, features of the
    source and target test sets."""
    cfg = config.resolve("udat_as", "smoke", "synthfacs", None, "cpu", 1, tmp_path, epochs=3)
    pool = lambda name: FaceArrays(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), {"expression": torch.zeros(2)}, name)
    data = {k: {s: pool(f"{k}-{s}") for s in ("train", "val", "test")} for k in "AB"}
    trained = []

    def fake_train_run(cfg_, net, labelled, unlabelled, seed, name, run_hash, epochs, progress=False):
        trained.append(dict(net=net, labelled=labelled.name, unlabelled=unlabelled and unlabelled.name, seed=seed,
                            name=name, run_hash=run_hash, epochs=epochs))
        return "history"

    scores = {"A-val": 1.0, "A-test": 2.0, "B-val": 3.0, "B-test": 4.0}
    monkeypatch.setattr(udat_as, "train_run", fake_train_run)
    monkeypatch.setattr(udat_as, "evaluate", lambda net, ds, device: {
        "acc": scores[ds.name], "nc": int(ds.name == "A-test"), "feat": torch.full((1, 2), scores[ds.name])})
    for method, direction, lam, seed in (("Train on target", "A_to_B", 0.0, 0), ("Source only", "B_to_A", 0.0, 1),
                                         ("UDAT-AS with margin", "A_to_B", 0.5, 2), ("UDAT-AS", "B_to_A", 1.0, 0)):
        src, tgt = udat_as.DIRECTIONS[direction]
        spec = udat_as.METHODS[method]
        r = udat_as.run(cfg, data, "table2", direction, method, lam, seed)
        t = trained[-1]
        assert t["labelled"] == f"{tgt if method == 'Train on target' else src}-train", method
        assert t["unlabelled"] == (f"{tgt}-train" if spec["head"] else None), method
        assert t["run_hash"] == cfg.run_hash(table="table2", direction=direction, method=method, lam=lam, seed=seed)
        assert t["name"] == f"table2-{direction}-{spec['head']}-{spec['labelled']}-l{lam}-s{seed}"
        assert (t["seed"], t["epochs"], t["net"].lambda_) == (seed, 3, lam)
        assert (t["net"].domain is None) == (spec["head"] is None)
        assert (r["val"], r["test"], r["nc"], r["lambda"], r["history"]) == (
            scores[f"{tgt}-val"], scores[f"{tgt}-test"], int(tgt == "A"), lam, "history")
        assert float(r["feat_source"][0, 0]) == scores[f"{src}-test"]
        assert float(r["feat_target"][0, 0]) == scores[f"{tgt}-test"]
        assert r["seconds"] >= 0
    assert len({t["run_hash"] for t in trained}) == 4


def test_cell_mean_and_sample_sd_of_the_seeds():
    """A cell: mean and sample sd (ddof 1) of the test accuracy over seeds; sd 0 for one seed; "nc" if any seed is nc."""
    r = lambda *ts: [{"test": t, "nc": 0} for t in ts]
    assert udat_as.cell(r(60.0, 64.0, 62.0)) == {"value": 62.0, "std": 2.0}
    assert udat_as.cell(r(55.5)) == {"value": 55.5, "std": 0.0}
    assert udat_as.cell(r(60.0) + [{"test": 90.0, "nc": 1}]) == {"value": "nc"}
