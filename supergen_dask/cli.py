"""``supergen``: render, resume and inspect renders from the command line.

supergen render --prompt "a red circle moving right"      # defaults run on a laptop CPU
supergen render --spec nightly.yaml --output-dir renders/x
supergen resume renders/a-red-circle-moving-right-1234abcd
supergen info renders/a-red-circle-moving-right-1234abcd
supergen verify renders/a-red-circle-moving-right-1234abcd
supergen models
supergen batch jobs.yaml                                   # nightly: idempotent, resumable
supergen report renders/a-red-circle-moving-right-1234abcd renders/other
supergen preview renders/a-red-circle-moving-right-1234abcd --step 3

Exit codes: 0 done; 1 the render (or a check of it) failed, finished work is kept and
``supergen resume`` continues it; 2 bad input (spec, file, option, model directory, output
directory, cluster address), nothing written; 130 interrupted. Errors are one line ``error: ...``;
``--verbose`` adds the traceback.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "spec_from_args", "EXIT_FAILED", "EXIT_BAD_INPUT", "EXIT_INTERRUPTED"]

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    from pipelines.base import OFFLOAD_MODES

    g = p.add_argument_group("cluster")
    g.add_argument("--address", help="connect to an existing Dask scheduler (tcp://host:8786)")
    g.add_argument("--workers", type=int, help="local workers (default: one per GPU, else 2 on CPU)")
    g.add_argument(
        "--workers-per-gpu",
        type=int,
        help="worker processes sharing each GPU (default 1; more suits small models such as the toy)",
    )
    g.add_argument(
        "--threads",
        action="store_true",
        help="run local CPU workers as threads of this process instead of processes",
    )
    g.add_argument(
        "--offload",
        choices=OFFLOAD_MODES,
        help="for a model bigger than the card: keep its weights in CPU memory and move them to the "
        "GPU block by block (block) or layer by layer (leaf, least memory) for each forward; slower, "
        "the same output (default: supergen.worker.offload, none)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_verbose(p)


def _add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="show the traceback of an error")


@functools.cache
def _default_spec():
    from supergen_dask.spec import RenderSpec

    return RenderSpec(prompt="x").resolved()


def _d(field: str) -> str:
    """The default model's value of a spec field, for help texts."""
    try:
        return f"toy-wan: {getattr(_default_spec(), field)}"
    except Exception:  # noqa: BLE001 - help must print even if the model cannot load
        return "see `supergen models`"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supergen", description="Ultra-high-resolution video, sketch + shifted tiles on Dask."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from pipelines.schedulers import SCHEDULER_ALIASES
    from supergen_dask.spec import DTYPES, TILE_POLICIES

    r = sub.add_parser("render", help="render a video (resumes if the same spec was started before)")
    r.add_argument("--spec", help="a JSON or YAML spec file; command-line options override its fields")
    r.add_argument("--prompt", help="what to render (required here or in --spec)")
    r.add_argument("--negative-prompt", help='what to steer away from (default: "")')
    r.add_argument(
        "--image",
        help="first frame of an image-to-video model (an image file PIL reads; default: none, text-to-video)",
    )
    r.add_argument(
        "--height", type=int, help=f"output height in pixels (default: 2x the model's native; {_d('height')})"
    )
    r.add_argument(
        "--width", type=int, help=f"output width in pixels (default: 2x the model's native; {_d('width')})"
    )
    r.add_argument("--num-frames", type=int, help=f"frames (default: the model's native; {_d('num_frames')})")
    r.add_argument(
        "--num-inference-steps",
        type=int,
        help=f"denoising steps (default: the model's; {_d('num_inference_steps')})",
    )
    r.add_argument(
        "--refine-steps",
        type=int,
        help=f"SuperGen's k: tiled steps after re-noising the sketch (default: a fraction of the steps; {_d('refine_steps')})",
    )
    r.add_argument(
        "--guidance-scale",
        type=float,
        help=f"classifier-free guidance (default: the model's; {_d('guidance_scale')})",
    )
    r.add_argument(
        "--guidance-scale-2",
        type=float,
        help="second expert's scale (Wan 2.2 A14B; default: --guidance-scale)",
    )
    r.add_argument(
        "--embedded-guidance-scale",
        type=float,
        help="guidance scale embedded into a guidance-distilled denoiser (HunyuanVideo; that pipeline's "
        "guidance_scale; default: the model's, 6.0 for HunyuanVideo; refused for other models)",
    )
    r.add_argument("--seed", type=int, help="noise seed (default: 0)")
    r.add_argument(
        "--model",
        help="model name (see `supergen models`) or a local diffusers directory (default: toy-wan)",
    )
    r.add_argument(
        "--scheduler",
        metavar="{" + ",".join(SCHEDULER_ALIASES) + "}",
        help="scheduler override: unipc, flow-euler or dpm++ (default: the model's own scheduler)",
    )
    r.add_argument(
        "--dtype",
        metavar="{" + ",".join(DTYPES) + "}",
        help="compute dtype: float32, bfloat16 or float16 (default: float32)",
    )
    r.add_argument(
        "--fps", type=int, help=f"frames per second of the video (default: the model's; {_d('fps')})"
    )
    r.add_argument(
        "--tile-policy",
        metavar="{" + ",".join(TILE_POLICIES) + "}",
        help="tile sizes: balanced (fewest tiles of at most native size, evenly sized), native "
        "(model-native tiles, canvas padded), fit (tiles shrunk to the canvas) or whole (one tile) "
        "(default: balanced)",
    )
    r.add_argument("--no-shift", action="store_true", help="keep the tile grid fixed (seams will show)")
    r.add_argument("--shift-divisions", type=int, help="shift stride = tile / divisions (default: 16)")
    r.add_argument("--shift-every", type=int, help="shift every N steps (default: 1)")
    r.add_argument(
        "--shift-order",
        help="order of the grid offsets: walk (default; the published schedule, one stride a step) "
        "or spread (about half a tile a step: fewer seams at the last grid with the cache on, more "
        "flicker; reports/seam-pass.md)",
    )
    r.add_argument(
        "--cache",
        help="region-aware residual cache: off, on (the model's threshold) or a threshold tau, e.g. "
        "0.2; default: the model's (on for the toy, off for checkpoints; `supergen models`)",
    )
    r.add_argument("--lossless", action="store_true", help="lossless RGB H.264 instead of yuv420p")
    r.add_argument("--crf", type=int, help="H.264 quality, 0-51 (default: 18)")
    r.add_argument(
        "--output-dir",
        help="render directory: a path or an fsspec URL such as s3://bucket/renders/x "
        "(default: <store-root>/<prompt>-<spec hash>)",
    )
    r.add_argument(
        "--store-root",
        help="where renders go without --output-dir: a path or an fsspec URL such as s3://bucket/renders "
        "(default: the supergen.store-root setting, renders)",
    )
    r.add_argument("--overwrite", action="store_true", help="replace a different render in --output-dir")
    r.add_argument(
        "--dry-run", action="store_true", help="print the plan and its cost estimate; write and run nothing"
    )
    r.add_argument(
        "--force",
        action="store_true",
        help="render even if the estimate is over a limit (supergen.limits.*)",
    )
    _add_cluster_args(r)

    s = sub.add_parser("resume", help="continue an interrupted render from its done markers")
    s.add_argument("render_dir", help="the render directory: a path or an fsspec URL (s3://...)")
    _add_cluster_args(s)

    i = sub.add_parser("info", help="plan and progress of a render directory")
    i.add_argument("render_dir")
    _add_verbose(i)

    v = sub.add_parser("verify", help="check every finished chunk of a render against its checksum")
    v.add_argument("render_dir")
    v.add_argument(
        "--repair",
        action="store_true",
        help="clear the done markers of damaged work, so that `supergen resume` recomputes it",
    )
    _add_verbose(v)

    e = sub.add_parser(
        "evaluate", help="quality table (seams, duplicates, detail, flicker) over prompts and settings"
    )
    e.add_argument("--prompts", type=int, default=20, help="number of toy-grammar evaluation prompts")
    e.add_argument("--scales", type=float, nargs="+", default=[4.0, 16.0], help="output area / native area")
    e.add_argument(
        "--strengths", type=float, nargs="+", default=[0.6, 0.9], help="re-noise levels t to compare"
    )
    e.add_argument("--anchor", type=float, default=0.5, help="sketch-anchoring strength tried (0: skip)")
    e.add_argument("--configs", nargs="+", help="only these configurations (names as in the report)")
    e.add_argument("--model", default="toy-wan")
    e.add_argument("--num-inference-steps", type=int)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--root", default="renders/evaluate", help="where the evaluation renders go (they resume)")
    e.add_argument("--out", default="reports/quality", help="report path without extension (.json and .md)")
    e.add_argument("--chunk", type=int, default=16, help="renders in flight at a time (default 16)")
    e.add_argument(
        "--keep-latents",
        action="store_true",
        help="keep every step's latents and scheduler state (default: pruned once a render is measured)",
    )
    e.add_argument(
        "--merge",
        nargs="+",
        metavar="REPORT_JSON",
        help="render nothing: merge these evaluate reports (e.g. 4x from one machine, 16x from another) into --out",
    )
    _add_cluster_args(e)

    b = sub.add_parser(
        "batch",
        help="render every entry of a YAML batch file; re-running skips finished renders and resumes the rest",
        description="Exit codes: 0 every render finished (or was already); 1 a render failed after its "
        "retries (run the batch again to resume it); 2 an entry or the file was invalid (valid entries "
        "were still rendered).",
    )
    b.add_argument("batch_file", help="YAML/JSON: `defaults:` (spec fields) and a list `renders:` of entries")
    b.add_argument(
        "--store-root",
        help="where the renders go, a path or an fsspec URL such as s3://bucket/renders "
        "(default: the file's store_root, else supergen.store-root)",
    )
    b.add_argument("--retries", type=int, help="re-runs of a failed render, each resuming it (default: 1)")
    b.add_argument("--parallel", type=int, default=2, help="renders in flight at once (default: 2)")
    b.add_argument("--report", help="report folder (default: <store-root>/<batch file name>-report)")
    b.add_argument("--no-report", action="store_true", help="write no HTML report")
    _add_cluster_args(b)

    rp = sub.add_parser("report", help="an HTML page (and JSON) over render directories")
    rp.add_argument("render_dirs", nargs="+", help="render directories")
    rp.add_argument("--out", default="renders/report", help="report folder (default: renders/report)")
    _add_verbose(rp)

    pv = sub.add_parser("preview", help="decode a stored intermediate step to a picture or a clip")
    pv.add_argument("render_dir")
    pv.add_argument(
        "--step", type=int, required=True, help="the schedule step to decode (see `supergen info`)"
    )
    pv.add_argument("--stage", choices=("refine", "sketch"), default="refine", help="stage (default: refine)")
    pv.add_argument("--frame", type=int, help="one frame as the picture (default: a sheet of 4 frames)")
    pv.add_argument("--out", help="a .png or .mp4 path (default: <render_dir>/preview-<stage>-<step>.png)")
    _add_verbose(pv)

    _add_verbose(
        sub.add_parser("models", help="list the built-in models and the model families with their defaults")
    )
    return parser


