"""The ``bench`` command line.

Only argparse is imported at start-up; each subcommand imports what it needs, so
``bench --help`` never imports torch. Exit codes: 0 success, 1 some cells failed,
2 a usage, suite, plugin or data error (printed without a traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED_CELLS, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_LEFT_UNDONE = 75  # sysexits' EX_TEMPFAIL: cells another live process runs were left to it; run again later


def _registry(args: argparse.Namespace):
    from bench_core.plugins import load_registry

    return load_registry(only=args.plugin)


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def cmd_run(args: argparse.Namespace) -> int:
    import os

    if not args.dry_run and "WORLD_SIZE" not in os.environ:
        settings = _executor_settings(args)
        if settings is not None:
            return _run_elsewhere(args, settings)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from bench_core.distributed import launch

        return launch(args.nproc, _without_nproc(sys.argv[1:]))
    from bench_core.runner import Console, Runner, plan
    from bench_core.suite import load_suite

    suite = load_suite(args.suite)
    registry = _registry(args)
    cells = plan(suite, args.only)
    console = Console(progress=not args.no_progress and sys.stderr.isatty(), log=lambda msg: print(msg, flush=True))
    runner = Runner(suite, registry, output_dir=args.output, argv=sys.argv[1:], console=console)
    if args.dry_run:
        runner.preflight(cells)
        print(f"suite {suite.name}: {len(cells)} cells -> {runner.output_dir}")
        for cell in cells:
            entry = cell.model
            model_cls = registry.get("model", entry.plugin).cls
            config = entry.config or model_cls.default_config
            print(f"  {cell.id}  [{entry.plugin}:{config}, {cell.dataset.plugin} root={cell.dataset.root}]")
        print(f"metrics: {', '.join(m.plugin for m in suite.metrics)}")
        return EXIT_OK
    if not cells:
        print("no cells match the suite's include/exclude and --only filters", file=sys.stderr)
        return EXIT_ERROR
    from bench_core import distributed as ddp

    try:
        summary = runner.run(cells)
        main = ddp.is_main()  # read before leaving the process group, which resets the rank
    finally:
        ddp.shutdown()
    if not main:
        return EXIT_OK
    if not args.no_report:
        from bench_core.report.html import build_report

        path = build_report(runner.output_dir, _report_sections(registry, runner.output_dir))
        print(f"report: {path}")
    print(", ".join(f"{v} {k}" for k, v in summary.items() if v))
    if summary["failed"]:
        return EXIT_FAILED_CELLS
    return EXIT_LEFT_UNDONE if summary["busy"] else EXIT_OK


def _executor_settings(args: argparse.Namespace):
    """The executor settings of a ``bench run`` whose cells run elsewhere (local processes, Slurm), else None."""
    from bench_core.api import BenchError
    from bench_core.suite import load_suite

    if args.executor != "inline":
        suite = load_suite(args.suite)
        if args.executor or args.executor_opt or args.detach or suite.executor.kind != "inline":
            from bench_core.executors import settings_for

            settings = settings_for(suite, args.executor, args.executor_opt)
            if settings.kind != "inline":
                if args.nproc > 1:
                    raise BenchError("--nproc is for inline runs; set the executor's gpus_per_cell or tasks_per_node")
                return settings
    if args.detach:
        raise BenchError("--detach needs cells that run elsewhere: --executor local or slurm")
    return None


def _run_elsewhere(args: argparse.Namespace, settings) -> int:
    """``bench run --executor local|slurm``: submit the cells not done yet, wait (unless --detach), report."""
    from bench_core.executors import submit

    outcome = submit(args, settings, log=lambda msg: print(msg, flush=True))
    if outcome.waited and not args.no_report:
        from bench_core.report.html import build_report

        path = build_report(outcome.output_dir, _report_sections(_registry(args), outcome.output_dir))
        print(f"report: {path}")
    if outcome.waited:
        print(", ".join(f"{v} {k}" for k, v in outcome.summary.items() if v) or "nothing to do")
    return outcome.code


def cmd_status(args: argparse.Namespace) -> int:
    from bench_core.jobstate import status

    text, failed = status(Path(args.output_dir))
    print(text)
    return EXIT_FAILED_CELLS if failed else EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    from bench_core.jobstate import cancel

    print(cancel(Path(args.output_dir)))
    return EXIT_OK


def cmd_plugins(args: argparse.Namespace) -> int:
    from bench_core.api import API_VERSION

    registry = _registry(args)
    if args.details or args.json:
        from bench_core.describe import render

        print(render(registry, args.details, as_json=args.json))
        return EXIT_OK
    print(f"plugin API v{API_VERSION}")
    for source in sorted(registry.sources, key=lambda s: (s.distribution, s.entry_point)):
        provides = ", ".join(f"{kind} {name}" for kind, name in source.provides) or "nothing"
        state = f"ERROR: {source.error}" if source.error else f"ok (API v{API_VERSION})"
        version = f" {source.dist_version}" if source.dist_version else ""
        print(f"{source.distribution}{version}  {source.entry_point} = {source.value}")
        print(f"    provides: {provides}")
        print(f"    status:   {state}")
    for problem in registry.duplicates():
        print(f"conflict: {problem}")
    return EXIT_OK


def _report_sections(registry, output_dir: Path) -> list[dict[str, str]]:
    """Plugins' report sections, then one listing the plugin hooks that failed (if any did)."""
    import html

    groups = registry.notify("bench_report_sections", validate=_sections_problem, store_path=str(output_dir))
    sections = [section for group in groups for section in group]
    if registry.observer_errors:  # the report says which plugins' observations it lacks
        items = "".join(f"<li>{html.escape(error)}</li>" for error in registry.observer_errors)
        sections.append({"title": "Plugin hooks that failed", "html": f"<ul>{items}</ul>"})
    return sections


