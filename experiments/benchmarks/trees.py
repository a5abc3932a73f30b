"""Before/after in one run: the benchmarks run their worker on this tree and on a baseline checkout.

A benchmark script calls itself in a subprocess with the tree first on ``PYTHONPATH``; the worker
prints one JSON line last, which comes back as a dict.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

#: this checkout (the code "after" the change)
TREE = Path(__file__).resolve().parents[2]


def trees(baseline: str | None) -> list[tuple[str, Path]]:
    """``[("before", baseline), ("after", this tree)]``, or only this tree without a baseline."""
    return ([("before", Path(baseline).resolve())] if baseline else []) + [("after", TREE)]


def tree_environment(tree: Path) -> dict[str, str]:
    """This process's environment with ``tree`` first on ``PYTHONPATH``."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree.resolve()), os.environ.get("PYTHONPATH", "")]))


def run_worker(script: str, tree: Path, arguments: list[str]) -> dict:
    """Run ``script arguments`` with ``tree`` first on ``PYTHONPATH``; its last output line, parsed."""
    out = subprocess.run([sys.executable, script, *arguments], capture_output=True, text=True, env=tree_environment(tree))
    if out.returncode:
        raise RuntimeError(f"worker {script} {' '.join(arguments)} failed on {tree}:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def add_tree_arguments(parser: argparse.ArgumentParser) -> None:
    """``--threads``, ``--device``, ``--baseline`` and the worker's hidden ``--data``."""
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--baseline", help="a checkout of the code before the change: measured too, first")
    parser.add_argument("--data", help=argparse.SUPPRESS)


def serve(worker, args: argparse.Namespace, role: str | None) -> bool:
    """In a worker subprocess (``role`` given): print ``worker(args)`` as the JSON line
    :func:`run_worker` reads and return True; in the parent, return False."""
    if role is None:
        return False
    print(json.dumps(worker(args)))
    return True
