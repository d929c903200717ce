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
                        help="use scripted fake GPUs from a scenario (name or file) instead of NVML")
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


def main(args: argparse.Namespace) -> int:
    """Validate config, then run until SIGTERM. Exit 2 on a bad config."""
    try:
        cfg = apply_simulate(load(args), args.simulate)
    except ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return 2
    logs.setup(args.log_level or cfg.log.level, cfg.log.format)
    from agent.daemon import Daemon

    try:
        daemon = Daemon(cfg, config_path=args.config, overrides=overrides_from(args))
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
