"""Scrape a URL N times over one keep-alive connection; print latency percentiles as JSON.

Runs as its own process so the client's CPU is not charged to the server being measured.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
import urllib.parse


def scrape(url: str, n: int) -> dict[str, float]:
    """Latency stats (ms) of ``n`` GETs of ``url`` on a persistent connection."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    lat = []
    size = 0
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", u.path, headers={"Accept": "text/plain"})
        resp = conn.getresponse()
        body = resp.read()
        lat.append((time.perf_counter() - t0) * 1000)
        size = len(body)
    conn.close()
    lat.sort()
    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    return {"p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99) - 1], "max_ms": lat[-1],
            "bytes": size, "series": series}


if __name__ == "__main__":
    print(json.dumps(scrape(sys.argv[1], int(sys.argv[2]))))
