"""``nodewarden manifest create DIR``: write the checksum manifest of a protected dataset.

    nodewarden manifest create /data/imagenet                 # -> /data/imagenet/.nodewarden.manifest
    nodewarden manifest create /data/imagenet -o /etc/nodewarden/imagenet.manifest
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from agent.core.errors import NodewardenError
from remediations.manifest import DEFAULT_NAME, create, write

HELP = "write the checksum manifest (blake3, size, path) of a dataset directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register arguments."""
    parser.add_argument("dir", help="dataset root")
    parser.add_argument("-o", "--output", help=f"manifest file (default: DIR/{DEFAULT_NAME})")
    parser.add_argument("--threads", type=int, default=1, help="hash large files with this many threads")


def main(args: argparse.Namespace) -> int:
    """Hash and write; exit 0, or 2 when the directory or manifest cannot be used."""
    if not os.path.isdir(args.dir):
        print(f"error: {args.dir} is not a directory", file=sys.stderr)
        return 2
    out = args.output or os.path.join(args.dir, DEFAULT_NAME)
    start = time.monotonic()
    try:
        entries = create(args.dir, args.threads)
        write(out, entries)
    except (NodewardenError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    size = sum(e.size for e in entries)
    print(f"{out}: {len(entries)} files, {size / 1e6:.1f} MB hashed in {time.monotonic() - start:.1f}s")
    return 0
