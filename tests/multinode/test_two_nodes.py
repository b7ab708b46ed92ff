"""Two nodes, nothing shared but the services (issue 15, point 7).

Node A runs the web process (owners register works through the JSON API) and
a worker that crawls, fetches and runs maintenance; node B runs a worker that
analyses and drafts notices. Each has an empty DATA_DIR of its own; they share
only PostgreSQL, Redis and S3. A work registered on A is found on B, one
notice is drafted, a SIGKILL of B's worker mid-analysis loses and doubles
nothing, and a vocabulary retrain run on A is what B's engine then sees.
"""

from __future__ import annotations

import io
import json

import httpx
import pytest
from PIL import Image

from workers.demo import painting, photo

from .conftest import Cluster, Node, free_port, wait_answering

pytestmark = [pytest.mark.multinode, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


class NotShared(AssertionError):
    """Node B could not see a work registered on node A: some state is still under a DATA_DIR."""


OWNER = "artist@example.com"
PASSWORD = "correct horse battery"
ANALYSE_QUEUES = "analyse,notify"
CRAWL_QUEUES = "crawl,fetch,maintenance"
WALKS = 20


def jpeg(img: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def copy_of(work: Image.Image, i: int) -> bytes:
    """A cropped, rescaled, recompressed copy (as in tests/workers)."""
    boxes = [(60, 40, 700, 540), (0, 0, 640, 480), (100, 80, 768, 576), (30, 30, 600, 500)]
    return jpeg(work.crop(boxes[i % len(boxes)]).resize((512 - 16 * i, 400 - 12 * i)), 80 - 3 * i)


def register_owner(node: Node) -> str:
    """An owner with the contact details notices need, alerts off (no SMTP
    here); returns their API token."""
    node.cli("users", "add", OWNER, "--role", "owner", "--password-stdin", input=PASSWORD + "\n")
    node.cli("owners", "set", OWNER, "--legal-name", "A. Artist", "--address", "1 High St, Town",
             "--phone", "+1 555 0100", "--alerts", "off")
    return node.cli("users", "token", OWNER).strip()


def index_status(node: Node) -> dict[str, object]:
    out = node.cli("index", "status", "--json")
    got = json.loads(out)
    assert isinstance(got, dict), out
    return got


def test_two_nodes_share_only_the_services(cluster: Cluster) -> None:
    a, b = cluster.node("a"), cluster.node("b")
    a.cli("init")
    token = register_owner(a)
    a.cli("sources", "add", "site", "mastodon", cluster.site.url)

    port = free_port()
    a.start_web(port)
    web = f"http://127.0.0.1:{port}"
    wait_answering(cluster, f"{web}/healthz")
    a.start_worker(CRAWL_QUEUES, concurrency=2)
    b.start_worker(ANALYSE_QUEUES, concurrency=1)

    # -- a work registered through the web API on node A ------------------
    work = painting(314)
    resp = httpx.post(f"{web}/api/v1/works", headers={"Authorization": f"Bearer {token}"},
                      files={"file": ("dusk.jpg", jpeg(work, 95), "image/jpeg")},
                      data={"title": "Dusk", "kind": "artwork"}, timeout=120)
    assert resp.status_code == 201, (resp.status_code, resp.text, cluster.logs())
    work_id = int(resp.json()["id"])

    # -- ... is found on node B in a copy node A crawled --------------------
    copy_url = cluster.site.media_url(cluster.site.add_post(copy_of(work, 0), content_type="image/jpeg",
                                                            text="copy 0", author="copier"))
    for i in range(2):
        cluster.site.add_post(jpeg(photo(2718 + i)), content_type="image/jpeg", text=f"holiday {i}", author="hiker")
    a.cli("crawl")
    cluster.wait_settled(3)
    ups = cluster.uploads()
    assert all(st.value == "analysed" for _, _, st, _ in ups), ups
    got = cluster.matches()
    if got != {(copy_url, work_id): 1}:
        raise NotShared(f"node B did not find work {work_id} (registered through node A's web API) in "
                        f"{copy_url}: matches {got}\n{cluster.logs()}")
    assert cluster.notice_items() == {(work_id, copy_url): 1}, cluster.state()
    assert cluster.notices() == 1, cluster.state()

    # -- SIGKILL of node B's worker while it analyses ------------------------
    copy2_url = cluster.site.media_url(cluster.site.add_post(copy_of(work, 1), content_type="image/jpeg",
                                                             text="copy 1", author="copier"))
    # Enough uploads that node B is busy analysing for a few seconds: an
    # analysis takes a tenth of a second, and the kill must land inside one.
    for i in range(WALKS):
        cluster.site.add_post(jpeg(photo(3141 + i)), content_type="image/jpeg", text=f"walk {i}", author="hiker")
    a.cli("crawl")

    def started() -> list[dict[str, object]]:
        return [m for m in cluster.unacked()
                if m["task"] == "artwatch.analyse_upload" and cluster.deliveries(str(m["id"])) >= 1]

    held = cluster.wait_for(started, 120, "node B's worker to start analysing an upload", every=0.01)
    b.kill("worker")
    assert held, "nothing was in flight on node B"
    b_log = cluster.tmp / "b-worker.log"
    killed_at = b_log.stat().st_size
    b.start_worker(ANALYSE_QUEUES, concurrency=1)
    # Back after the visibility timeout (8 s) and the next restore pass.
    cluster.wait_settled(4 + WALKS, timeout=180)
    ups = cluster.uploads()
    assert all(st.value == "analysed" for _, _, st, _ in ups), ups
    assert cluster.matches() == {(copy_url, work_id): 1, (copy2_url, work_id): 1}, cluster.state()
    items = cluster.notice_items()
    assert items == {(work_id, copy_url): 1, (work_id, copy2_url): 1}, cluster.state()
    assert cluster.notices() == 1, cluster.state()  # the second copy joined the open draft for the host
    assert cluster.dead_letters() == [], cluster.state()
    restarted = b_log.read_bytes()[killed_at:].decode(errors="replace")
    for m in held:  # the restarted worker got the killed one's message back and finished it
        assert f"artwatch.analyse_upload[{m['id']}] succeeded" in restarted, (m, cluster.logs())

    # -- a retrain run on node A is what node B sees --------------------------
    before = index_status(b)
    assert before["works"] == 1 and before["vocabulary"], before
    a.cli("index", "rebuild")
    after_a = index_status(a)
    assert after_a["vocabulary"] != before["vocabulary"], (before, after_a)
    after_b = index_status(b)
    assert after_b == after_a, f"node B sees {after_b}, node A retrained to {after_a}"
    # And node B's running worker switches to it before its next analysis
    # (its log names the vocabulary it restored), and a new copy is still found.
    before_copy3 = b_log.stat().st_size
    copy3_url = cluster.site.media_url(cluster.site.add_post(copy_of(work, 2), content_type="image/jpeg",
                                                             text="copy 2", author="copier"))
    a.cli("crawl")
    cluster.wait_settled(5 + WALKS)
    assert cluster.matches() == {(copy_url, work_id): 1, (copy2_url, work_id): 1,
                                 (copy3_url, work_id): 1}, cluster.state()
    assert cluster.dead_letters() == [], cluster.state()
    switched = b_log.read_bytes()[before_copy3:].decode(errors="replace")
    assert f"of vocabulary {after_a['vocabulary']} from a snapshot" in switched \
        or f"switched to vocabulary {after_a['vocabulary']}" in switched, cluster.logs()
