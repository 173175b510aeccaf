"""``python -m bench.sweep_lambda --a sdturbo --b swiftbrush --lams 0:1:0.1``: SwiftBrush v2's Figure 3.

Every point w of the grid is the merge (1 − w)·A + w·B evaluated through the bench engine with its own resumable
store (``bench.sweep``); all ``bench.run`` options but ``--models`` apply.
"""

import argparse
import dataclasses
import sys
from dataclasses import dataclass

from bench import config as config_cli
from bench import engine, suites
from bench.config import option
from bench.errors import exit_on_user_error
from bench.processes import ran_as_ranks
from bench.suites import RunConfig


@dataclass(frozen=True)
class SweepConfig:
    a: str = option(None, "student A (w = 0): a registry name or NAME=PATH", required=True)
    b: str = option(None, "student B (w = 1): a registry name or NAME=PATH", required=True)
    lams: str = option("0:1:0.1", "weights w of B: start:stop:step or a comma list")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench.sweep_lambda", description=__doc__.split("\n\n")[0])
    config_cli.add_arguments(parser, SweepConfig)
    config_cli.add_arguments(parser, RunConfig, skip=("models",))
    return parser


def sweep(config: RunConfig, points: SweepConfig, argv: list[str]):
    """Run the sweep (parsed from ``argv``); ``--processes`` N > 1 on a CPU runs it again as N ranks."""
    from bench.sweep import run_sweep

    name = "sweep-" + "-".join(entry.split("=")[0] for entry in (points.a, points.b))
    config = dataclasses.replace(config, out=config.out or f"results/{name}")
    state, device = engine.start(config)
    suite, config = suites.build(engine.with_device_defaults(config, device))
    if ran_as_ranks("bench.sweep_lambda", argv, config, state, device):
        return None
    return run_sweep(config, suite, points.a, points.b, points.lams, state, device)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    from bench.load import hide_library_progress_bars

    hide_library_progress_bars()
    with exit_on_user_error("bench.sweep_lambda"):
        return sweep(config_cli.from_namespace(RunConfig, args), config_cli.from_namespace(SweepConfig, args), argv)


if __name__ == "__main__":
    main()
