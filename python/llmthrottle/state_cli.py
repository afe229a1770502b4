"""Inspect or remove a shared-memory limiter table.

    llmthrottle state inspect [NAME] [--path FILE] [--json]
    llmthrottle state reset NAME [--path FILE] [--yes]

`inspect` lists every live key with its level under each limit, and the processes holding
concurrency slots; without a name it lists the tables under /dev/shm (the sidecar's included).
`reset` deletes the table: processes that have it open keep using the old one until they restart, so
stop the workers first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ._native import SharedState, StateError

_QUOTA_USED_MASK = (1 << 48) - 1


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    inspect = sub.add_parser("inspect", help="list the keys, levels and holders of a table")
    inspect.add_argument("name", nargs="?", help="the SharedState name (none: list the tables)")
    inspect.add_argument("--path", help="the table file, if not /dev/shm/llmthrottle-NAME")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    reset = sub.add_parser("reset", help="delete a table (stop the processes using it first)")
    reset.add_argument("name", help="the SharedState name")
    reset.add_argument("--path", help="the table file, if not /dev/shm/llmthrottle-NAME")
    reset.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def describe(label: str, kind: str, value: int, now_ns: int) -> dict[str, Any]:
    """One entry in words: which limit, and its level now."""
    parts = label.split("\x1f")
    namespace, layer, pattern, limit = (parts + ["", "", "", ""])[:4]
    entry: dict[str, Any] = {"namespace": namespace, "layer": int(layer or 0), "pattern": pattern, "limit": limit}
    if kind == "rate":
        entry["drains_in_s"] = max(0, value - now_ns) / 1e9
    elif kind == "concurrency":
        entry["in_flight"] = value
    else:
        entry["used"] = value & _QUOTA_USED_MASK
        entry["period_tag"] = value >> 48
    return entry


_TABLE_DIR = "/dev/shm"
_TABLE_PREFIX = "llmthrottle-"


def list_tables(as_json: bool) -> int:
    """The shared tables in /dev/shm: name, size, owner uid, last change."""
    import os

    tables: list[dict[str, Any]] = []
    for entry in sorted(os.scandir(_TABLE_DIR), key=lambda e: e.name) if os.path.isdir(_TABLE_DIR) else ():
        if entry.name.startswith(_TABLE_PREFIX) and entry.is_file(follow_symlinks=False):
            info = entry.stat(follow_symlinks=False)
            tables.append(
                {
                    "name": entry.name[len(_TABLE_PREFIX) :],
                    "path": entry.path,
                    "bytes": info.st_size,
                    "uid": info.st_uid,
                    "mode": f"{info.st_mode & 0o777:04o}",
                    "modified": info.st_mtime,
                }
            )
    if as_json:
        print(json.dumps(tables, indent=2))
    elif not tables:
        print(f"no llmthrottle tables in {_TABLE_DIR}")
    else:
        print(f"{'NAME':40s} {'MB':>8s} {'UID':>6s} {'MODE':>5s}  MODIFIED")
        for table in tables:
            modified = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(table["modified"]))
            print(f"{table['name']:40s} {table['bytes'] / 1e6:8.1f} {table['uid']:6d} {table['mode']:>5s}  {modified}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.action == "inspect" and args.name is None:
        return list_tables(args.json)
    try:
        if args.action == "reset":
            if not args.yes:
                if not sys.stdin.isatty():
                    print("llmthrottle state: reset deletes the table; pass --yes to confirm", file=sys.stderr)
                    return 2
                answer = input(f"delete the shared table {args.name!r}? processes using it must restart [y/N] ")
                if answer.strip().lower() not in ("y", "yes"):
                    print("nothing deleted")
                    return 1
            removed = SharedState.remove(args.name, path=args.path)
            print(f"removed {args.name!r}" if removed else f"no table named {args.name!r}")
            return 0
        state = SharedState.attach(args.name, path=args.path)
    except (StateError, ValueError) as error:
        print(f"llmthrottle state: {error}", file=sys.stderr)
        return 1
    now_ns = time.monotonic_ns()
    entries = [
        {"key": key, "kind": kind, "handles": pins, **describe(label, kind, value, now_ns)}
        for label, kind, key, value, pins in state.entries()
    ]
    leases = [
        {"pid": pid, "alive": alive, "phase": phase, "limit": (label or "").split("\x1f")[-1], "key": key}
        for pid, alive, phase, label, key in state.leases()
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "stats": {k: str(v) if k == "path" else v for k, v in state.stats().items()},
                    "entries": entries,
                    "leases": leases,
                },
                indent=2,
            )
        )
        return 0
    stats = state.stats()
    print(f"{stats['path']}: {stats['live']} live of {stats['capacity']} keys, {stats['file_bytes']} bytes")
    print(f"{'namespace':<12} {'pattern':<16} {'limit':<24} {'key':<32} level")
    for e in sorted(entries, key=lambda e: (e["namespace"], e["pattern"], e["key"], e["limit"])):
        if e["kind"] == "rate":
            level = f"drains in {e['drains_in_s']:.3f}s"
        elif e["kind"] == "concurrency":
            level = f"{e['in_flight']} in flight"
        else:
            level = f"{e['used']} used this period"
        print(f"{e['namespace']:<12} {e['pattern']:<16} {e['limit']:<24} {e['key']:<32} {level}")
    for lease in leases:
        state_word = "alive" if lease["alive"] else "dead"
        print(f"held by pid {lease['pid']} ({state_word}, {lease['phase']}): {lease['key']} {lease['limit']}")
    return 0