def _merged(data: dict[str, Any], name: str, changes: dict[str, Any]) -> None:
    """Apply command-line ``changes`` to the ``name`` settings of a spec file's fields. A value
    that is not a mapping is left for the spec's own validation to name."""
    current = data.get(name)
    if not changes or (current is not None and not isinstance(current, dict)):
        return
    data[name] = {**(current or {}), **changes}


def spec_from_args(args: argparse.Namespace):
    """A ``RenderSpec`` from parsed ``render`` arguments (and an optional spec file)."""
    from supergen_dask.spec import RenderSpec, SpecError, load_spec_file

    data: dict[str, Any] = load_spec_file(args.spec) if args.spec else {}
    for name in (
        "prompt",
        "negative_prompt",
        "image",
        "height",
        "width",
        "num_frames",
        "num_inference_steps",
        "refine_steps",
        "guidance_scale",
        "guidance_scale_2",
        "embedded_guidance_scale",
        "seed",
        "model",
        "scheduler",
        "dtype",
        "fps",
        "tile_policy",
    ):
        value = getattr(args, name)
        if value is not None:
            data[name] = value
    shift: dict[str, Any] = {}
    if args.no_shift:
        shift["enabled"] = False
    if args.shift_divisions is not None:
        shift["divisions"] = args.shift_divisions
    if args.shift_every is not None:
        shift["every"] = args.shift_every
    if args.shift_order is not None:
        shift["order"] = args.shift_order
    _merged(data, "shift", shift)
    if args.cache is not None:
        _merged(data, "cache", _cache_option(args.cache))
    output: dict[str, Any] = {}
    if args.lossless:
        output["codec"] = "lossless"
    if args.crf is not None:
        output["crf"] = args.crf
    _merged(data, "output", output)
    if "prompt" not in data:
        raise SpecError("prompt", "is required (--prompt or a spec file)")
    return RenderSpec.from_dict(data)


