"""``nodewarden run``: the daemon in the foreground (what systemd and `make run` start)."""

from __future__ import annotations

import argparse
import errno
import sys

import structlog

from agent.core import config as configmod
from agent.core import logs
from agent.core.errors import ConfigError, RuleError
from agent.core.instance import StateDirLocked

HELP = "run the agent in the foreground"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register arguments."""
    parser.add_argument("--config", metavar="FILE", help="YAML config file (default: embedded defaults)")
    parser.add_argument("--listen", metavar="HOST:PORT",
                        help=f"HTTP listen address (default {configmod.DEFAULT_LISTEN})")
    parser.add_argument("--state-dir", metavar="DIR", help="directory for state (journal, alert state)")
    parser.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                        help="exporter-toolkit web config (TLS, basic auth)")
    parser.add_argument("--simulate", metavar="SCENARIO",
                        help="use scripted fake GPUs from a scenario (name or file) instead of NVML; a scenario "
                             "with a node: section simulates the whole node (procfs/sysfs/kmsg trees)")
    parser.add_argument("--speed", type=float, default=None, metavar="N",
                        help="with --simulate: run time N times faster (ticks every interval/N, rules and "
                             "scenario see accelerated time)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override log level")


def load(args: argparse.Namespace) -> configmod.Config:
    """Config from the file (or defaults) with command-line overrides applied."""
    cfg = configmod.load_file(args.config) if args.config else configmod.Config()
    overrides = overrides_from(args)
    return configmod.with_overrides(cfg, **overrides)


def overrides_from(args: argparse.Namespace) -> dict:
    """Flags that override config keys (None = not given)."""
    out = {"listen": args.listen, "state_dir": args.state_dir, "web_config_file": args.web_config_file}
    return {k: v for k, v in out.items() if v is not None}


def apply_simulate(cfg: configmod.Config, scenario: str | None) -> configmod.Config:
    """``--simulate``: enable the GPU collector against the named scenario."""
    if not scenario:
        return cfg
    from agent.collectors import simulate

    simulate.load(scenario)  # a bad scenario is a usage error (exit 2), not a silently GPU-less agent
    gpu = cfg.collectors.get("gpu").model_copy(update={"enabled": True, "simulate": scenario})
    return cfg.model_copy(update={"collectors": cfg.collectors.model_copy(update={"gpu": gpu})})


class ScaledClock:
    """Wall and monotonic time running ``speed`` times faster than real time from the moment of creation."""

    def __init__(self, speed: float) -> None:
        import time

        self.speed = speed
        self._time = time
        self._wall0, self._mono0 = time.time(), time.monotonic()

    def mono(self) -> float:
        """Accelerated monotonic seconds."""
        return self._mono0 + (self._time.monotonic() - self._mono0) * self.speed

    def wall(self) -> float:
        """Accelerated Unix seconds."""
        return self._wall0 + (self._time.monotonic() - self._mono0) * self.speed


def simulation(cfg: configmod.Config, args: argparse.Namespace) -> dict:
    """Daemon keyword arguments for ``--simulate`` / ``--speed`` (empty without --simulate)."""
    if not args.simulate:
        return {}
    import os

    from agent.collectors import simulate
    from agent.collectors.nodesim import NodeSim

    scenario = simulate.load(args.simulate)
    speed = args.speed or 1.0
    clock = ScaledClock(speed)
    if not scenario.node and speed == 1.0:
        # GPU-only scenario in real time: the GPU collector loads the fake itself (apply_simulate); plugins get
        # the same fake (load_module shares one per scenario), so a power cap shows in the collector's readings.
        from agent.collectors.nvml import load_module

        return {"plugin_deps": {"nvml": load_module(args.simulate)}}
    sim = NodeSim(scenario, os.path.join(cfg.state_dir, "simulated-node"), clock.mono, hostname=cfg.hostname)
    out: dict = {"wall": clock.wall, "mono": clock.mono, "speed": speed, "plugin_deps": {"nvml": sim.nvml}}
    if scenario.node:
        out["collector_factory"] = lambda c: sim.collectors(c)
        out["plugin_deps"]["paths"] = sim.paths
    else:  # GPUs simulated on the accelerated clock, the host's own collectors as they are
        from agent.daemon import build_collectors

        def factory(c: configmod.Config) -> tuple:
            gpu_off = c.collectors.get("gpu").model_copy(update={"enabled": False})
            built, failed = build_collectors(c.model_copy(update={
                "collectors": c.collectors.model_copy(update={"gpu": gpu_off})}))
            sim_built, sim_failed = sim.collectors(c, only={"gpu"})
            return built + sim_built, {**failed, **sim_failed}

        out["collector_factory"] = factory
    return out


def main(args: argparse.Namespace) -> int:
    """Validate config, then run until SIGTERM. Exit 2 on a bad config."""
    try:
        cfg = apply_simulate(load(args), args.simulate)
    except ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return 2
    if args.speed is not None and (not args.simulate or not 1.0 <= args.speed <= 1000.0):
        print("--speed needs --simulate and a factor between 1 and 1000", file=sys.stderr)
        return 2
    logs.setup(args.log_level or cfg.log.level, cfg.log.format)
    from agent.daemon import Daemon

    try:
        daemon = Daemon(cfg, config_path=args.config, overrides=overrides_from(args), **simulation(cfg, args))
    except (ConfigError, RuleError) as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return 2
    try:
        return daemon.run_forever()
    except StateDirLocked as err:  # another agent (or act/migrate) works on this state dir
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        structlog.get_logger("run").error("startup_failed", error=str(err))
        if err.errno == errno.EADDRINUSE:
            print(f"nodewarden: cannot listen on {cfg.listen}: address already in use (another agent, e.g. "
                  "`make run`?); give this one its own --listen HOST:PORT and --state-dir", file=sys.stderr)
        return 1
