"""The production install works on its own: a clean virtualenv, no extras.

This installs the project the way the container image does (the files the
Dockerfile copies, then the script its RUN line calls) into a new virtualenv,
and runs the commands a new user runs first on the suite's own small images.
Any import that only a test or an extra brings in (scipy once arrived only
through the test extras) fails here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.matching.test_scan import _picture

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _dockerfile_copies() -> list[tuple[list[str], str]]:
    """``COPY src... dest`` lines of the Dockerfile, as (sources, destination)."""
    copies = []
    for line in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if line.startswith("COPY "):
            *sources, dest = line.split()[1:]
            copies.append((sources, dest))
    return copies


def test_the_dockerfile_installs_with_the_tested_script() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r'^ARG EXTRAS=""$', text, re.M), "the image's default install must have no extras"
    assert re.search(r'^RUN sh docker/install\.sh python "\$EXTRAS"', text, re.M)
    assert not re.search(r"pip install", text), "the Dockerfile must install only through docker/install.sh"


def test_plain_install_registers_and_scans(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    for sources, dest in _dockerfile_copies():
        target = app / dest.lstrip("./") if dest not in ("./", ".") else app
        for src in sources:
            path = ROOT / src
            if path.is_dir():
                shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
            else:
                target.mkdir(parents=True, exist_ok=True) if dest.endswith("/") else target.parent.mkdir(
                    parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name if dest.endswith("/") else target)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARTWATCH_", "PYTHON", "VIRTUAL_ENV"))}
    install = subprocess.run(["sh", "docker/install.sh", str(py)], cwd=app, env=env, capture_output=True,
                             text=True, timeout=1100, check=False)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    no_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True, env=env,
                              cwd=tmp_path, check=False)
    assert no_torch.returncode != 0, "the plain install must not bring torch"
    sscd = subprocess.run([str(py), "-c", "from matching.signals.sscd import SscdEmbedder; "
                           "print(SscdEmbedder('sscd_distilled').shape)"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert sscd.returncode == 0 and "(512,)" in sscd.stdout, sscd.stderr[-3000:]  # onnxruntime and the models

    data = tmp_path / "data"
    env = {**env, "ARTWATCH_DATA_DIR": str(data)}
    ds = tmp_path / "ds"
    (ds / "works").mkdir(parents=True)
    (ds / "uploads").mkdir()
    Image.fromarray(_picture(0)).save(ds / "works" / "w0.png")
    for i in (1, 2):
        Image.fromarray(_picture(i)).save(ds / "works" / f"w{i}.png")
    (ds / "works.jsonl").write_text("".join(
        json.dumps({"id": f"w{i}", "file": f"works/w{i}.png", "kind": "artwork", "owner": "o1", "title": f"t{i}"})
        + "\n" for i in (1, 2)))
    Image.fromarray(_picture(1)[20:280, 30:370]).save(ds / "uploads" / "u1.jpg", quality=70)
    Image.fromarray(_picture(99)).save(ds / "uploads" / "u9.jpg")
    (ds / "uploads.jsonl").write_text(json.dumps({"id": "u1", "file": "uploads/u1.jpg"}) + "\n"
                                      + json.dumps({"id": "u9", "file": "uploads/u9.jpg"}) + "\n")

    artwatch = str(venv / "bin" / "artwatch")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([artwatch, *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600, check=False)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        assert "Error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        return proc

    run("init")
    run("works", "add", str(ds / "works" / "w0.png"), "--owner", "me@studio.example", "--create-owner")
    run("works", "import", str(ds / "works.jsonl"))
    assert run("works", "list").stdout.count("artwork") == 3
    out = tmp_path / "predictions.jsonl"
    run("scan", "--manifest", str(ds / "uploads.jsonl"), "--out", str(out), "--workers", "1")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    matched = {(r["upload"], r["work"]) for r in rows if r["match"]}
    assert matched == {("u1", "w1")}, rows