def _cache_option(value: str) -> dict[str, Any]:
    """``--cache off|on|<tau>`` as spec fields."""
    from supergen_dask.spec import SpecError

    v = value.strip().lower()
    if v in ("off", "false", "no"):
        return {"enabled": False}
    if v in ("on", "true", "yes"):
        return {"enabled": True}
    try:
        tau = float(v)
    except ValueError:
        raise SpecError("cache", f"--cache takes off, on or a threshold > 0, got {value!r}") from None
    if not tau > 0 or tau != tau or tau == float("inf"):
        raise SpecError("cache", f"--cache threshold must be a finite number > 0, got {value!r}")
    return {"enabled": True, "threshold": tau}


def _cluster_kwargs(args) -> dict[str, Any]:
    return {
        "address": args.address,
        "n_workers": args.workers,
        "processes": False if args.threads else None,
        "workers_per_gpu": args.workers_per_gpu,
    }


def _print_result(result) -> None:
    print(f"video: {result.video_path}")
    print(f"store: {result.store_path}")
    print(f"open:  supergen_dask.open_render({str(result.store_path)!r})")


def _evaluate(args) -> int:
    from pipelines import model_info
    from pipelines.toy import evaluation_prompts
    from supergen_dask.cluster import client_for
    from supergen_dask.evaluate import (
        evaluate,
        markdown_table,
        merge_reports,
        standard_configs,
        summarise,
        write_report,
    )

    if args.merge:
        json_path, md_path = merge_reports(args.merge, args.out)
        print(md_path.read_text())
        print(f"report: {json_path} {md_path}")
        return 0
    steps = args.num_inference_steps or model_info(args.model).default_steps
    configs = standard_configs(steps, tuple(args.strengths), args.anchor)
    if args.configs:
        unknown = set(args.configs) - {c.name for c in configs}
        if unknown:
            raise ValueError(f"unknown configs {sorted(unknown)}; allowed: {[c.name for c in configs]}")
        configs = [c for c in configs if c.name in args.configs]
    prompts = evaluation_prompts(args.prompts, seed=args.seed)
    with client_for(None, **_cluster_kwargs(args)) as client:
        rows = evaluate(
            prompts,
            args.scales,
            configs,
            client,
            args.root,
            model=args.model,
            num_inference_steps=steps,
            seed=args.seed,
            progress=not args.no_progress,
            chunk=args.chunk,
            keep_latents=args.keep_latents,
        )
    settings = {
        "model": args.model,
        "num_inference_steps": steps,
        "seed": args.seed,
        "scales": args.scales,
        "strengths": args.strengths,
        "anchor": args.anchor,
        "configs": [c.name for c in configs],
        "prompts": prompts,
    }
    json_path, md_path = write_report(rows, args.out, settings)
    print(markdown_table(summarise(rows)))
    print(f"report: {json_path} {md_path}")
    return 0


