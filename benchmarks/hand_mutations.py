"""Issue #18's hand mutations, kept as a check: each is a named one-place change of the package
(the reviewer's list: MixMatch without sharpening, Margin-Mix's L_M sign, the angular margin's
``clamp_min`` before ``sqrt``, non-atomic writes, ...). ``main`` applies each to a scratch copy of
the repository, runs the test files that pin it and records whether they fail (killed)::

    git worktree add --detach /tmp/wt-hand HEAD
    python -m benchmarks.hand_mutations /tmp/wt-hand --output benchmarks/results/mutation/hand.json

The copy is restored after each mutation. ``tests/test_benchmark_scripts.py`` checks that every
mutation still applies to the code (its text occurs exactly once), so the list cannot go stale.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SSL = "tests/test_ssl.py tests/test_ssl_pins.py tests/test_ssl_mutation_pins.py"
MM = "tests/test_losses_margin_mix.py tests/test_papers_margin_mix.py tests/test_ssl.py tests/test_losses_robustness.py"
ANG = "tests/test_losses_angular.py tests/test_losses_robustness.py tests/test_grl.py"
IO = "tests/test_io_pins.py tests/test_report_io.py tests/test_reliability.py tests/test_data_streaming.py"
MUTATIONS = [
 ("MixMatch: no sharpening (q = p)", "fer_nb/ssl/mixmatch.py", "        return sharpen(p, self.T)                                                          # Eq. 8", "        return p", SSL),
 ("MixMatch: guessed labels reversed across classes", "fer_nb/ssl/mixmatch.py", "        return sharpen(p, self.T)                                                          # Eq. 8", "        return sharpen(p.flip(1), self.T)", SSL),
 ("MixMatch: unlabelled loss dropped (loss = lx)", "fer_nb/ssl/mixmatch.py", "        loss = lx + w * lu\n", "        loss = lx\n", SSL),
 ("MixMatch: no ramp-up", "fer_nb/ssl/mixmatch.py", "        w = self.lambda_u * linear_rampup(ctx.progress, self.rampup)", "        w = self.lambda_u", SSL),
 ("Margin-Mix: sign of the L_M term flipped", "fer_nb/papers/margin_mix.py", "        loss = ls + self.lambda_M * lm1", "        loss = ls - self.lambda_M * lm1", MM),
 ("Margin-Mix: uniform self-labels", "fer_nb/papers/margin_mix.py", "            return fuzzy_cmeans_labels(d2, self.centroids.seen)", "            return torch.full_like(d2, 1.0 / d2.shape[1])", MM),
 ("Margin-Mix loss: absent classes enter the push term", "fer_nb/losses/margin_mix_loss.py", "        others = ((d * pres).sum(1) - own) / n_other", "        others = (d.sum(1) - own) / n_other", MM),
 ("Margin-Mix loss: soft-target normalisation dropped", "fer_nb/losses/margin_mix_loss.py", "        own = (t * d).sum(1) / tsum.clamp_min(torch.finfo(e.dtype).tiny)", "        own = (t * d).sum(1)", MM),
 ("distances: RBF 2-2exp -> 1-exp", "fer_nb/losses/distances.py", "        return 2.0 - 2.0 * torch.exp(-gamma * d2)", "        return 1.0 - torch.exp(-gamma * d2)", MM),
 ("distances: cosine not normalised", "fer_nb/losses/distances.py", "        a = normalise(a)\n        b = a if same else normalise(b)", "        b = a if same else b", MM),
 ("angular margin: clamp_min(eps) before sqrt removed", "fer_nb/losses/angular_margin.py", "    sin = (1.0 - c * c).clamp_min(eps).sqrt()", "    sin = (1.0 - c * c).sqrt()", ANG),
 ("angular margin: margin == 0 returns unscaled cosines (function)", "fer_nb/losses/angular_margin.py", "    if margin == 0.0:\n        return scale * c", "    if margin == 0.0:\n        return c", ANG),
 ("angular margin: margin == 0 returns unscaled cosines (module)", "fer_nb/losses/angular_margin.py", "        if self.margin == 0.0:\n            return self.scale * cosine", "        if self.margin == 0.0:\n            return cosine", ANG),
 ("angular margin: margin applied to unlabelled -1 rows", "fer_nb/losses/angular_margin.py", "    onehot = F.one_hot(labels.clamp_min(0), c.shape[1]).to(torch.bool) & valid[:, None]", "    onehot = F.one_hot(labels.clamp_min(0), c.shape[1]).to(torch.bool)", ANG),
 ("large margin: centroid rate halved", "fer_nb/losses/centroids.py", "    new = centers - alpha * delta", "    new = centers - 0.5 * alpha * delta", "tests/test_losses_center_island_lm.py tests/test_losses_robustness.py tests/test_papers_large_margin.py"),
 ("CAF critic: bandwidth median -> mean", "fer_nb/losses/caf_critic.py", "        sigma = z.detach().abs().median().clamp_min(1e-3)", "        sigma = z.detach().abs().mean().clamp_min(1e-3)", "tests/test_losses_caf.py tests/test_losses_robustness.py"),
 ("io: non-atomic write (in place)", "fer_nb/io.py", "    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)", "    tmp = path\n    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)", IO),
 ("io: no stale temp-file cleanup", "fer_nb/io.py", "    clean_stale_temp(path)\n    tmp = path.parent", "    tmp = path.parent", IO),
 ("io: failed write leaves its temp file", "fer_nb/io.py", "        if os.path.exists(tmp):\n            os.unlink(tmp)\n        raise", "        raise", IO),
 ("cache: non-atomic write (in place)", "fer_nb/data/cache.py", "        fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)", "        self.tmp = self.path\n        fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)", IO),
 ("cache: no stale temp-file cleanup before a write", "fer_nb/data/cache.py", "        clean_stale_temp(self.path)\n        self.tmp =", "        self.tmp =", IO),
]


def run(worktree: Path) -> list[dict]:
    """Apply, test and restore each mutation of :data:`MUTATIONS` in ``worktree``."""
    rows = []
    for name, rel, old, new, tests in MUTATIONS:
        path = worktree / rel
        src = path.read_text()
        if (n := src.count(old)) != 1:
            raise ValueError(f"{name}: its text occurs {n} times in {rel} (expected once)")
        path.write_text(src.replace(old, new))
        t0 = time.time()
        try:
            done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                   "-m", "not notebook", *tests.split()], cwd=worktree, capture_output=True,
                                  text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        finally:
            path.write_text(src)
        failed = next((ln[len("FAILED "):].split(" - ")[0] for ln in done.stdout.splitlines()
                       if ln.startswith("FAILED ")), None)
        rows.append({"mutation": name, "file": rel, "killed": done.returncode == 1, "by": failed,
                     "seconds": round(time.time() - t0, 1)})
        print(f"{'killed ' if rows[-1]['killed'] else 'ALIVE  '} {name}  {failed or ''}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("worktree", type=Path, help="a scratch copy of the repository (git worktree add --detach ...)")
    ap.add_argument("--output", type=Path, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    t0 = time.time()
    rows = run(args.worktree.resolve())
    print(f"{sum(r['killed'] for r in rows)} of {len(rows)} killed in {time.time() - t0:.0f} s")
    if args.output:
        args.output.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows,
                                           "seconds": round(time.time() - t0)}, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
