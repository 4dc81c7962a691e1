"""How hard is SynthFACS next to real FER+? The same small network and label budget on both.

For real FER+ and a grid of SynthFACS settings (domain, ``wild_severity``, ``label_noise``; FER+
class priors, 8 classes with contempt, grey, 32 px, subject-independent test set), this measures

* **pixel nearest neighbours**: the share of test images whose nearest training image (cosine on
  per-image standardised pixels) shows the same expression, beside the rate a random neighbour
  would reach (sum over classes of p_train * p_test) and the majority-class rate;
* **class separation in pixel space**: mean distance between class means divided by the mean
  distance of an image to its own class mean (lower = classes overlap more);
* **a small supervised network**: WRN-10-1 trained by the Margin-Mix chapter's supervised method
  (MixUp + EMA, Adam 0.002, batch 32) on a class-balanced label budget for a fixed number of steps,
  BN recalibrated, evaluated on the test set: accuracy, mean per-class accuracy and the
  row-normalised confusion matrix. The run is the chapter's own
  :func:`fer_nb.papers.margin_mix.run_one` (method ``supervised``, without checkpoints: the run
  hash does not identify the SynthFACS data generated here);

and writes ``results/datasets/synthfacs-vs-ferplus.json``. The setting whose numbers are closest to
FER+'s is the "FER-calibrated" SynthFACS setting the chapters can use where a claim needs FER's
regime (Margin-Mix's low inter-class variance).

    python -m benchmarks.synthfacs_vs_ferplus --data-root DATA_ROOT [--budget 2000 --steps 600]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from fer_nb import config, report
from fer_nb.data import registry, synthfacs
from fer_nb.data.schema import FaceArrays
from fer_nb.io import save_json
from fer_nb.metrics import confusion_matrix
from fer_nb.papers import margin_mix as mm
from fer_nb.progress import bar

OUT = report.RESULTS / "datasets" / "synthfacs-vs-ferplus.json"
#: (name, generate() keyword arguments) of the SynthFACS settings compared with FER+
SETTINGS = [
    ("lab", {"domain": "lab"}),
    ("lab, label noise 0.3", {"domain": "lab", "label_noise": 0.3}),
    ("lab, label noise 0.45", {"domain": "lab", "label_noise": 0.45}),
    ("wild 0.0", {"domain": "wild", "wild_severity": 0.0}),
    ("wild 0.1", {"domain": "wild", "wild_severity": 0.1}),
    ("wild 0.15", {"domain": "wild", "wild_severity": 0.15}),
    ("wild 0.25", {"domain": "wild", "wild_severity": 0.25}),
    ("wild 0.5", {"domain": "wild", "wild_severity": 0.5}),
    ("wild 1.0", {"domain": "wild", "wild_severity": 1.0}),
    ("wild 1.0, label noise 0.2", {"domain": "wild", "wild_severity": 1.0, "label_noise": 0.2}),
]


def standardised_pixels(images: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` uint8 -> ``(N, C*H*W)`` float rows with zero mean and unit norm."""
    x = images.float().flatten(1)
    x = x - x.mean(1, keepdim=True)
    return F.normalize(x, dim=1)


def nn_same_expression(train: FaceArrays, test: FaceArrays, chunk: int = 1024) -> float:
    """Share (%) of test images whose nearest training image (cosine) has the same expression."""
    xt, xq = standardised_pixels(train.images), standardised_pixels(test.images)
    yt, yq = train.labels["expression"], test.labels["expression"]
    nearest = torch.cat([(xq[i:i + chunk] @ xt.T).argmax(1) for i in range(0, len(xq), chunk)])
    return 100 * float((yt[nearest] == yq).double().mean())


def chance_agreement(train: FaceArrays, test: FaceArrays) -> float:
    """Same-expression rate (%) of a neighbour drawn at random: sum over classes of p_train * p_test."""
    C = test.num_classes
    pt = torch.bincount(train.labels["expression"], minlength=C).double() / len(train)
    pq = torch.bincount(test.labels["expression"], minlength=C).double() / len(test)
    return 100 * float((pt * pq).sum())


def class_separation(data: FaceArrays) -> float:
    """Mean distance between class means / mean distance of an image to its class mean (pixels)."""
    x, y = standardised_pixels(data.images), data.labels["expression"]
    classes = torch.unique(y)
    means = torch.stack([x[y == c].mean(0) for c in classes])
    within = torch.cat([(x[y == c] - means[i]).norm(dim=1) for i, c in enumerate(classes)]).mean()
    between = torch.pdist(means).mean()
    return float(between / within)