class _QuietShutdown(logging.Filter):
    """Drops the nanny's "still alive after N seconds, killing" warnings of a cluster shutdown."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "still alive after" not in record.getMessage()


def _batch(args) -> int:
    from supergen_dask.batch import (
        batch_exit_code,
        load_batch,
        print_outcome,
        resolve_entries,
        run_batch,
        summary_table,
    )
    from supergen_dask.cluster import client_for

    defaults, entries, options = load_batch(args.batch_file)
    from supergen_dask.config import location

    root = location(args.store_root or options.get("store_root") or config_get("store-root"))
    retries = args.retries if args.retries is not None else options.get("retries", 1)
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    if args.parallel < 1:
        raise ValueError(f"--parallel must be >= 1, got {args.parallel}")
    resolved = resolve_entries(defaults, entries, root, base=Path(args.batch_file).parent)
    total = len(resolved)
    for e in resolved:
        if e.error is not None:
            print(f"error: entry {e.index}: {e.error}", file=sys.stderr, flush=True)
    outcomes = []
    if any(e.error is None for e in resolved):
        with client_for(None, **_cluster_kwargs(args)) as client:
            outcomes = run_batch(
                resolved,
                client,
                retries=retries,
                parallel=args.parallel,
                on_outcome=None if args.no_progress else lambda o: print_outcome(o, total),
            )
    else:
        outcomes = run_batch(resolved, None, retries=retries)
    print(summary_table(outcomes))
    if not args.no_report:
        from supergen_dask.report import write_report

        dirs = [o.entry.render_dir for o in outcomes if o.entry.render_dir is not None]
        dirs = list(dict.fromkeys(dirs))
        out = location(args.report) if args.report else root / f"{Path(args.batch_file).stem}-report"
        if dirs:
            print(f"report: {write_report(dirs, out, title=f'batch {Path(args.batch_file).name}')}")
    return batch_exit_code(outcomes)


def config_get(key: str):
    from supergen_dask import config

    return config.get(key)


def _check_cluster_args(args) -> None:
    """Cluster options that could never start a worker are bad input, refused before any work."""
    for option, value in (("--workers", args.workers), ("--workers-per-gpu", args.workers_per_gpu)):
        if value is not None and value < 1:
            raise ValueError(f"{option} must be >= 1, got {value}")
    if args.address is not None and not args.address.strip():
        raise ValueError("--address must name a scheduler (tcp://host:8786)")


def _worker_settings(args) -> dict[str, Any]:
    """The ``supergen.worker`` settings the command line gives the workers it starts (a local
    cluster's workers take this process's ``dask.config`` when they start), after checking the
    configured ones: a bad value is refused here, before any work, not in a worker's first task."""
    from supergen_dask import worker_models

    worker_models.offload_setting()  # the configured value (YAML, DASK_SUPERGEN__WORKER__OFFLOAD)
    if args.offload is None:
        return {}
    if args.address or config_get("cluster.address"):
        raise ValueError(
            "--offload applies to the workers this command starts; the workers of an existing "
            "cluster (--address) read supergen.worker.offload from their own configuration "
            f"(e.g. DASK_SUPERGEN__WORKER__OFFLOAD={args.offload} where they start)"
        )
    return {"supergen.worker.offload": args.offload}


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def _classify(exc: BaseException, render_dir: Path | None, started: bool) -> tuple[int, str]:
    """Exit code and one-line message for an exception that ended a command."""
    from storage import RenderExistsError
    from supergen_dask.cluster import ClusterError
    from supergen_dask.estimate import LimitError
    from supergen_dask.graph import RenderError
    from supergen_dask.spec import SpecError

    resume = f"; finished work is kept, resume with `supergen resume {render_dir}`" if render_dir else ""
    if isinstance(exc, SpecError):
        return EXIT_BAD_INPUT, f"invalid spec: {exc}"
    if isinstance(exc, RenderError):
        return EXIT_FAILED, f"render failed: {exc}"
    if isinstance(exc, LimitError | ClusterError | RenderExistsError):
        return EXIT_BAD_INPUT, str(exc)
    if not started and isinstance(exc, ValueError | FileNotFoundError | FileExistsError):
        return EXIT_BAD_INPUT, str(exc)
    if isinstance(exc, OSError):
        what = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc)
        if not started:
            return EXIT_BAD_INPUT, what
        return EXIT_FAILED, f"render failed: {what}{resume}"
    return EXIT_FAILED, f"{type(exc).__name__}: {exc}{resume if started else ''}"


