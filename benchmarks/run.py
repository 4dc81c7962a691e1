"""``make bench``: throughput of every paper's training step (plain reference vs the fer_nb fast
path, side by side in one run), of the data pipeline, and of each loss vs its loop reference.

Writes ``benchmarks/results/<device>.json`` (device name and torch version inside); the book's
performance page plots every file found there. ``--quick`` (default on CPU) uses small batches
and few iterations so a 2-core CPU finishes in minutes; on a GPU the paper batches are used.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import time
from pathlib import Path

import torch

from benchmarks import loss_loops
from benchmarks.steps import STEPS
from benchmarks.timing import peak_memory_mb, reset_peak, sync, time_call
from fer_nb.device import describe, pick_device
from fer_nb.io import save_json
from fer_nb.report import git_commit

RESULTS = Path(__file__).parent / "results"
#: dense bf16 tensor-core peaks (TFLOP/s) of GPUs the book has been run on, from the vendors' sheets
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "RTX 4090": 165.0}


def _peak(device_name: str) -> float | None:
    for key, val in BF16_PEAK_TFLOPS.items():
        if key in device_name:
            return val
    return None


def _step_flops(build, device, batch, size) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    step, _ = build(device, "plain", batch, size)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def bench_steps(device: torch.device, quick: bool, only: list[str] | None, compile: bool = False) -> list[dict]:
    """Rows of images/s per paper: plain, fast, the chapter's own step and (``compile``, launch-bound steps
    only) the chapter's step with a compiled network; a compiled step that fails is recorded, not fatal."""
    rows = []
    peak = _peak(describe(device))
    for spec in STEPS:
        if only and spec.paper not in only:
            continue
        batch = spec.quick_batch if quick else spec.batch
        row = {"paper": spec.paper, "setting": spec.setting, "batch": batch, "image_size": spec.image_size}
        for mode in ("plain", "fast"):
            torch.manual_seed(0)
            reset_peak(device)
            step, images = spec.build(device, mode, batch, spec.image_size)
            sec = time_call(step, device, warmup=1 if quick else 5, iters=2 if quick else 20, repeats=1 if quick else 3)
            row[f"{mode}_img_s"] = images / sec
            row[f"{mode}_ms_per_step"] = 1e3 * sec
            row[f"{mode}_peak_mem_mb"] = peak_memory_mb(device)
            del step
        row["ratio_fast_over_plain"] = row["fast_img_s"] / row["plain_img_s"]
        if spec.build_chapter is not None:   # the chapter's own step, from fer_nb.papers
            torch.manual_seed(0)
            reset_peak(device)
            step, images = spec.build_chapter(device, batch, spec.image_size)
            sec = time_call(step, device, warmup=1 if quick else 5, iters=2 if quick else 20, repeats=1 if quick else 3)
            row["chapter_img_s"] = images / sec
            row["chapter_ms_per_step"] = 1e3 * sec
            row["ratio_chapter_over_fast"] = row["chapter_img_s"] / row["fast_img_s"]
            del step
        if compile and spec.compilable:
            torch.manual_seed(0)
            reset_peak(device)
            try:
                step, images = spec.build_chapter(device, batch, spec.image_size, compile=True)
                t0 = time.perf_counter()
                step()                                    # compiles (and records the CUDA graphs)
                sync(device)
                row["chapter_compile_s"] = time.perf_counter() - t0
                sec = time_call(step, device, warmup=2 if quick else 10, iters=2 if quick else 20,
                                repeats=1 if quick else 3)
                row["chapter_compiled_img_s"] = images / sec
                row["chapter_compiled_ms_per_step"] = 1e3 * sec
                row["ratio_chapter_compiled_over_fast"] = row["chapter_compiled_img_s"] / row["fast_img_s"]
                del step
            except Exception as exc:  # noqa: BLE001 - recorded in the row; the other benchmarks still run
                first_line = (str(exc).strip().splitlines() or [""])[0][:300]
                row["chapter_compiled_error"] = f"{type(exc).__name__}: {first_line}"
        flops = _step_flops(spec.build, device, batch, spec.image_size)
        row["model_gflop_per_step"] = flops / 1e9
        row["achieved_tflops_fast"] = flops / (row["fast_ms_per_step"] / 1e3) / 1e12
        row["fraction_of_bf16_peak"] = row["achieved_tflops_fast"] / peak if peak else None
        chapter = (f"  chapter {row['chapter_img_s']:9.1f} img/s ({row['ratio_chapter_over_fast']:.2f} of fast)"
                   if "chapter_img_s" in row else "")
        if "chapter_compiled_img_s" in row:
            chapter += (f"  compiled {row['chapter_compiled_img_s']:9.1f} img/s "
                        f"({row['ratio_chapter_compiled_over_fast']:.2f} of fast)")
        elif "chapter_compiled_error" in row:
            chapter += f"  compiled FAILED: {row['chapter_compiled_error']}"
        print(f"  {spec.paper:12s} batch {batch:4d}: plain {row['plain_img_s']:9.1f} img/s  fast "
              f"{row['fast_img_s']:9.1f} img/s  x{row['ratio_fast_over_plain']:.2f}{chapter}", flush=True)
        rows.append(row)
    return rows


