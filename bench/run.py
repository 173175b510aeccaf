"""``python -m bench.run``: generate, extract features, compute metrics and report, resumably.

Table 1 of SwiftBrush v2 on COCO-2014 30K (``--suite coco``, the default), or the offline digits world
(``--suite demo``), through ``bench.engine``. A suite's default run (no ``--models``) also makes its
weight-interpolation sweeps (``bench.sweep``; the demo's Figure 3).
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from bench import config as config_cli
from bench import engine, suites
from bench.errors import exit_on_user_error
from bench.processes import ran_as_ranks
from bench.suites import RunConfig

EPILOG = """examples:
  python -m bench.run --suite demo
  python -m bench.run --models sdturbo,swiftbrush,sbv2=/data/sbv2 --coco /data/coco --out results/table1
  python -m bench.run --models sd21-cfg2=/data/sd21 --captions dataset.json --n 30000 --save-images
  accelerate launch --num_processes 8 -m bench.run --models sdturbo --coco /data/coco
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n\n")[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    config_cli.add_arguments(parser, RunConfig)
    return parser


def run(config: RunConfig, argv: list[str]) -> None:
    """Run ``config`` (parsed from ``argv``). With ``--processes`` N > 1 on a CPU the suite is prepared here (the
    demo world trained), then the command runs again as N processes that share the generation."""
    from bench.sweep import run_sweep

    state, device = engine.start(config)
    suite, config = suites.build(engine.with_device_defaults(config, device))
    if ran_as_ranks("bench.run", argv, config, state, device):
        return
    engine.run_table(config, suite, state, device)
    if config.models:
        return
    report = Path(config.report)
    for sweep in suite.sweeps:  # beside the suite's run and report: <out>/<name>/ and <report stem>-<name>.md
        where = dataclasses.replace(config, out=str(Path(config.out) / sweep.name),
                                    report=str(report.with_name(f"{report.stem}-{sweep.name}.md")))
        if state.is_main_process:
            print(f"weight interpolation {sweep.a} <-> {sweep.b} ({sweep.lams}) -> {where.report}", file=sys.stderr)
        run_sweep(where, suite, sweep.a, sweep.b, sweep.lams, state, device)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    from bench.load import hide_library_progress_bars

    hide_library_progress_bars()
    with exit_on_user_error("bench.run"):
        run(config_cli.from_namespace(RunConfig, args), argv)


if __name__ == "__main__":
    main()