def _mark_dead_sessions(render_dir) -> None:
    """Under the directory's lock no other run is alive: sessions still ``running`` were killed."""
    from storage import RenderStore
    from supergen_dask.config import location
    from supergen_dask.dirlock import mark_dead_sessions
    from supergen_dask.graph import STORE_NAME

    try:
        store = RenderStore.open(location(render_dir) / STORE_NAME)
    except (FileNotFoundError, ValueError, KeyError):
        return  # a new render, or not ours: run_render says which
    mark_dead_sessions(store)


def _verify(render_dir: str, repair: bool) -> int:
    from storage import RenderStore
    from supergen_dask.config import location
    from supergen_dask.graph import STORE_NAME, VIDEO_NAME
    from supergen_dask.integrity import repair_store, verify_render

    report = verify_render(render_dir)
    for problem in report.problems:
        print(f"corrupt: {problem}")
    print(report.summary())
    if repair and not report.ok:
        from supergen_dask.plan import RenderPlan

        store = RenderStore.open(location(render_dir) / STORE_NAME)
        plan = RenderPlan.from_dict(store.attrs["plan"])
        repair_store(plan, store, (location(render_dir) / VIDEO_NAME).exists(), full=True)
        print(f"repaired markers; recompute with: supergen resume {render_dir}")
    return 0 if report.ok else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    where: dict[str, Any] = {"render_dir": None, "started": False}
    try:
        return _main(args, where)
    except KeyboardInterrupt:
        if where["render_dir"] is not None:
            print(
                f"\ninterrupted; finished tiles are kept: supergen resume {where['render_dir']}",
                file=sys.stderr,
            )
        else:
            print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        code, message = _classify(exc, where["render_dir"] if where["started"] else None, where["started"])
        print(f"error: {_one_line(message)}", file=sys.stderr)
        if args.verbose:
            traceback.print_exc()
        return code


