"""``labeldistill prepare``: info files for every split of a version and LiDAR depth GT for every
key camera image (METHOD.md 3.1, 3.2; the published scripts did only train/val infos and only
val depth, quirk 21).

Order of work, so that a failure leaves nothing half-done:

1. load the tables (:func:`~labeldistill.data.nuscenes_reader.open_nuscenes`) and build the infos
   of every split; a split without samples in this dataroot is an error;
2. per key sample, in a process pool: validate the six key images (decode, size as in the
   tables) and the key LiDAR scan, then write the missing or stale depth files (atomically);
3. only when every sample of every split passed, write the info files (atomically).

A bad file raises :class:`~labeldistill.errors.DataError` naming it (exit code 2 in the CLI).
A rerun skips depth files that are current (:func:`~labeldistill.data.depth_gt.depth_gt_is_current`)
and rewrites the info files.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from labeldistill.data.depth_gt import (
    depth_gt_dir,
    depth_gt_is_current,
    depth_gt_path,
    project_to_cameras,
    write_depth_gt,
)
from labeldistill.data.infos import (
    build_infos,
    info_path,
    save_infos,
)
from labeldistill.data.nuscenes_reader import check_version, open_nuscenes, split_scenes
from labeldistill.data.readers import check_image_fast, load_points
from labeldistill.errors import DataError
from labeldistill.io import check_output_dir, die_with_parent, remove_stale_temporaries
from labeldistill.nuscenes_schema import CAMERA_CHANNELS, LIDAR_CHANNEL

log = logging.getLogger(__name__)

CHUNK = 4  # samples per pool task


@dataclass
class SplitSummary:
    """What ``prepare`` did for one split."""

    split: str
    samples: int
    depth_written: int
    depth_skipped: int
    info_path: Path


@dataclass
class PrepareSummary:
    """What ``prepare`` did: one :class:`SplitSummary` per split of the version."""

    version: str
    dataroot: Path
    splits: list[SplitSummary] = field(default_factory=list)

    def by_split(self, split: str) -> SplitSummary:
        return next(s for s in self.splits if s.split == split)


@dataclass
class _Counts:
    written: int = 0
    skipped: int = 0

    def add(self, other: _Counts) -> None:
        self.written += other.written
        self.skipped += other.skipped


def check_sample_files(info: dict, dataroot: Path) -> None:
    """Validate the six key images (exist, decode, size as the tables say) and the key LiDAR
    scan of one info; DataError naming the first bad file."""
    for cam in CAMERA_CHANNELS:
        cam_info = info["cam_infos"][cam]
        path = dataroot / cam_info["filename"]
        width, height = check_image_fast(path)
        if (width, height) != (cam_info["width"], cam_info["height"]):
            raise DataError(
                f"image {path} is {width}x{height} but the tables say "
                f"{cam_info['width']}x{cam_info['height']}: re-download or regenerate it"
            )


def _process_sample(info: dict, dataroot: Path, depth_dir: Path | None) -> _Counts:
    check_sample_files(info, dataroot)
    lidar_file = dataroot / info["lidar_infos"][LIDAR_CHANNEL]["filename"]
    points = load_points(lidar_file)  # validates even when depth is off or already done
    counts = _Counts()
    if depth_dir is None:
        return counts
    targets = {
        cam: depth_gt_path(dataroot, info["cam_infos"][cam]["filename"], depth_dir)
        for cam in CAMERA_CHANNELS
    }
    todo = [cam for cam in CAMERA_CHANNELS if not depth_gt_is_current(targets[cam], lidar_file)]
    counts.skipped = len(CAMERA_CHANNELS) - len(todo)
    if todo:
        uvd = project_to_cameras(points, info)
        for cam in todo:
            write_depth_gt(targets[cam], uvd[cam])
        counts.written = len(todo)
    return counts


def _process_chunk(infos: list[dict], dataroot: str, depth_dir: str | None) -> _Counts:
    total = _Counts()
    root = Path(dataroot)
    ddir = Path(depth_dir) if depth_dir is not None else None
    for info in infos:
        total.add(_process_sample(info, root, ddir))
    return total


def _run_samples(
    infos: list[dict], dataroot: Path, depth_dir: Path | None, workers: int, desc: str
) -> _Counts:
    """Validate + depth GT of every info, in-process (workers == 1) or in a process pool."""
    total = _Counts()
    depth = str(depth_dir) if depth_dir is not None else None
    chunks = [infos[i : i + CHUNK] for i in range(0, len(infos), CHUNK)]
    with tqdm(total=len(infos), desc=desc, unit="sample", disable=None) as bar:
        if workers <= 1 or len(chunks) <= 1:
            for chunk in chunks:
                total.add(_process_chunk(chunk, str(dataroot), depth))
                bar.update(len(chunk))
            return total
        ctx = multiprocessing.get_context("forkserver")
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=ctx,
            initializer=die_with_parent,
            initargs=(os.getpid(),),
        )
        try:
            pending: dict[Future, int] = {
                pool.submit(_process_chunk, chunk, str(dataroot), depth): len(chunk)
                for chunk in chunks
            }
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for fut in done:
                    n = pending.pop(fut)
                    total.add(fut.result())  # re-raises a worker's DataError here
                    bar.update(n)
        finally:
            # On an error: drop queued chunks, let running ones finish their atomic writes.
            pool.shutdown(wait=True, cancel_futures=True)
    return total


def prepare(
    dataroot: str | Path,
    version: str,
    out_dir: str | Path | None = None,
    workers: int | None = None,
    depth: bool = True,
    depth_out: str | Path | None = None,
) -> PrepareSummary:
    """Write ``nuscenes_infos_<split>.pkl`` for every split of ``version`` into ``out_dir``
    (default: ``dataroot``) and, when ``depth``, ``dataroot/depth_gt/<image>.bin`` for every key
    camera image (``depth_out``: another directory for them, e.g. when the dataroot is
    read-only; point ``data.depth_gt_dir`` at it for training). ``workers``: processes (default:
    all cores; 1 = in-process). Temporary files of a killed earlier run are removed.

    Raises DataError (one line naming the file) for a bad dataroot, version folder, table,
    image or LiDAR scan, or a split without samples; no info file is written then.
    """
    splits = check_version(version)
    if workers is not None and workers < 1:
        raise DataError(f"--workers must be at least 1, got {workers}")
    root = Path(dataroot)
    nusc = open_nuscenes(root, version)
    out = Path(out_dir) if out_dir is not None else root
    check_output_dir(out, "--out" if out_dir is not None else "--dataroot (info files)")
    depth_dir = depth_gt_dir(root, depth_out) if depth else None
    if depth_dir is not None:
        check_output_dir(depth_dir, "--depth-out" if depth_out is not None else "--dataroot")
    for directory in {out, depth_dir or out}:
        removed = remove_stale_temporaries(directory)
        if removed:
            log.info("removed %d temporary files of a killed run in %s", removed, directory)
    workers = workers if workers is not None else (os.cpu_count() or 1)

    split_infos: dict[str, list[dict]] = {}
    for split in splits:
        names = split_scenes(version, split)
        infos = build_infos(nusc, names, progress=True)
        if not infos:
            raise DataError(
                f"{root / version / 'scene.json'} has none of the {len(names)} official {split} "
                f"scenes (e.g. {names[0]}): check --version, or regenerate the dataset with "
                "the official scene names"
            )
        split_infos[split] = infos
    del nusc

    counts: dict[str, _Counts] = {}
    for split, infos in split_infos.items():
        log.debug("%s: %d samples", split, len(infos))
        counts[split] = _run_samples(infos, root, depth_dir, workers, desc=f"prepare {split}")

    summary = PrepareSummary(version=version, dataroot=root)
    for split, infos in split_infos.items():
        meta = {"version": version, "split": split, "dataroot": str(root.resolve())}
        path = save_infos(info_path(out, split), infos, meta)
        c = counts[split]
        summary.splits.append(SplitSummary(split, len(infos), c.written, c.skipped, path))
        log.info(
            "%s: %d samples -> %s; depth GT files: %d written, %d skipped (already done)",
            split,
            len(infos),
            path,
            c.written,
            c.skipped,
        )
    return summary
