"""Command line: ``labeldistill <command> ...``. Argument parsing only; work happens below.

Every user error (:class:`labeldistill.errors.UserError`) ends with one line
``error: <message>`` on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from labeldistill.errors import UserError, one_line


def _out_dir(path: str, flag: str = "--out") -> str:
    from labeldistill.io import check_output_dir

    check_output_dir(path, flag)
    return path


def _out_file(path: str, flag: str = "--out") -> str:
    from labeldistill.io import check_output_file

    check_output_file(path, flag)
    return path


Handler = Callable[[argparse.Namespace], int | None]


def _size(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H)."""
    try:
        w, h = text.lower().split("x")
        return int(w), int(h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH (e.g. 704x396), got '{text}'") from None


# ---------------------------------------------------------------------------------------------
# data: synth, prepare
# ---------------------------------------------------------------------------------------------


def _add_synth(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("synth", help="write a synthetic nuScenes-format v1.0-mini dataset")
    p.add_argument("--out", required=True, help="dataset root to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples-per-scene", type=int, default=10, help="key samples per scene")
    p.add_argument("--image-size", type=_size, default=(704, 396), help="camera image WxH")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    p.add_argument(
        "--version",
        default="v1.0-mini",
        choices=("v1.0-mini", "v1.0-trainval"),
        help="v1.0-mini: the 10 mini scenes; v1.0-trainval: --scenes of the official lists",
    )
    p.add_argument(
        "--scenes",
        type=_size,
        default=(32, 8),
        help="TRAINxVAL scenes of a v1.0-trainval set (default 32x8)",
    )
    p.add_argument(
        "--segmentation",
        action="store_true",
        help="also write per-pixel class maps of the camera images (stage-0 pretraining)",
    )

    def run(args: argparse.Namespace) -> int:
        from labeldistill.synth.generate import SynthConfig, generate

        cfg = SynthConfig(
            seed=args.seed,
            samples_per_scene=args.samples_per_scene,
            image_width=args.image_size[0],
            image_height=args.image_size[1],
            segmentation=args.segmentation,
            version=args.version,
            train_scenes=args.scenes[0],
            val_scenes=args.scenes[1],
        )
        generate(args.out, cfg, workers=args.workers, overwrite=args.overwrite)
        return 0

    return run


def _add_prepare(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("prepare", help="write info files and LiDAR depth GT for every split")
    p.add_argument("--dataroot", required=True)
    p.add_argument("--version", default="v1.0-trainval")
    p.add_argument("--out", default=None, help="where to write info files (default: dataroot)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--no-depth", action="store_true", help="skip the depth ground truth")
    p.add_argument(
        "--depth-out",
        default=None,
        help="where to write depth GT (default: DATAROOT/depth_gt; train with "
        "--set data.depth_gt_dir=DIR)",
    )

    def run(args: argparse.Namespace) -> int:
        from labeldistill.data.prepare import prepare

        if args.out is not None:
            _out_dir(args.out)
        prepare(
            args.dataroot,
            args.version,
            out_dir=args.out,
            workers=args.workers,
            depth=not args.no_depth,
            depth_out=args.depth_out,
        )
        return 0

    return run


# ---------------------------------------------------------------------------------------------
# evaluation, visualisation
# ---------------------------------------------------------------------------------------------


def _add_eval_json(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("eval-json", help="official nuScenes metrics of a result JSON")
    p.add_argument("--dataroot", required=True)
    p.add_argument("--version", default="v1.0-trainval")
    p.add_argument("--split", default="val")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--results", help="nuScenes detection result JSON")
    what.add_argument(
        "--gt-as-results",
        action="store_true",
        help="evaluate the split's ground truth written as predictions (sanity check: mAP ~ 1)",
    )
    p.add_argument("--out", required=True, help="output dir (metrics_summary.json)")

    def run(args: argparse.Namespace) -> int:
        from pathlib import Path

        from labeldistill.evaluation.nuscenes_eval import evaluate_json
        from labeldistill.evaluation.report import format_metrics
        from labeldistill.evaluation.results import gt_as_results, write_results

        _out_dir(args.out)
        results = args.results
        if args.gt_as_results:
            gt = gt_as_results(args.dataroot, args.version, args.split)
            results = write_results(Path(args.out) / "results_gt.json", gt)
        metrics = evaluate_json(args.dataroot, args.version, args.split, results, args.out)
        print(format_metrics(metrics))
        return 0

    return run


def _add_visualize(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser(
        "visualize", help="draw boxes on the six cameras and in BEV (PNG per sample)"
    )
    p.add_argument("--dataroot", required=True)
    p.add_argument("--version", default="v1.0-trainval")
    p.add_argument("--split", default="val")
    p.add_argument("--infos", default=None, help="info file (default: the split's in dataroot)")
    p.add_argument("--results", default=None, help="result JSON with predictions to draw")
    p.add_argument("--score-threshold", type=float, default=0.3)
    p.add_argument("--num", type=int, default=4, help="how many samples")
    p.add_argument("--sample", action="append", default=None, help="sample token (repeatable)")
    p.add_argument(
        "--scene", default=None, help="scene name (or token): write an animated GIF to --out"
    )
    p.add_argument("--out", required=True, help="output directory (with --scene: the .gif)")

    def run(args: argparse.Namespace) -> int:
        if args.scene is not None:
            from labeldistill.viz.scene_video import visualize_scene

            _out_file(args.out)
            visualize_scene(
                dataroot=args.dataroot,
                version=args.version,
                split=args.split,
                scene=args.scene,
                out=args.out,
                infos_path=args.infos,
                results_path=args.results,
                score_threshold=args.score_threshold,
            )
            return 0
        from labeldistill.viz.visualize import visualize

        _out_dir(args.out)
        visualize(
            dataroot=args.dataroot,
            version=args.version,
            split=args.split,
            out_dir=args.out,
            infos_path=args.infos,
            results_path=args.results,
            score_threshold=args.score_threshold,
            num=args.num,
            tokens=args.sample,
        )
        return 0

    return run


# ---------------------------------------------------------------------------------------------
# training, evaluation and prediction of a config
# ---------------------------------------------------------------------------------------------


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="shipped config name or YAML path")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set trainer.devices=8 (repeatable)",
    )


def _add_train(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("train", help="train the stage a config describes")
    _add_config_args(p)
    what = p.add_mutually_exclusive_group()
    what.add_argument("--resume", default=None, help="Lightning .ckpt to resume from ('last' ok)")
    what.add_argument(
        "--overwrite",
        action="store_true",
        help="start again in a run directory that holds checkpoints (they are replaced)",
    )

    def run(args: argparse.Namespace) -> int:
        from labeldistill.config import load_config
        from labeldistill.training.run import train

        cfg = load_config(args.config, args.overrides)
        train(cfg, resume=args.resume, overwrite=args.overwrite)
        return 0

    return run


def _add_pretrain_backbone(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser(
        "pretrain-backbone",
        help="stage 0 (optional): a camera config's ResNet pretrained on per-pixel classes of "
        "the synthetic renders (a set made with `synth --segmentation`)",
    )
    _add_config_args(p)
    p.add_argument("--out", required=True, help="output dir: backbone.safetensors, metrics.json")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=8, help="camera images per step")
    p.add_argument("--lr", type=float, default=2.0e-3)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--fresh", action="store_true", help="retrain over an existing backbone file")

    def run(args: argparse.Namespace) -> int:
        from labeldistill.config import load_config
        from labeldistill.training.backbone_pretrain import PretrainConfig, pretrain_backbone

        cfg = PretrainConfig(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            num_workers=args.workers,
            seed=args.seed,
        )
        result = pretrain_backbone(
            load_config(args.config, args.overrides), args.out, cfg, args.fresh, args.device
        )
        val = result.metrics.get("val")
        if val:
            print(f"val mIoU (objects) {val['mIoU_objects']:.4f} on {val['images']} images")
        print(f"wrote {result.backbone}")
        return 0

    return run


def _add_eval(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("eval", help="evaluate a checkpoint with the official metric")
    _add_config_args(p)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", default=None, help="output dir (default: next to the checkpoint)")

    def run(args: argparse.Namespace) -> int:
        from labeldistill.config import load_config
        from labeldistill.training.run import evaluate

        metrics = evaluate(
            load_config(args.config, args.overrides), ckpt=args.ckpt, out_dir=args.out
        )
        if metrics:  # rank 0 only
            from labeldistill.evaluation.report import format_metrics

            print(format_metrics(metrics))
        return 0

    return run


def _add_predict(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("predict", help="write a nuScenes result JSON for a split")
    _add_config_args(p)
    p.add_argument("--ckpt", default=None)
    p.add_argument(
        "--onnx", default=None, help="run this exported student with onnxruntime instead"
    )
    p.add_argument("--split", default=None, help="split (default: the config's val split)")
    p.add_argument("--out", required=True, help="results JSON to write")

    def run(args: argparse.Namespace) -> int:
        from labeldistill.config import load_config

        if args.onnx is not None and args.ckpt is not None:
            raise UserError(
                "--ckpt is not used with --onnx (the ONNX file holds the weights): pass one of them"
            )
        cfg = load_config(args.config, args.overrides)
        _out_file(args.out)
        if args.onnx is not None:
            from labeldistill.export.onnx import predict_onnx

            predict_onnx(cfg, args.onnx, split=args.split, out=args.out)
            return 0
        from labeldistill.training.run import predict

        predict(cfg, ckpt=args.ckpt, split=args.split, out=args.out)
        return 0

    return run


def _add_pipeline(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser(
        "pipeline",
        help="all LabelDistill stages in order + the baseline, evaluated, one table",
    )
    p.add_argument("--dataroot", default=None, help="dataset root (default: the configs' own)")
    p.add_argument("--out", default="pipeline_out", help="output dir (runs below it)")
    p.add_argument("--budget", default="tiny", help="tiny, bench, bench_scratch, paper")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--variant",
        action="append",
        default=None,
        help="labeldistill (default), lidar_only, label_only, no_partition, lidar_s0_detached, "
        "level0_detached (CPU budgets) (repeatable)",
    )
    p.add_argument("--fresh", action="store_true", help="retrain stages that already finished")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    def run(args: argparse.Namespace) -> int:
        from labeldistill.recipes.pipeline import format_table, run_pipeline

        _out_dir(args.out)
        result = run_pipeline(
            args.dataroot,
            args.out,
            budget=args.budget,
            seed=args.seed,
            variants=tuple(args.variant or ("labeldistill",)),
            fresh=args.fresh,
            extra=args.overrides,
        )
        print(format_table(result.rows))
        return 0

    return run


def _add_demo(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser(
        "demo", help="synthetic set -> every stage -> metrics table and pictures (~10 min CPU)"
    )
    p.add_argument("--out", default="demo_out")
    p.add_argument("--samples-per-scene", type=int, default=10)
    p.add_argument("--budget", default="tiny")
    p.add_argument("--fresh", action="store_true", help="retrain stages that already finished")

    def run(args: argparse.Namespace) -> int:
        from labeldistill.recipes.demo import run_demo
        from labeldistill.recipes.pipeline import format_table

        _out_dir(args.out)
        result = run_demo(args.out, args.samples_per_scene, budget=args.budget, fresh=args.fresh)
        print(f"GT written as predictions (sanity check): mAP {result.gt_metrics['mAP']:.4f}")
        print(format_table(result.pipeline.rows))
        for path in result.pictures:
            print(f"predictions: {path}")
        for path in result.scene_gifs:
            print(f"scene video: {path}")
        return 0

    return run


def _add_convert(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("convert", help="convert checkpoints between the original layout and ours")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--from-original", metavar="FILE", help="original .pth/.ckpt (or mmdet3d CenterPoint)"
    )
    what.add_argument("--to-original", metavar="FILE", help="our .ckpt / .safetensors")
    p.add_argument("--config", required=True, help="config whose stage model the weights fit")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True, help=".safetensors (from original) or .pth (to)")
    p.add_argument(
        "--sparse-layout",
        choices=("auto", "mmcv", "spconv2"),
        default=None,
        help="sparse-conv weight layout of the original file (default: auto in, mmcv out)",
    )
    p.add_argument("--allow-missing", action="store_true", help="write even if the file lacks keys")

    def run(args: argparse.Namespace) -> int:
        from labeldistill.checkpoint.convert import convert_from_original, convert_to_original
        from labeldistill.config import load_config

        cfg = load_config(args.config, args.overrides)
        _out_file(args.out)
        if args.from_original is not None:
            report = convert_from_original(
                cfg,
                args.from_original,
                args.out,
                layout=args.sparse_layout or "auto",
                allow_missing=args.allow_missing,
            )
            print(f"{args.out}: {report.summary()}")
            for key in report.unmapped:
                print(f"  unmapped: {key}")
            for key in report.missing:
                print(f"  missing:  {key}")
        else:
            if args.sparse_layout == "auto":
                raise UserError("--sparse-layout auto only applies to --from-original")
            n = convert_to_original(
                cfg, args.to_original, args.out, layout=args.sparse_layout or "mmcv"
            )
            print(f"{args.out}: {n} tensors in the original layout")
        return 0

    return run


def _add_export_onnx(sub: argparse._SubParsersAction) -> Handler:
    p = sub.add_parser("export-onnx", help="export the camera student's inference graph")
    _add_config_args(p)
    p.add_argument("--ckpt", required=True, help="student or LabelDistill checkpoint")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--opset", type=int, default=17)

    def run(args: argparse.Namespace) -> int:
        from labeldistill.config import load_config
        from labeldistill.export.onnx import export_from_config

        cfg = load_config(args.config, args.overrides)
        _out_file(args.out)
        export_from_config(cfg, args.ckpt, args.out, args.opset)
        return 0

    return run


# ---------------------------------------------------------------------------------------------

_COMMANDS = (
    _add_synth,
    _add_prepare,
    _add_eval_json,
    _add_visualize,
    _add_train,
    _add_pretrain_backbone,
    _add_eval,
    _add_predict,
    _add_convert,
    _add_export_onnx,
    _add_pipeline,
    _add_demo,
)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = argparse.ArgumentParser(
        prog="labeldistill",
        description="LabelDistill in pure PyTorch: data, training, evaluation, deployment.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    handlers: dict[str, Handler] = {}
    for add in _COMMANDS:
        before = set(sub.choices)
        handler = add(sub)
        (name,) = set(sub.choices) - before
        handlers[name] = handler
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(handlers[args.command](args) or 0)
    except UserError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
