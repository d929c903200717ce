"""Write dashboards/nodewarden.json (Grafana): `python dashboards/generate.py > dashboards/nodewarden.json`.

Every query uses only metric names from the catalogue (docs/metrics.md; tests/test_dashboard.py checks it) and the
Prometheus datasource is the `datasource` variable, so the dashboard imports into any Grafana as it is.
"""

from __future__ import annotations

import json
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'instance=~"$instance"'
GPU = f'{SEL}, gpu=~"$gpu"'
RATE = "$__rate_interval"


def panel(
    title: str,
    targets: list[tuple[str, str]],
    unit: str = "short",
    kind: str = "timeseries",
    w: int = 8,
    h: int = 7,
    description: str = "",
    **options,
) -> dict:
    """One panel; targets are (expr, legend)."""
    p = {
        "type": kind,
        "title": title,
        "datasource": DS,
        "description": description,
        "gridPos": {"w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(65 + i), "datasource": DS, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(targets)
        ],
    }
    p.update(options)
    return p


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "gridPos": {"w": 24, "h": 1}, "panels": []}


PANELS = [
    row("GPU (dcgm-exporter names)"),
    panel("GPU utilisation", [(f"DCGM_FI_DEV_GPU_UTIL{{{GPU}}}", "{{instance}} gpu{{gpu}}")], "percent"),
    panel(
        "GPU temperature",
        [
            (f"DCGM_FI_DEV_GPU_TEMP{{{GPU}}}", "{{instance}} gpu{{gpu}}"),
            (f"DCGM_FI_DEV_MEMORY_TEMP{{{GPU}}}", "{{instance}} gpu{{gpu}} memory"),
        ],
        "celsius",
    ),
    panel("GPU power", [(f"DCGM_FI_DEV_POWER_USAGE{{{GPU}}}", "{{instance}} gpu{{gpu}}")], "watt"),
    panel("Framebuffer used", [(f"DCGM_FI_DEV_FB_USED{{{GPU}}}", "{{instance}} gpu{{gpu}}")], "decmbytes"),
    panel(
        "SM clock",
        [(f"DCGM_FI_DEV_SM_CLOCK{{{GPU}}}", "{{instance}} gpu{{gpu}}")],
        "hertz",
        description="MHz; a drop under load with a clocks-event reason means throttling",
    ),
    panel(
        "Clocks event reasons (active)",
        [(f"nodewarden_gpu_clocks_event_active{{{GPU}}} == 1", "{{instance}} gpu{{gpu}} {{reason}}")],
        "short",
    ),
    panel(
        "XID errors (per 10m)",
        [(f"increase(nodewarden_gpu_xid_errors_total{{{GPU}}}[10m]) > 0", "{{instance}} gpu{{gpu}} xid {{xid}}")],
        "short",
        kind="timeseries",
    ),
    panel("Double-bit ECC errors (volatile)", [(f"DCGM_FI_DEV_ECC_DBE_VOL_TOTAL{{{GPU}}}", "{{instance}} gpu{{gpu}}")]),
    panel(
        "Row remapping",
        [
            (f"DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS{{{GPU}}}", "{{instance}} gpu{{gpu}} uncorrectable"),
            (f"nodewarden_gpu_row_remap_pending{{{GPU}}}", "{{instance}} gpu{{gpu}} pending"),
        ],
    ),
    panel(
        "NVLink CRC errors",
        [(f"rate(DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL{{{GPU}}}[{RATE}])", "{{instance}} gpu{{gpu}}")],
        "ops",
    ),
    panel(
        "PCIe replays", [(f"rate(DCGM_FI_DEV_PCIE_REPLAY_COUNTER{{{GPU}}}[{RATE}])", "{{instance}} gpu{{gpu}}")], "ops"
    ),
    panel(
        "GPUs lost",
        [(f"count by (instance) (nodewarden_gpu_up{{{SEL}}} == 0)", "{{instance}}")],
        "short",
        kind="stat",
        description="GPUs NVML reports as lost (XID 79, fallen off the bus)",
    ),
    row("Node (node_exporter names)"),
    panel(
        "Disk busy",
        [(f"rate(node_disk_io_time_seconds_total{{{SEL}}}[{RATE}])", "{{instance}} {{device}}")],
        "percentunit",
    ),
    panel(
        "Disk throughput",
        [
            (f"rate(node_disk_read_bytes_total{{{SEL}}}[{RATE}])", "{{instance}} {{device}} read"),
            (f"rate(node_disk_written_bytes_total{{{SEL}}}[{RATE}])", "{{instance}} {{device}} written"),
        ],
        "Bps",
    ),
    panel(
        "Filesystem available",
        [
            (
                f"node_filesystem_avail_bytes{{{SEL}}} / node_filesystem_size_bytes{{{SEL}}}",
                "{{instance}} {{mountpoint}}",
            )
        ],
        "percentunit",
    ),
    panel(
        "Network receive",
        [(f"rate(node_network_receive_bytes_total{{{SEL}}}[{RATE}])", "{{instance}} {{device}}")],
        "Bps",
    ),
    panel(
        "Network transmit",
        [(f"rate(node_network_transmit_bytes_total{{{SEL}}}[{RATE}])", "{{instance}} {{device}}")],
        "Bps",
    ),
    panel(
        "TCP retransmission ratio",
        [
            (
                f"rate(node_netstat_Tcp_RetransSegs{{{SEL}}}[{RATE}]) / "
                f"rate(node_netstat_Tcp_OutSegs{{{SEL}}}[{RATE}])",
                "{{instance}}",
            )
        ],
        "percentunit",
    ),
    panel(
        "InfiniBand throughput",
        [
            (
                f"rate(node_infiniband_port_data_received_bytes_total{{{SEL}}}[{RATE}])",
                "{{instance}} {{device}}:{{port}} rx",
            ),
            (
                f"rate(node_infiniband_port_data_transmitted_bytes_total{{{SEL}}}[{RATE}])",
                "{{instance}} {{device}}:{{port}} tx",
            ),
        ],
        "Bps",
    ),
    panel(
        "InfiniBand errors",
        [
            (f"rate(node_infiniband_symbol_error_total{{{SEL}}}[{RATE}])", "{{instance}} {{device}}:{{port}} symbol"),
            (
                f"increase(node_infiniband_link_downed_total{{{SEL}}}[1h])",
                "{{instance}} {{device}}:{{port}} link downed",
            ),
            (
                f"rate(node_infiniband_port_transmit_wait_total{{{SEL}}}[{RATE}])",
                "{{instance}} {{device}}:{{port}} xmit wait",
            ),
        ],
    ),
    row("Agent and rules"),
    panel(
        "Collectors failing",
        [(f"nodewarden_collector_success{{{SEL}}} == 0", "{{instance}} {{collector}}")],
        kind="timeseries",
        description="1 while a collector's rounds fail (no line: all collectors fine)",
    ),
    panel(
        "Tick duration",
        [
            (f"nodewarden_tick_duration_seconds{{{SEL}}}", "{{instance}}"),
            (f"nodewarden_tick_lag_seconds{{{SEL}}}", "{{instance}} lag"),
        ],
        "s",
    ),
    panel("Store series", [(f"nodewarden_store_series{{{SEL}}}", "{{instance}}")]),
    panel(
        "Alerts on the node",
        [(f"sum by (instance, state) (nodewarden_alerts{{{SEL}}})", "{{instance}} {{state}}")],
        description="evaluated by the agent itself, every tick",
    ),
    panel(
        "Rule evaluation failures",
        [(f"rate(nodewarden_rule_evaluation_failures_total{{{SEL}}}[{RATE}]) > 0", "{{instance}} {{rule_group}}")],
        "ops",
    ),
    panel(
        "Rule group duration",
        [(f"nodewarden_rule_group_last_duration_seconds{{{SEL}}}", "{{instance}} {{rule_group}}")],
        "s",
    ),
    panel(
        "Config reload failed",
        [
            (f"nodewarden_config_last_reload_successful{{{SEL}}} == 0", "{{instance}}"),
            (f"nodewarden_rules_last_reload_successful{{{SEL}}} == 0", "{{instance}} rules"),
        ],
        kind="stat",
    ),
    panel("Agent versions", [(f"count by (version) (nodewarden_build_info{{{SEL}}})", "{{version}}")], kind="piechart"),
    row("Remediation journal"),
    panel(
        "Remediation decisions and outcomes",
        [
            (
                f"sum by (action, result) (increase(nodewarden_remediations_total{{{SEL}}}[$__range]))",
                "{{action}} {{result}}",
            )
        ],
        kind="bargauge",
        w=12,
        description="planned (observe) / succeeded / failed / reverted over the time range",
    ),
    panel(
        "Skipped by the guard rails",
        [
            (
                f"sum by (action, reason) (increase(nodewarden_remediation_skipped_total{{{SEL}}}[$__range]))",
                "{{action}} {{reason}}",
            )
        ],
        kind="bargauge",
        w=12,
        description="cooldown, rate_limit, concurrency, blast radius, flapping, paused ...",
    ),
    panel("In progress", [(f"sum(nodewarden_remediation_in_progress{{{SEL}}})", "in progress")], kind="stat"),
    panel("Paused nodes", [(f"nodewarden_remediation_paused{{{SEL}}} == 1", "{{instance}}")], kind="stat"),
    panel(
        "Active throttles",
        [(f"nodewarden_throttle_rate_bits_per_second{{{SEL}}}", "{{instance}} {{device}} {{class}}")],
        "bps",
    ),
]