def train_and_test(cfg, train: FaceArrays, test: FaceArrays, budget: int, seed: int) -> dict:
    """The chapter's supervised method on ``budget`` balanced labels (:func:`fer_nb.papers.margin_mix.run_one`,
    not checkpointed); test accuracy, mean per-class accuracy (%) and the row-normalised confusion matrix."""
    r = mm.run_one(cfg, {"table3": (train, test)}, "table3", "supervised", budget, seed, checkpoint=False)
    pred, yt = torch.from_numpy(r["predictions"]), test.labels["expression"].cpu()
    cm = confusion_matrix(pred, yt, train.num_classes).double()
    return {"acc": r["acc"], "mean_acc": r["mean_acc"],
            "confusion": (cm / cm.sum(1, keepdim=True).clamp_min(1)).round(decimals=3).tolist()}


def measure(name: str, cfg, train: FaceArrays, test: FaceArrays, budget: int, seeds: list[int]) -> dict:
    y = test.labels["expression"]
    runs = [train_and_test(cfg, train, test, budget, s) for s in seeds]
    accs = torch.tensor([r["acc"] for r in runs], dtype=torch.float64)
    return {"setting": name, "n_train": len(train), "n_test": len(test), "classes": list(test.class_names),
            "majority_rate": 100 * float(torch.bincount(y).max()) / len(y),
            "nn_same_expression": nn_same_expression(train, test),
            "nn_chance": chance_agreement(train, test),
            "class_separation": class_separation(train),
            "acc": float(accs.mean()), "acc_std": float(accs.std()) if len(runs) > 1 else 0.0,
            "mean_acc": float(sum(r["mean_acc"] for r in runs) / len(runs)),
            "confusion_seed0": runs[0]["confusion"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", required=True, help="folder holding ferplus/FER2013Train etc.")
    ap.add_argument("--budget", type=int, default=2000, help="class-balanced labelled images")
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps of batch 32")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--synth-train", type=int, default=8000, help="SynthFACS training pool (subjects 0-39)")
    ap.add_argument("--synth-test", type=int, default=2000, help="SynthFACS test set (subjects 40-59)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output", default=str(OUT))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = config.resolve("margin_mix", "small", "ferplus", args.data_root, "cpu", args.seeds, "runs/synthfacs_vs_ferplus",
                         extra_sources=[__file__], steps=args.steps, epochs=1, ema_decay=0.97)
    seeds = list(cfg.seeds)
    t0 = time.perf_counter()
    rows = [measure("FER+ (real)", cfg, registry.load("ferplus", cfg.data_root, split="train", image_size=32),
                    registry.load("ferplus", cfg.data_root, split="test", image_size=32), args.budget, seeds)]
    for name, kw in bar(SETTINGS, desc="SynthFACS settings"):
        common = dict(image_size=32, class_priors="ferplus", channels=1, with_contempt=True, **kw)
        train = synthfacs.generate(args.synth_train, seed=11, n_subjects=40, subject_offset=0, **common)
        test = synthfacs.generate(args.synth_test, seed=12, n_subjects=20, subject_offset=40, **common)
        rows.append(measure(f"SynthFACS {name}", cfg, train, test, args.budget, seeds))
    real = rows[0]

    def gap(r):  # distance to FER+ in accuracy and nearest-neighbour rate (percentage points)
        return abs(r["acc"] - real["acc"]) + abs(r["nn_same_expression"] - real["nn_same_expression"])

    closest = min(rows[1:], key=gap)
    for r in rows:
        print(f"{r['setting']:38s} acc {r['acc']:5.1f} ± {r['acc_std']:.1f} (mean/class {r['mean_acc']:5.1f})  "
              f"pixel-NN same expression {r['nn_same_expression']:5.1f} % (chance {r['nn_chance']:4.1f})  separation {r['class_separation']:.3f}  "
              f"majority {r['majority_rate']:.1f} %")
    print(f"closest to FER+: {closest['setting']}")
    payload = {"provenance": report.provenance(cfg), "config": cfg.as_dict(),
               "protocol": {"budget": args.budget, "steps": args.steps, "batch_size": cfg.hp["batch_size"],
                            "network": f"WRN-{cfg.hp['depth']}-{cfg.hp['widen_factor']}", "image_size": 32,
                            "seeds": seeds, "settings": {n: kw for n, kw in SETTINGS}},
               "rows": rows, "closest_to_ferplus": closest["setting"], "seconds": time.perf_counter() - t0}
    save_json(payload, Path(args.output))
    print(f"wrote {args.output} ({payload['seconds'] / 60:.1f} min)")
    return payload


if __name__ == "__main__":
    main()
