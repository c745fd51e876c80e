"""Dataset throughput (samples/s) of ``NuScenesDataset`` + ``collate`` through a DataLoader.

    .venv/bin/python benchmarks/bench_dataset.py [--repeats 3] [--samples 24]

Generates once (git-ignored) a synthetic ``v1.0-mini`` set with nuScenes-size 1600x900 camera
images into ``benchmarks/_work/synth_dataset_1600`` (3 samples per scene) and prepares it
(infos + depth GT). Then, for the training split with augmentation and depth maps:

* small input: 128x352, 1 frame;
* paper input: 256x704, 3 frames (key_idxes -2, -4);

each with ``num_workers`` 0 and 2 (batch size 2, median of ``--repeats`` passes over
``--samples`` items, workers started before timing). Reference in the same run: decoding the
same JPEGs alone (``load_image``, 6 x F per sample, in-process), the floor of any JPEG pipeline.
Also times the image ida alone: the fast box-resampling path against resize-then-crop.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

WORK = Path(__file__).resolve().parent / "_work"
ROOT = WORK / "synth_dataset_1600"


def _ensure_dataset(root: Path) -> None:
    from labeldistill.data.prepare import prepare
    from labeldistill.synth.generate import SynthConfig, generate

    stamp = root / ".bench_dataset_ready"
    if stamp.exists():
        return
    t0 = time.perf_counter()
    cfg = SynthConfig(seed=0, samples_per_scene=3, image_width=1600, image_height=900)
    generate(root, cfg, workers=2, overwrite=True)
    prepare(root, "v1.0-mini", workers=2)
    stamp.touch()
    print(f"generated and prepared {root} in {time.perf_counter() - t0:.0f} s")


def _throughput(ds, workers: int, n: int, repeats: int) -> float:
    from labeldistill.data.dataset import collate

    subset = torch.utils.data.Subset(ds, list(range(min(n, len(ds)))))
    loader = torch.utils.data.DataLoader(
        subset,
        batch_size=2,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
    )
    for _ in loader:  # warm-up pass (starts the workers, fills the page cache)
        break
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        count = sum(batch.batch_size for batch in loader)
        rates.append(count / (time.perf_counter() - t0))
    return statistics.median(rates)


def _decode_only(ds, n: int, repeats: int) -> float:
    from labeldistill.data.dataset import select_frames
    from labeldistill.data.readers import load_image
    from labeldistill.structures import CAMERAS

    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        count = 0
        for i in range(min(n, len(ds))):
            frames = select_frames(ds.infos, i, tuple(ds.cfg.key_idxes), ds.fallback)
            files = {ds.infos[f]["cam_infos"][c]["filename"] for f in frames for c in CAMERAS}
            for name in files:
                load_image(ds.dataroot / name)
            count += 1
        rates.append(count / (time.perf_counter() - t0))
    return statistics.median(rates)


def _image_op(root: Path, repeats: int) -> tuple[float, float]:
    """ms per image of ``apply_ida_image``: (fast box-resampling path, resize-then-crop)."""
    import numpy as np

    from labeldistill.config import DataConfig
    from labeldistill.data import augment
    from labeldistill.data.readers import load_image

    img = load_image(next((root / "samples" / "CAM_FRONT").glob("*.jpg")))
    rng = np.random.default_rng(0)
    params = [
        augment.sample_ida(rng, DataConfig(), img.width, img.height, train=True) for _ in range(8)
    ]
    out = []
    for fast in (True, False):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for p in params:
                augment.apply_ida_image(img, p, fast=fast)
            times.append((time.perf_counter() - t0) / len(params) * 1e3)
        out.append(statistics.median(times))
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--root", type=Path, default=ROOT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)

    from labeldistill.config import DataConfig
    from labeldistill.data.dataset import NuScenesDataset
    from labeldistill.data.infos import info_path, load_infos

    _ensure_dataset(args.root)
    infos = load_infos(info_path(args.root, "mini_train"))
    base = DataConfig(dataroot=str(args.root), version="v1.0-mini", return_depth=True)
    setups = {
        "small 128x352, F=1": replace(base, image_size=(128, 352), key_idxes=()),
        "paper 256x704, F=3": replace(base, image_size=(256, 704), key_idxes=(-2, -4)),
    }
    print(f"{len(infos)} training samples available; timing {args.samples} per pass\n")
    print("| setup | decode-only ref (samples/s) | workers=0 | workers=2 | w0 / ref | w2 / w0 |")
    print("|---|---|---|---|---|---|")
    for name, cfg in setups.items():
        ds = NuScenesDataset(cfg, infos, args.root, train=True, seed=0)
        ref = _decode_only(ds, args.samples, args.repeats)
        w0 = _throughput(ds, 0, args.samples, args.repeats)
        w2 = _throughput(ds, 2, args.samples, args.repeats)
        print(f"| {name} | {ref:.2f} | {w0:.2f} | {w2:.2f} | {w0 / ref:.2f} | {w2 / w0:.2f} |")
    fast, slow = _image_op(args.root, max(5, args.repeats))
    print(
        f"\napply_ida_image on 1600x900 -> 256x704 (train ida): fast {fast:.1f} ms, "
        f"resize-then-crop {slow:.1f} ms (ratio {slow / fast:.2f})"
    )


if __name__ == "__main__":
    main()
