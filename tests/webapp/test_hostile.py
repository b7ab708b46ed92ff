"""Issue 16 through the web app: hostile SVGs, the event loop, request bodies before authentication.

The latency and early-answer tests run a real uvicorn server on 127.0.0.1
with real HTTP clients (httpx, and a raw socket that streams a body slowly).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from webapp_testkit import World, csrf_from, logo_png, make_settings, serve

from storage.models import WebJob, Work
from tests.hostile import deep_svg, turbulence_svg
from webapp import create_app


@pytest.mark.parametrize("path", ["/api/v1/check", "/api/v1/works"])
@pytest.mark.parametrize("kind", ["deep", "turbulence"])
def test_api_answers_a_hostile_svg_with_415(world: World, path: str, kind: str) -> None:
    world.account("ann@example.com")
    data = deep_svg() if kind == "deep" else turbulence_svg()
    r = world.api("ann@example.com").post(path, files={"file": (f"{kind}.svg", data, "image/svg+xml")},
                                          data={"kind": "logo"})
    assert r.status_code == 415, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert f"{kind}.svg: SVG " in r.json()["detail"]


def test_the_works_form_answers_a_deep_svg_with_its_reason(world: World) -> None:
    world.account("ann@example.com")
    client = world.client("ann@example.com")
    token = csrf_from(client.get("/works/new").text)
    r = client.post("/works", data={"csrf_token": token, "kind": "logo", "title": "x"},
                    files={"file": ("deep.svg", deep_svg(), "image/svg+xml")})
    assert r.status_code == 415 and "deep.svg: SVG nests elements deeper than" in r.text
    with world.sessions() as s:
        assert s.scalars(select(Work)).all() == []


def test_import_spools_files_to_disk_and_reports_a_hostile_svg(world: World) -> None:
    world.account("ann@example.com")
    client = world.client("ann@example.com")
    token = csrf_from(client.get("/works/import").text)
    assert client.get("/jobs/0/progress").status_code == 404  # see test_pages' import test
    files = [("files", ("logo.png", logo_png(21, "OK"), "image/png")),
             ("files", ("deep.svg", deep_svg(), "image/svg+xml"))]
    r = client.post("/works/import", data={"csrf_token": token, "kind": "logo"}, files=files)
    assert r.status_code == 303, r.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with world.sessions() as s:
            job = s.scalars(select(WebJob)).one()
            if job.state == "done":
                break
        time.sleep(0.2)
    assert job.state == "done" and job.done == 2
    assert [e["file"] for e in job.errors] == ["deep.svg"]
    assert "SVG nests elements deeper than" in job.errors[0]["error"]
    with world.sessions() as s:
        assert s.scalars(select(Work.title)).all() == ["logo"]
    spool = world.settings.data_dir / "spool"
    assert spool.is_dir() and list(spool.iterdir()) == []  # each job's folder is gone when it ends


def test_import_refuses_a_file_over_the_per_file_cap(world: World) -> None:
    world.account("ann@example.com")
    client = world.client("ann@example.com")
    token = csrf_from(client.get("/works/import").text)
    big = logo_png(22) + b"\0" * world.app.state.ctx.max_upload_bytes
    r = client.post("/works/import", data={"csrf_token": token, "kind": "logo"},
                    files=[("files", ("big.png", big, "image/png"))])
    assert r.status_code == 413 and "big.png" in r.text
    assert list((world.settings.data_dir / "spool").iterdir()) == []


def test_healthz_and_other_tenants_answer_fast_while_a_slow_check_runs(world: World) -> None:
    """Issue 16: a check ran the engine on the event loop and /healthz waited 21 s."""
    world.account("ann@example.com")
    world.account("bob@example.com")
    world.work(world.account("carol@example.com"), logo_png(3), "Carol mark")
    ann, bob = world.tokens["ann@example.com"], world.tokens["bob@example.com"]
    with serve(world.app) as (host, port):
        base = f"http://{host}:{port}"
        with httpx.Client(base_url=base) as warm:  # first requests set routes up; not what is measured
            assert warm.get("/healthz").status_code == 200
            assert warm.get("/api/v1/works", headers={"Authorization": f"Bearer {bob}"}).status_code == 200
        result: dict[str, Any] = {}

        def slow_check() -> None:
            with httpx.Client(base_url=base, timeout=120) as c:
                t0 = time.monotonic()
                r = c.post("/api/v1/check", headers={"Authorization": f"Bearer {ann}"},
                           files={"file": ("turbulence.svg", turbulence_svg(), "image/svg+xml")})
                result.update(status=r.status_code, seconds=time.monotonic() - t0)

        checker = threading.Thread(target=slow_check)
        checker.start()
        time.sleep(0.7)  # the upload is in and the render has started
        timings = []
        with httpx.Client(base_url=base, timeout=30) as c:
            for _ in range(3):
                t0 = time.monotonic()
                assert c.get("/healthz").json() == {"status": "ok"}
                timings.append(time.monotonic() - t0)
                t0 = time.monotonic()
                r = c.get("/api/v1/works", headers={"Authorization": f"Bearer {bob}"})
                assert r.status_code == 200 and r.json() == []
                timings.append(time.monotonic() - t0)
                time.sleep(0.1)
        still_running = checker.is_alive()
        checker.join(timeout=120)
    assert still_running, "the check finished before the other requests were measured"
    assert result["status"] == 415 and result["seconds"] > 1.5
    assert max(timings) < 0.2, timings


def _raw_request(host: str, port: int, head: str, first: bytes) -> tuple[bytes, bool]:
    """Send a request head and the first bytes of its body; return the server's first answer
    and whether it came while the client still had most of its body to send."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(head.encode() + first)
        sock.settimeout(10)
        try:
            answer = sock.recv(4096)
        except TimeoutError:
            return b"", False
        return answer, True