def _main(args: argparse.Namespace, where: dict[str, Any]) -> int:
    if args.command == "models":
        from pipelines import available_models, families, model_info

        for name in available_models():
            info = model_info(name)
            cache = f"cache {'on' if info.cache_enabled else 'off'} (tau {info.cache_threshold:g})"
            print(
                f"{name}: native {info.native_width}x{info.native_height}, {info.native_frames} frames, "
                f"{cache} - {info.description}"
            )
        print("\nfamilies (--model /path/to/diffusers-directory; defaults a spec may override):")
        for name, d in families().items():
            note = f"; {d.guidance_note}" if d.guidance_note else ""
            print(
                f"{name}: {'/'.join(d.pipelines)}; native {d.native_width}x{d.native_height}, "
                f"{d.native_frames} frames at {d.fps} fps (frames {d.frame_rule()}), {d.default_steps} steps, "
                f"guidance {d.default_guidance:g}, k {d.default_refine_fraction:g}*steps, "
                f"cache {'on' if d.cache_enabled else 'off'} (tau {d.cache_threshold:g}){note}"
            )
        return 0
    if args.command == "info":
        from supergen_dask.graph import describe, dumps

        print(dumps(describe(args.render_dir)))
        return 0
    if args.command == "verify":
        return _verify(args.render_dir, args.repair)
    if args.command == "report":
        from supergen_dask.config import location
        from supergen_dask.report import write_report

        for d in args.render_dirs:
            if not location(d).is_dir():
                raise FileNotFoundError(f"{d}: no such render directory")
        print(f"report: {write_report(args.render_dirs, args.out)}")
        return 0
    if args.command == "preview":
        from supergen_dask.preview import write_preview

        print(
            f"preview: {write_preview(args.render_dir, args.step, args.out, stage=args.stage, frame=args.frame)}"
        )
        return 0

    import dask.config

    _check_cluster_args(args)
    settings = _worker_settings(args)
    # a local cluster's nannies warn while stopping workers that take a moment to exit: noise in
    # a normal run's output (a worker dying mid-run is still reported)
    logging.getLogger("distributed.nanny").addFilter(_QuietShutdown())
    with dask.config.set(settings):  # around the cluster's start: its workers copy the config then
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "batch":
            return _batch(args)
        return _render(args, where)


def _render(args: argparse.Namespace, where: dict[str, Any]) -> int:
    """``supergen render`` and ``supergen resume``."""
    import dask.config

    from supergen_dask.cluster import client_for
    from supergen_dask.config import location
    from supergen_dask.dirlock import render_dir_lock
    from supergen_dask.estimate import check_disk
    from supergen_dask.graph import default_render_dir, load_plan, run_render
    from supergen_dask.plan import plan_render
    from supergen_dask.preflight import check_output_dir

    force = getattr(args, "force", False)
    with dask.config.set({"supergen.limits.enabled": False} if force else {}):
        if args.command == "render":
            plan = plan_render(spec_from_args(args))  # every check happens here, before any write
            if args.output_dir:
                render_dir = location(args.output_dir).native()
            else:
                render_dir = default_render_dir(plan, args.store_root)
            overwrite = args.overwrite
            if args.dry_run:
                print(plan.summary())
                print(f"render directory: {render_dir}")
                return 0
        else:
            render_dir = location(args.render_dir).native()
            plan = load_plan(render_dir)
            overwrite = False
        check_output_dir(render_dir)
        check_disk(plan, render_dir)
    where["render_dir"] = render_dir
    with (
        client_for(None, **_cluster_kwargs(args)) as client,  # first: a dead address is one line
        render_dir_lock(render_dir),  # a second run on the directory waits, then finds the work done
    ):
        print(plan.summary(), file=sys.stderr)
        print(f"render directory: {render_dir}", file=sys.stderr)
        where["started"] = True
        _mark_dead_sessions(render_dir)
        result = run_render(plan, render_dir, client, progress=not args.no_progress, overwrite=overwrite)
    _print_result(result)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