def layout(panels: list[dict]) -> list[dict]:
    """Grafana gridPos: left to right, wrapping at 24 columns; rows start a new line."""
    x = y = 0
    line_h = 0
    for i, p in enumerate(panels):
        g = p["gridPos"]
        if p["type"] == "row" or x + g["w"] > 24:
            y += line_h
            x, line_h = 0, 0
        g.update({"x": x, "y": y})
        p["id"] = i + 1
        x += g["w"]
        line_h = max(line_h, g["h"])
        if p["type"] == "row":
            y += 1
            x, line_h = 0, 0
    return panels


def variable(name: str, query: str, label: str, multi: bool = True) -> dict:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "refresh": 2,
        "sort": 1,
        "query": {"query": query, "refId": f"{name}-var"},
        "definition": query,
        "multi": multi,
        "includeAll": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


def dashboard() -> dict:
    return {
        "title": "nodewarden",
        "uid": "nodewarden-node",
        "description": "GPU nodes watched by nodewarden: GPUs (DCGM names), disks, network, InfiniBand, the agent's "
        "rules and its remediation journal.",
        "tags": ["nodewarden", "gpu", "dcgm", "node"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                },
                variable("instance", "label_values(nodewarden_build_info, instance)", "Node"),
                variable("gpu", 'label_values(DCGM_FI_DEV_GPU_UTIL{instance=~"$instance"}, gpu)', "GPU"),
            ]
        },
        "annotations": {
            "list": [
                {
                    "name": "Remediations",
                    "datasource": DS,
                    "enable": True,
                    "iconColor": "orange",
                    "expr": f'changes(nodewarden_remediations_total{{{SEL}, result="succeeded"}}[2m]) > 0',
                    "titleFormat": "{{action}} on {{instance}}",
                    "step": "60s",
                }
            ]
        },
        "panels": layout(PANELS),
    }


if __name__ == "__main__":
    json.dump(dashboard(), sys.stdout, indent=2)
    sys.stdout.write("\n")
