"""``nodewarden status``: ask the running agent (over its HTTP API) how it is and what is firing."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from agent.core import config as configmod
from agent.core.errors import ConfigError

HELP = "show the running agent's health, collectors and pending/firing alerts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register arguments."""
    parser.add_argument("--config", metavar="FILE", help="read the listen address from this config (default: "
                                                         "$NODEWARDEN_CONFIG, else /etc/nodewarden/config.yml)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--listen", metavar="HOST:PORT", help="the agent's listen address, as given to `run --listen`")
    where.add_argument("--url", help="agent base URL, e.g. https://gpu-a1:9842 (default: from --listen or the config)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON documents")


def _fetch(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)["data"]


def base_url(args: argparse.Namespace) -> str:
    """The agent's URL from --url or the config's listen address."""
    if args.url:
        return args.url.rstrip("/")
    if getattr(args, "listen", None):
        try:
            host, port = configmod.parse_listen(args.listen)
        except ValueError as err:
            raise ConfigError(f"--listen: {err}") from err
    else:
        from agent.commands._remed import load_config

        host, port = configmod.parse_listen(load_config(args).listen)
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def main(args: argparse.Namespace) -> int:
    """Exit 0 when the agent answers and is healthy, 1 when unhealthy, 2 when unreachable."""
    try:
        url = base_url(args)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        status = _fetch(url + "/api/v1/status")
    except (OSError, ValueError, KeyError) as err:
        print(f"cannot reach nodewarden at {url}: {err}", file=sys.stderr)
        return 2
    try:
        alerts = _fetch(url + "/api/v1/alerts").get("alerts", [])
    except urllib.error.HTTPError:
        alerts = []
    if args.json:
        json.dump({"status": status, "alerts": alerts}, sys.stdout, indent=2)
        print()
        return 0 if status.get("healthy") else 1
    print(f"nodewarden {status['version']} at {url}: {'healthy' if status['healthy'] else 'UNHEALTHY'} "
          f"({status['health']}); mode {status['mode']}; {status['series']} series")
    for name, why in sorted(status.get("failed_collectors", {}).items()):
        print(f"  collector {name}: failed to load: {why}")
    firing = [a for a in alerts if a.get("state") == "firing"]
    pending = [a for a in alerts if a.get("state") == "pending"]
    print(f"alerts: {len(firing)} firing, {len(pending)} pending")
    for a in firing + pending:
        labels = a.get("labels", {})
        rest = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "alertname")
        summary = a.get("annotations", {}).get("summary", "")
        print(f"  {a['state']:<8} {labels.get('alertname', '?')}{{{rest}}} since {a.get('activeAt', '?')}"
              + (f"  {summary}" if summary else ""))
    return 0 if status.get("healthy") else 1
