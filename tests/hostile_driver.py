"""Runs cai commands in this one process and reports, per command, what a user would see.

``python tests/hostile_driver.py CASES.json`` reads a JSON list of ``{"id", "argv"}`` and prints
one JSON list: per case its exit code, stdout, stderr, an uncaught exception if one escaped
``cai.cli.main``, the heavy modules (torch, transformers, ...) it imported, and its seconds. One
process for many cases keeps the fuzz suite fast; a module once imported stays imported, so the
first case that loads one is the case reported.
"""

from __future__ import annotations

import io
import json
import sys
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout

HEAVY = ("torch", "transformers", "trl", "datasets", "vllm", "peft", "accelerate")


def run(argv: list[str]) -> dict:
    from cai.cli import main

    before = set(sys.modules)
    out, err = io.StringIO(), io.StringIO()
    uncaught = None
    t0 = time.perf_counter()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException as exc:  # noqa: BLE001 - what escapes is what the test reports
            code = None
            uncaught = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return {
        "code": code,
        "stdout": out.getvalue(),
        "stderr": err.getvalue(),
        "uncaught": uncaught,
        "heavy": sorted(m for m in HEAVY if m in sys.modules and m not in before),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as f:
        cases = json.load(f)
    results = [{"id": c["id"], **run(c["argv"])} for c in cases]
    sys.stdout.write(json.dumps(results))


if __name__ == "__main__":
    main()
