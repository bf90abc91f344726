"""Run the GPU test suite (``pytest -m gpu``) on a CUDA machine and record the result as JSON.

    python scripts/run_gpu_tests.py --out tests/gpu/last_result.json

The record names the cards it ran on, so a committed result says where it passed. Refuses to
run without CUDA: a run that skipped every test would prove nothing.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path


def _cards() -> list[str]:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout.split(
            "\n"
        )[:-1]
    except (OSError, subprocess.SubprocessError):
        return []


def _commit() -> str | None:
    """The commit tested, where the checkout has its history (a copied tree may not)."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="tests/gpu/last_result.json")
    p.add_argument("pytest_args", nargs="*", default=["tests/gpu"])
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: the GPU suite only means something on a GPU", file=sys.stderr)
        return 2
    junit = Path(tempfile.mkdtemp()) / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    rc = subprocess.call(cmd + args.pytest_args)
    tests = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, detail = "passed", None
        for kind in ("failure", "error", "skipped"):
            node = case.find(kind)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                detail = (node.get("message") or "")[:2000]
        tests.append(
            {
                "test": f"{case.get('classname')}::{case.get('name')}",
                "outcome": outcome,
                "seconds": round(float(case.get("time", 0)), 2),
                "detail": detail,
            }
        )
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    record = {
        "suite": "pytest -m gpu",
        "when": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cards": _cards(),
            "gpu_count": torch.cuda.device_count(),
            "gpu": torch.cuda.get_device_name(0),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
        },
        "tree": _commit(),
        "exit_code": rc,
        "counts": counts,
        "tests": tests,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    print(json.dumps(counts))
    return rc


if __name__ == "__main__":
    sys.exit(main())