HEAD = ("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}"
        "Content-Type: multipart/form-data; boundary=xyz\r\nContent-Length: {length}\r\n\r\n")
HUGE = 300_000_000
# A well-formed start of a multipart file part, then zeros: a server that parses the body
# keeps reading (the file never ends) instead of failing fast on garbage.
PART = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n' + b"\0" * 65536


def test_an_unauthenticated_huge_upload_is_refused_before_its_body_is_read(world: World) -> None:
    with serve(world.app) as (host, port):
        answer, early = _raw_request(host, port, HEAD.format(path="/api/v1/check", auth="", length=HUGE),
                                     PART)
    assert early, "no answer while the 300 MB body was still unsent"
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b"application/problem+json" in answer


def test_a_signed_in_upload_over_the_request_limit_is_refused_before_its_body(world: World) -> None:
    world.account("ann@example.com")
    auth = f"Authorization: Bearer {world.tokens['ann@example.com']}\r\n"
    with serve(world.app) as (host, port):
        answer, early = _raw_request(host, port, HEAD.format(path="/api/v1/check", auth=auth, length=HUGE),
                                     PART)
    assert early and answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_an_anonymous_page_post_is_limited_to_a_small_body(world: World) -> None:
    with serve(world.app) as (host, port):
        answer, early = _raw_request(host, port, HEAD.format(path="/login", auth="", length=10_000_000),
                                     PART)
    assert early and answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_chunked_body_is_counted_and_refused_at_the_limit(world: World) -> None:
    settings = make_settings(world.settings.data_dir, web={"secret_key": "test-secret-key",
                                                           "max_request_bytes": 1_000_000})
    app = create_app(settings, sessions=world.sessions, blobs=world.blobs, engine=world.engine)
    world.account("ann@example.com")

    def body() -> Iterator[bytes]:
        yield b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(40):
            yield b"\0" * 65536

    with serve(app) as (host, port), httpx.Client(base_url=f"http://{host}:{port}", timeout=30) as c:
        r = c.post("/api/v1/check", content=body(),
                   headers={"Authorization": f"Bearer {world.tokens['ann@example.com']}",
                            "Content-Type": "multipart/form-data; boundary=xyz"})
        assert r.status_code == 413 and "1 MB limit" in r.json()["detail"]
        small = c.post("/api/v1/check", headers={"Authorization": f"Bearer {world.tokens['ann@example.com']}"},
                       files={"file": ("x.png", logo_png(1), "image/png")})
        assert small.status_code == 200