#: GPU kernel launches per step of each paper's steps, counted on fake CUDA (tests/kernel_launches.py)
LAUNCHES = Path(__file__).parent / "kernel_launches.json"
#: the timed steps of a row that the launch record also counts
LAUNCH_KINDS = ("fast", "chapter", "chapter_compiled")


def add_time_per_launch(rows: list[dict], launches_file: Path = LAUNCHES) -> None:
    """Add ``<kind>_us_per_launch`` (measured time per step / the step's counted kernel launches) to each row.

    A step bound by launching kernels takes about the same time per launch whichever step it is (tens of
    microseconds: Python, the dispatcher and the driver), a compute-bound one much more; so on a GPU these
    columns say which steps wait on the host and what fewer launches would give. The counts do not depend on
    the batch, and they are the CUDA path's (fused optimizers, bf16 casts): on a CPU, where every step waits on
    its arithmetic, the columns say little. A paper missing from the file gets no column."""
    if not launches_file.exists():
        return
    counts = json.loads(launches_file.read_text())["steps"]
    for row in rows:
        entry = counts.get(row["paper"])
        if entry is None:
            continue
        for kind in LAUNCH_KINDS:
            if f"{kind}_ms_per_step" in row and kind in entry:
                row[f"{kind}_launches"] = entry[kind]["launches"]
                row[f"{kind}_us_per_launch"] = 1e3 * row[f"{kind}_ms_per_step"] / entry[kind]["launches"]


def bench_data(device: torch.device, steps: list[dict]) -> list[dict]:
    """Images/s the data pipeline supplies vs what each step consumes (fast path)."""
    from fer_nb.data import synthfacs
    from fer_nb.data.augment import Augment

    rows = []
    for spec_row in steps:
        size = spec_row["image_size"]
        n = 256 if device.type == "cpu" else 4096
        gen = synthfacs.benchmark(n, image_size=min(size, 224), domain="wild", device=device, threads=None)
        pool = synthfacs.generate(512, seed=3, image_size=size, domain="wild", device=device)
        aug = Augment(pad=max(1, size // 8))

        def cached_batches():
            for b in pool.batches(256, shuffle=True, device=device):
                aug(b["image"])

        sec = time_call(cached_batches, device, warmup=1, iters=2, repeats=1)
        cached = len(pool) / sec
        consumed = spec_row["fast_img_s"]
        rows.append({"paper": spec_row["paper"], "image_size": size,
                     "synthfacs_render_img_s": gen["images_per_s_wall"],
                     "cached_uint8_batches_plus_gpu_augment_img_s": cached,
                     "step_consumes_img_s": consumed,
                     "cache_headroom": cached / consumed, "render_headroom": gen["images_per_s_wall"] / consumed})
        print(f"  {spec_row['paper']:12s} {size}px: render {gen['images_per_s_wall']:9.0f} img/s, cached+augment "
              f"{cached:9.0f} img/s, step consumes {consumed:8.1f} img/s", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action=argparse.BooleanOptionalAction, default=None,
                    help="small batches and few iterations (default: on for CPU)")
    ap.add_argument("--only", nargs="*", help="papers to benchmark (default: all)")
    ap.add_argument("--skip-losses", action="store_true")
    ap.add_argument("--results-dir", type=Path, default=RESULTS, help="where <device>.json goes")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="also time the launch-bound chapter steps with a torch.compile'd network "
                         "(default: on for CUDA; on a CPU it mostly measures compile time)")
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    quick = device.type == "cpu" if args.quick is None else args.quick
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # the plain reference is true fp32
    name = describe(device)
    print(f"[bench] {name}, torch {torch.__version__}, quick={quick}", flush=True)
    print("[bench] training steps (plain fp32 eager reference vs fer_nb fast path)", flush=True)
    compile_steps = device.type == "cuda" if args.compile is None else args.compile
    steps = bench_steps(device, quick, args.only, compile=compile_steps)
    add_time_per_launch(steps)
    for row in steps:
        if "fast_us_per_launch" in row:
            per = "  ".join(f"{k} {row[f'{k}_us_per_launch']:.1f}" for k in LAUNCH_KINDS
                            if f"{k}_us_per_launch" in row)
            print(f"  {row['paper']:12s} time per counted kernel launch (us): {per}", flush=True)
    print("[bench] data pipeline", flush=True)
    data = bench_data(device, steps)
    losses = []
    if not args.skip_losses:
        print("[bench] losses at batch 256 vs per-sample loop references", flush=True)
        losses = loss_loops.run(device, quick=quick)
    sync(device)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()
    out = save_json({
        "device": name, "device_type": device.type, "torch": torch.__version__, "quick": quick, "compile": compile_steps,
        "threads": torch.get_num_threads(), "commit": git_commit(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "bf16_peak_tflops": _peak(name), "steps": steps, "data": data, "losses": losses,
    }, args.results_dir / f"{slug}.json")
    print(f"[bench] wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