def _sections_problem(group: object) -> str | None:
    """Why one plugin's ``bench_report_sections`` result cannot be rendered, or ``None``."""
    if isinstance(group, (list, tuple)) and all(
        isinstance(s, dict) and isinstance(s.get("title"), str) and isinstance(s.get("html"), str) for s in group
    ):
        return None
    return f"bench_report_sections() returned {group!r:.80}, not a list of {{'title': str, 'html': str}} dicts"


def cmd_report(args: argparse.Namespace) -> int:
    from bench_core.report.html import build_report

    if not (Path(args.output_dir) / "results.sqlite").exists():
        print(f"error: no results store (results.sqlite) in {args.output_dir}", file=sys.stderr)
        return EXIT_ERROR
    from bench_core.collect import collect

    collect(Path(args.output_dir))  # rows of jobs that ran elsewhere (bench run --executor local|slurm --detach)
    sections = _report_sections(_registry(args), Path(args.output_dir))
    print(f"report: {build_report(args.output_dir, sections, benchmarks=args.benchmarks, everything=args.all)}")
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from bench_core.doctor import diagnose

    diagnosis = diagnose(Path(args.output_dir), repair=args.repair)
    print(diagnosis.format())
    return diagnosis.exit_code


def cmd_compare(args: argparse.Namespace) -> int:
    from bench_core.report.compare import compare

    html, md = compare(args.a, args.b, args.out)
    print(f"compare: {html}\ncompare: {md}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from bench_core.export import export

    text_or_path = export(Path(args.output_dir), args.format, Path(args.out) if args.out else None)
    print(text_or_path)
    return EXIT_OK


def cmd_score(args: argparse.Namespace) -> int:
    from bench_core.score import ImageFolders, score

    metrics = [m.strip() for m in args.metric.split(",") if m.strip()]
    folders = ImageFolders(Path(args.pred), Path(args.ref), args.data_range)
    result = score(folders, metrics, _registry(args), batch_size=args.batch_size)
    if args.json:
        import json

        print(json.dumps(result.to_json(), indent=2, allow_nan=False))
    else:
        print(result.table())
    return EXIT_OK


def cmd_data_make(args: argparse.Namespace) -> int:
    registry = _registry(args)
    cls = registry.get("dataset", args.name).cls
    if not hasattr(cls, "make_embedded"):
        print(f"error: dataset plugin {args.name!r} cannot synthesise data", file=sys.stderr)
        return EXIT_ERROR
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    cls.make_embedded(Path(args.dir), n=args.n, seed=args.seed)
    print(f"wrote embedded {args.name} data (n={args.n}, seed={args.seed}) to {args.dir}")
    return EXIT_OK


def cmd_data_check(args: argparse.Namespace) -> int:
    from bench_core.datacheck import check_dataset, parse_options

    cls = _registry(args).get("dataset", args.name).cls
    report = check_dataset(cls, Path(args.root), parse_options(args.option))
    print(report.format())
    return EXIT_OK if report.ok else EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``bench`` (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog="bench",
        description="Benchmark generative models of medical and scientific images.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument(
        "-p", dest="plugin", action="append", default=[], metavar="NAME",
        help="also load plugin NAME (entry point or module); with BENCH_DISABLE_PLUGIN_AUTOLOAD=1, only these",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def _add_run(sub) -> None:
    """``bench run``."""
    run = sub.add_parser("run", help="train/load and evaluate every cell of a suite, then write the report")
    run.add_argument("suite", help="suite YAML file")
    run.add_argument("--dry-run", action="store_true", help="check the suite and print the cells without running")
    run.add_argument("--only", action="append", metavar="GLOB", help="run only cells whose model/dataset/seedN matches")
    run.add_argument("--output", type=Path, help="output directory (default: the suite's output_dir)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--no-report", action="store_true", help="do not render the HTML report")
    run.add_argument("--trace", action="store_true", help="trace plugin hook calls (same as BENCH_TRACE_PLUGINS=1)")
    run.add_argument(
        "--nproc", type=int, default=1, metavar="N",
        help="train with N data-parallel processes on this node (launches torchrun; multi-node: see README)",
    )  # fmt: skip
    run.add_argument(
        "--executor", choices=["inline", "local", "slurm"],
        help="where cells run: inline (one after another here; default), local (parallel local processes) or "
        "slurm (one job-array task per cell, through submitit); default: the suite's executor.kind",
    )  # fmt: skip
    run.add_argument(
        "--executor-opt", action="append", default=[], metavar="KEY=VALUE",
        help="executor setting over the suite's `executor:` (partition, account, qos, time_min, gpus_per_cell, "
        "cpus_per_task, mem_gb, max_parallel, ...; values as YAML); repeatable. See docs/cluster.md",
    )  # fmt: skip
    run.add_argument(
        "--detach", action="store_true",
        help="submit and return at once (local/slurm); `bench status DIR` follows, `bench cancel DIR` cancels",
    )  # fmt: skip
    run.set_defaults(func=cmd_run)


def _add_status(sub) -> None:
    """``bench status``."""
    st = sub.add_parser(
        "status", help="show each cell of an output dir: queued, running, done or failed (merges finished jobs)",
        description="Merge the results of finished jobs into the store, ask Slurm (squeue) or the local "
        "processes about the others, and print one line per cell.",
    )  # fmt: skip
    st.add_argument("output_dir", type=Path, help="output directory holding results.sqlite")
    st.set_defaults(func=cmd_status)


def _add_cancel(sub) -> None:
    """``bench cancel``."""
    cancel = sub.add_parser("cancel", help="cancel the queued and running jobs of an output dir (scancel)")
    cancel.add_argument("output_dir", type=Path, help="output directory holding results.sqlite")
    cancel.set_defaults(func=cmd_cancel)


def _add_plugins(sub) -> None:
    """``bench plugins``."""
    plugins = sub.add_parser("plugins", help="list plugins, what they provide and load errors")
    plugins.add_argument("--trace", action="store_true", help="trace hook calls (same as BENCH_TRACE_PLUGINS=1)")
    plugins.add_argument(
        "--details", metavar="NAME",
        help="describe plugin NAME: a model's configs, capabilities, tasks and dims; a dataset's options, embedded "
        "data and obtain hint; a metric's options, direction, kind and dims",
    )  # fmt: skip
    plugins.add_argument("--json", action="store_true", help="print the list (with --details: the description) as JSON")
    plugins.set_defaults(func=cmd_plugins)


def _add_report(sub) -> None:
    """``bench report``."""
    report = sub.add_parser("report", help="rebuild the HTML report from a results store")
    report.add_argument("output_dir", help="output directory holding results.sqlite")
    report.add_argument(
        "--benchmarks", type=Path, metavar="FILE",
        help="pytest-benchmark JSON (--benchmark-json) shown as the report's speed section",
    )  # fmt: skip
    report.add_argument(
        "--all", action="store_true",
        help="also show cells of earlier versions of the suite (superseded), in rows of their own",
    )  # fmt: skip
    report.set_defaults(func=cmd_report)


def _add_doctor(sub) -> None:
    """``bench doctor``."""
    doctor = sub.add_parser(
        "doctor", help="check an output directory for damaged files; --repair rebuilds what needs no retraining",
        description="Check the results store, checkpoint weights, training states and eval files of an output "
        "directory; print one line per damaged file and what to do. Run it while no `bench run` writes there.",
        epilog="exit status: 0 nothing damaged (with --repair: everything found was repaired), "
        "1 damaged files found and left as they are, 2 not an output directory",
    )  # fmt: skip
    doctor.add_argument("output_dir", help="output directory holding results.sqlite, checkpoints/ and cells/")
    doctor.add_argument(
        "--repair", action="store_true",
        help="move damaged files aside (NAME.damaged-TIMESTAMP, never deleted), copy the store's readable rows "
        "into a fresh store and mark the cells to re-evaluate; the next `bench run` then re-evaluates them "
        "from their checkpoints, retraining only cells whose weights were damaged",
    )  # fmt: skip
    doctor.set_defaults(func=cmd_doctor)


def _add_compare(sub) -> None:
    """``bench compare``."""
    cmp = sub.add_parser("compare", help="compare two runs: A, B, delta and whether it exceeds the seed spread")
    cmp.add_argument("a", help="output dir or results.sqlite of run A; DIR::SUITE picks one suite of a shared store")
    cmp.add_argument("b", help="the same for run B")
    cmp.add_argument(
        "-o", "--out", type=Path, default=Path("reports/compare"), help="folder for compare.html and compare.md"
    )
    cmp.set_defaults(func=cmd_compare)


def _add_export(sub) -> None:
    """``bench export``."""
    export = sub.add_parser("export", help="export stored results")
    export.add_argument("output_dir", help="output directory holding results.sqlite")
    export.add_argument("--format", required=True, choices=["csv", "json", "parquet", "markdown", "latex"])
    export.add_argument("-o", "--out", help="file to write (default: print text formats, or next to the store)")
    export.set_defaults(func=cmd_export)


def _add_score(sub) -> None:
    """``bench score``."""
    sc = sub.add_parser("score", help="score a folder of predictions against a folder of references")
    sc.add_argument("pred", help="folder of predictions (PNG, .nii, .nii.gz)")
    sc.add_argument("ref", help="folder of references with the same file names")
    sc.add_argument("--metric", required=True, metavar="NAMES", help="comma-separated metric plugins, e.g. psnr,ssim")
    sc.add_argument(
        "--data-range", type=float, metavar="R",
        help="intensity range: values are divided by R (required for NIfTI; PNG default 255 or 65535)",
    )  # fmt: skip
    sc.add_argument("--batch-size", type=int, default=16, metavar="N", help="files per batch (default 16)")
    sc.add_argument("--json", action="store_true", help="print the result as JSON (with per-file values)")
    sc.set_defaults(func=cmd_score)


def _add_data(sub) -> None:
    """``bench data``."""
    data = sub.add_parser("data", help="dataset tools")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    make = data_sub.add_parser("make", help="write a dataset plugin's embedded data in its real on-disk format")
    make.add_argument("name", help="dataset plugin name")
    make.add_argument("dir", help="folder to write")
    make.add_argument("--n", type=int, default=64, help="number of items (default 64)")
    make.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    make.set_defaults(func=cmd_data_make)
    check = data_sub.add_parser("check", help="read every item of a dataset folder and report bad files")
    check.add_argument("name", help="dataset plugin name")
    check.add_argument("--root", required=True, help="data folder")
    check.add_argument(
        "-o", "--option", action="append", default=[], metavar="KEY=VALUE",
        help="plugin option, value parsed as YAML (e.g. size=[64,64]); repeatable",
    )  # fmt: skip
    check.set_defaults(func=cmd_data_check)


def _add_convert(sub) -> None:
    """``bench convert``."""
    convert = sub.add_parser(
        "convert", help="convert a checkpoint saved by a model's original (source) code to our safetensors format",
        description="Read SOURCE_FILE(s) as the model's source code saves them (torch.load with weights_only=True "
        "only), convert them into the model's parameters and buffers (every key accounted for) and write OUT.",
    )  # fmt: skip
    convert.add_argument("model", help="model plugin name, e.g. phvae, vdvae3d, vqvae2, pixelcnn")
    convert.add_argument(
        "files", nargs="*", metavar="FILE",
        help="SOURCE_FILE... OUT.safetensors (pixelcnn: the VQ-VAE, top prior and bottom prior files)",
    )  # fmt: skip
    convert.add_argument("--config", help="named config of the model (default: its default config)")
    convert.add_argument(
        "--params", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
        help="config overrides matching the source's hyper-parameters, values as YAML (e.g. width=12)",
    )  # fmt: skip
    convert.set_defaults(func=cmd_convert)


_SUBCOMMANDS = (_add_run, _add_status, _add_cancel, _add_plugins, _add_report, _add_doctor, _add_compare,
                _add_export, _add_score, _add_data, _add_convert)  # fmt: skip
"""The subcommands' parsers, in the order ``bench --help`` lists them."""


def cmd_convert(args: argparse.Namespace) -> int:
    from bench_core.api import merge_config
    from bench_core.convert import convert_files
    from bench_core.datacheck import parse_options

    # `--params a=1 SRC OUT` lets argparse take the files as params: what has no '=' is a file.
    files = [f for f in args.params if "=" not in f] + args.files
    if len(files) < 2:
        print("error: give at least one SOURCE_FILE and the OUT.safetensors file to write", file=sys.stderr)
        return EXIT_ERROR
    cls = _registry(args).get("model", args.model).cls
    name = args.config or cls.default_config
    if name not in cls.configs:
        print(f"error: model {cls.name!r} has no config {name!r}; configs: {', '.join(sorted(cls.configs))}")
        return EXIT_ERROR
    config = merge_config(cls.configs[name], parse_options([p for p in args.params if "=" in p]))
    *sources, out = (Path(f) for f in files)
    summary = convert_files(cls, config, sources, out)
    print(
        f"wrote {out}: {summary['tensors']} tensors, {summary['parameters']:,} parameters of "
        f"{cls.name} {summary['version']} (config {name}) from {', '.join(str(s) for s in sources)}"
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bench`` console script."""
    from bench_core.provenance import choose_thread_settings

    choose_thread_settings()  # before anything imports torch: OpenMP reads its settings once
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from bench_core import __version__

        print(f"medgen-bench {__version__}")
        return EXIT_OK
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    if getattr(args, "trace", False):
        import os

        os.environ["BENCH_TRACE_PLUGINS"] = "1"
    from bench_core.api import BenchError

    try:
        return args.func(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted: finished cells are kept; run the same command again to continue", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
