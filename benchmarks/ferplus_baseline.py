"""The Margin-Mix paper's supervised baseline on real FER+: WRN-28-2, every training label.

Table 3's "Supervised WideResNet, All" cell (84.88 %) is the paper's WRN-28-2 trained on all FER+
training labels with MixUp and a weight EMA (the paper's "supervised" protocol). This script
trains that network through the chapter's own code (:func:`fer_nb.papers.margin_mix.run_one`,
method ``supervised``, budget ``all``) for a schedule the reader chooses, checkpointed every epoch
(an interrupted run resumes), and writes the test accuracy with the run's provenance to
``results/margin_mix/baseline-wrn28_2-ferplus.json``, which the Margin-Mix chapter prints beside
the paper's number. The file has no ``tables`` key, so it is never mistaken for a recorded run of
the chapter's tables.

    python -m benchmarks.ferplus_baseline --data-root DATA_ROOT [--steps 150 --epochs 11]

``DATA_ROOT`` holds ``ferplus/FER2013{Train,Valid,Test}/`` (the Datasets chapter gives the layout).
Everything else is the ``small`` preset of ``fer_nb/presets/margin_mix.yaml`` with the paper's
network (depth 28, widen factor 2), batch 64 and the schedule given here.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fer_nb import config, report
from fer_nb.io import save_json
from fer_nb.papers import margin_mix as mm

OUT = report.RESULTS / "margin_mix" / "baseline-wrn28_2-ferplus.json"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", required=True, help="folder holding ferplus/FER2013Train etc.")
    ap.add_argument("--steps", type=int, default=150, help="optimizer steps per epoch")
    ap.add_argument("--epochs", type=int, default=11)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out-dir", default="runs/ferplus_baseline", help="checkpoints (resumable)")
    ap.add_argument("--output", default=str(OUT), help="where the result JSON goes")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config.resolve("margin_mix", "small", "ferplus", args.data_root, args.device, [args.seed], args.out_dir,
                         extra_sources=[__file__], depth=28, widen_factor=2, batch_size=args.batch_size, steps=args.steps,
                         epochs=args.epochs, ema_decay=0.99, budgets=["all"])
    t0 = time.perf_counter()
    data = mm.load_data(cfg)
    train, test = data["table3"]
    run = mm.run_one(cfg, data, "table3", "supervised", "all", args.seed)
    seconds = time.perf_counter() - t0
    summary = {"acc": run["acc"], "mean_acc": run["mean_acc"], "nc": float(run["nc"]),
               "n_train": float(len(train)), "n_test": float(len(test)),
               "steps": float(args.steps * args.epochs), "seconds": seconds,
               "paper_acc_all": 84.88}
    payload = {"provenance": report.provenance(cfg), "config": cfg.as_dict(), "summary": summary,
               "extra": {"pred_hist": run["pred_hist"], "protocol": "Margin-Mix Table 3, Supervised WideResNet, All"}}
    save_json(payload, Path(args.output))
    print(f"WRN-28-2 supervised on FER+ ({len(train)} labels, {args.steps * args.epochs} steps of batch "
          f"{args.batch_size}): test accuracy {run['acc']:.2f} % (mean per class {run['mean_acc']:.2f} %), "
          f"{seconds / 60:.1f} min; paper 84.88 %. Wrote {args.output}")
    return payload


if __name__ == "__main__":
    main()
