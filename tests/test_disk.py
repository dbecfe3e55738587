"""A full disk and a run directory made read-only mid-run, for real: the run stops with one line
and exit code 3, leaves no half-written line, and the same command then resumes to every record
exactly once, equal to a run that was never stopped.

The full disk is a small tmpfs mounted here (root needed); the read-only directory is
``chmod -R a-w`` while a run writes into it, the run being a process that permission bits bind
(root without CAP_DAC_OVERRIDE; a plain process when the tests do not run as root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import ROOT, critique_args, read_jsonl, write_prompts

N = 8  # prompts


def args(model, prompts, out) -> list[str]:
    return critique_args(model, prompts, out, 6, "--chunk-size", "1")


def cai_main(*argv) -> int:
    """``cai ARGV`` in this process; its exit code."""
    from cai.cli import main

    try:
        main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code
    return 0


def start(*argv, prefix: Sequence[str] = ()) -> subprocess.Popen:
    """``python -m cai ARGV`` as a real process, behind ``prefix`` (e.g. setpriv)."""
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "cai", *map(str, argv)],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    return write_prompts(tmp_path_factory.mktemp("prompts") / "p.jsonl", N)


@pytest.fixture(scope="module")
def reference(tiny_model, prompts, tmp_path_factory) -> dict[str, list[dict]]:
    """What an undisturbed run of the same command writes (greedy, so the same texts)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert cai_main(*args(tiny_model, prompts, out)) == 0
    return {name: read_jsonl(out / name) for name in ("critiques.jsonl", "sft.jsonl")}


@contextmanager
def small_disk(where: Path, size: str):
    """A tmpfs of ``size`` mounted on ``where`` for the block."""
    assert os.geteuid() == 0, "mounting a tmpfs needs root: run this test as root"
    where.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    done = subprocess.run(mount, capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs: {done.stderr}"
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def one_line(stderr: str) -> str:
    """The run's only message: one non-empty line, no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


def whole_lines(out: Path) -> list[dict]:
    """The finished critique records, after checking that every JSONL file of ``out`` is whole
    lines of JSON (nothing half written) and that no temporary file is left."""
    for path in out.glob("*.jsonl"):
        data = path.read_bytes()
        assert not data or data.endswith(b"\n"), f"{path.name}: a line cut short"
        for n, line in enumerate(data.splitlines(), 1):
            try:
                json.loads(line)
            except ValueError:
                pytest.fail(f"{path.name}:{n}: not JSON: {line[:80]!r}")
    assert not list(out.glob(".*.cai-tmp"))
    return read_jsonl(out / "critiques.jsonl") if (out / "critiques.jsonl").exists() else []


def assert_complete(out: Path, reference: dict[str, list[dict]]) -> None:
    """Every prompt's record exactly once, equal to the undisturbed run's; the same SFT rows."""
    records = whole_lines(out)
    assert sorted(r["id"] for r in records) == sorted(f"q{i}" for i in range(N))
    by_id = {r["id"]: r for r in records}
    assert by_id == {r["id"]: r for r in reference["critiques.jsonl"]}
    steps = read_jsonl(out / "steps.jsonl")
    assert len({s["key"] for s in steps}) == len(steps) == N * 5  # no call made twice
    assert read_jsonl(out / "sft.jsonl") == reference["sft.jsonl"]
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


def test_full_disk_stops_with_one_line_then_resumes(tiny_model, prompts, reference, tmp_path):
    with small_disk(tmp_path / "disk", "1m") as disk:
        filler = disk / "filler"
        room = 6 * os.statvfs(disk).f_frsize  # the lock, the manifest and a few records
        filler.write_bytes(bytes(shutil.disk_usage(disk).free - room))
        out = disk / "run"

        proc = start(*args(tiny_model, prompts, out))
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 3, stderr
        line = one_line(stderr)
        assert line.startswith(f"error: {out}/") and ": no space left on device; " in line, line
        assert f"finished work is kept in {out}; free some space and run the same" in line
        kept = whole_lines(out)
        assert 0 < len(kept) < N, "the filler should leave room for a few records only"

        filler.unlink()
        assert cai_main(*args(tiny_model, prompts, out)) == 0
        assert_complete(out, reference)


def bound_by_permissions() -> list[str]:
    """A command prefix under which a process cannot write where the mode bits say no: root
    without the capabilities that override them (the venv's Python may live in root's home,
    so another user could not run it); nothing for a process that is not root."""
    if os.geteuid() != 0:
        return []
    assert shutil.which("setpriv"), "setpriv (util-linux) is needed to drop root's override"
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]


def test_run_dir_made_read_only_mid_run_stops_then_resumes(
    tiny_model, prompts, reference, tmp_path
):
    out = tmp_path / "run"
    first = out / "critiques.jsonl"
    proc = start(*args(tiny_model, prompts, out), prefix=bound_by_permissions())
    try:
        deadline = time.monotonic() + 300
        while not (first.exists() and b"\n" in first.read_bytes()):  # a first record
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no record written in 300 s"
            time.sleep(0.01)
        subprocess.run(["chmod", "-R", "a-w", str(out)], check=True)
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 3, stderr
        line = one_line(stderr)
        assert line.startswith(f"error: {out}/") and ": permission denied; " in line, line
        assert f"finished work is kept in {out}; restore write access and run the same" in line
        kept = whole_lines(out)
        assert 0 < len(kept) < N
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if out.exists():
            subprocess.run(["chmod", "-R", "u+w", str(out)], check=True)

    assert cai_main(*args(tiny_model, prompts, out)) == 0
    assert_complete(out, reference)


def test_append_that_does_not_fit_leaves_the_file_as_it_was(tmp_path):
    from cai.store import JsonlLog

    with small_disk(tmp_path / "disk", "16k") as disk:
        log = JsonlLog(disk / "a.jsonl")
        log.append([{"text": "x" * 3000}])
        before = log.path.read_bytes()
        with pytest.raises(OSError, match="No space left on device") as caught:
            log.append([{"text": "y" * 3000}] * 8)  # fills the free pages, then fails
        assert caught.value.filename == str(log.path)
        assert log.path.read_bytes() == before


def test_write_atomic_whose_rename_fails_leaves_no_temporary_file(tmp_path):
    from cai.store import write_atomic

    (tmp_path / "out.json").mkdir()  # a file cannot replace a directory
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path / "out.json", "{}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_full_disk_before_the_run_starts(cli, tiny_model, prompts, tmp_path):
    with small_disk(tmp_path / "disk", "8k") as disk:
        (disk / "filler").write_bytes(bytes(shutil.disk_usage(disk).free))
        out = disk / "run"
        code, _, stderr = cli(*args(tiny_model, prompts, out))
        assert code == 3
        assert one_line(stderr) == (
            f"error: {out / '.cai.lock'}: no space left on device; free some space and run the "
            "same command again"
        )
        assert not out.exists()  # a run that wrote nothing leaves no directory
