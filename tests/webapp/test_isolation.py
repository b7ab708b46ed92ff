"""Tenant isolation at every route.

ROUTES below classifies each (method, path) the app answers. The first test
fails when the app gains a route that is not in the table, so every new
route must say how it is isolated and get exercised here.

- owned: takes the id of an owner's object. Owner B asking for owner A's id
  gets 404 (exactly as for a missing id), and A's object is unchanged. A
  positive control shows that A's own request is not a 404, so the 404 is
  the access rule and not a wrong URL.
- listing: lists or acts on the caller's own data. B's response never
  contains A's titles, URLs or ids.
- staff: reviewer or admin only; an owner gets 403 and sees nothing.
- public: no login (login form, signed unsubscribe link, static files, OpenAPI).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from webapp_testkit import World, csrf_from, logo_png, png, product_shot

from storage.models import Account, Match, MatchStatus, Notice, NoticeState, Role, Source, WebJob, Work
from webapp.app import route_table
from workers.demo import painting

ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/"): "public",
    ("GET", "/login"): "public",
    ("POST", "/login"): "public",
    ("POST", "/logout"): "public",
    ("GET", "/unsubscribe/{token}"): "public",
    ("POST", "/unsubscribe/{token}"): "public",
    ("MOUNT", "/static"): "public",
    ("GET", "/api/v1/openapi.json"): "public",
    ("GET", "/healthz"): "public",
    ("GET", "/favicon.ico"): "public",
    ("GET", "/dashboard"): "listing",
    ("GET", "/works"): "listing",
    ("GET", "/works/new"): "listing",
    ("POST", "/works"): "listing",
    ("GET", "/works/import"): "listing",
    ("POST", "/works/import"): "listing",
    ("GET", "/matches"): "listing",
    ("GET", "/notices"): "listing",
    ("GET", "/matches.csv"): "listing",
    ("GET", "/notices.csv"): "listing",
    ("POST", "/matches/decide"): "listing",
    ("GET", "/profile"): "listing",
    ("POST", "/profile"): "listing",
    ("POST", "/profile/token"): "listing",
    ("GET", "/api/v1/works"): "listing",
    ("POST", "/api/v1/works"): "listing",
    ("GET", "/api/v1/matches"): "listing",
    ("GET", "/api/v1/notices"): "listing",
    ("POST", "/api/v1/check"): "listing",
    ("GET", "/works/{work_id}"): "owned",
    ("GET", "/works/{work_id}/image"): "owned",
    ("POST", "/works/{work_id}/delete"): "owned",
    ("GET", "/works/{work_id}/edit"): "owned",
    ("POST", "/works/{work_id}/edit"): "owned",
    ("GET", "/jobs/{job_id}"): "owned",
    ("GET", "/jobs/{job_id}/progress"): "owned",
    ("GET", "/matches/{match_id}"): "owned",
    ("GET", "/matches/{match_id}/image"): "owned",
    ("POST", "/matches/{match_id}/decide"): "owned",
    ("GET", "/notices/{notice_id}"): "owned",
    ("GET", "/notices/{notice_id}/evidence.zip"): "owned",
    ("GET", "/notices/{notice_id}/body.html"): "owned",
    ("POST", "/notices/{notice_id}/approve"): "owned",
    ("POST", "/notices/{notice_id}/edit"): "owned",
    ("POST", "/notices/{notice_id}/reject"): "owned",
    ("POST", "/notices/{notice_id}/recipient"): "owned",
    ("POST", "/notices/{notice_id}/send"): "owned",
    ("POST", "/notices/{notice_id}/mark-sent"): "owned",
    ("POST", "/notices/{notice_id}/reply"): "owned",
    ("POST", "/notices/{notice_id}/counter"): "owned",
    ("GET", "/notices/{notice_id}/notice.eml"): "owned",
    ("GET", "/notices/{notice_id}/notice.pdf"): "owned",
    ("GET", "/api/v1/works/{work_id}"): "owned",
    ("DELETE", "/api/v1/works/{work_id}"): "owned",
    ("GET", "/api/v1/matches/{match_id}"): "owned",
    ("GET", "/api/v1/notices/{notice_id}"): "owned",
    ("GET", "/review"): "staff",
    ("GET", "/uploads"): "staff",
    ("GET", "/uploads/{upload_id}/image"): "staff",
    ("GET", "/admin/sources"): "staff",
    ("POST", "/admin/sources"): "staff",
    ("POST", "/admin/sources/{source_id}/toggle"): "staff",
    ("POST", "/admin/sources/{source_id}/delete"): "staff",
    ("POST", "/admin/sources/{source_id}/crawl"): "staff",
    ("GET", "/admin/users"): "staff",
    ("POST", "/admin/users"): "staff",
    ("POST", "/admin/users/{user_id}/role"): "staff",
    ("GET", "/admin/hosts"): "staff",
    ("POST", "/admin/hosts"): "staff",
}

# Destructive routes act on their own copy of A's work so the other checks still have one.
SPARE_WORK = {
    ("POST", "/works/{work_id}/delete"): "spare1",
    ("DELETE", "/api/v1/works/{work_id}"): "spare2",
}

A_TITLE = "Ann secret logo"
A_URL = "https://annonly.example/p/42"


class Scene:
    def __init__(self, world: World, *, indexed: bool = False) -> None:
        self.world = world
        self.a = world.account("ann@example.com")
        self.b = world.account("bob@example.com")
        world.account("root@example.com", Role.ADMIN)
        a_logo = logo_png(1, "ANN")
        self.ids: dict[str, int] = {
            "work_id": world.work(self.a, a_logo, A_TITLE, indexed=indexed),
            "spare1": world.work(self.a, logo_png(2, "SP1"), "spare one"),
            "spare2": world.work(self.a, logo_png(3, "SP2"), "spare two"),
        }
        shot, region = product_shot(a_logo)
        self.a_logo, self.shot = a_logo, shot
        self.ids["match_id"] = world.match(self.ids["work_id"], shot, url=A_URL, region=region)
        self.ids["notice_id"] = world.notice(self.a, [self.ids["match_id"]], host="annonly.example")
        with world.sessions() as s:
            job = WebJob(owner_id=self.a, kind="import", state="done", total=1, done=1, errors=[])
            src = Source(name="feed", kind="rss", url="https://feed.example/rss")
            s.add_all([job, src])
            s.commit()
            self.ids["job_id"], self.ids["source_id"] = job.id, src.id
        self.ids["user_id"] = self.a
        with world.sessions() as s:
            upload_id = s.scalar(select(Match.upload_id).where(Match.id == self.ids["match_id"]))
            assert upload_id is not None
            self.ids["upload_id"] = upload_id
        self.b_web = world.client("bob@example.com")
        self.b_csrf = csrf_from(self.b_web.get("/profile").text)
        self.b_api = world.api("bob@example.com")
        self.a_web = world.client("ann@example.com")
        self.a_csrf = csrf_from(self.a_web.get("/profile").text)
        self.a_api = world.api("ann@example.com")

    def fill(self, key: tuple[str, str], path: str) -> str:
        ids = dict(self.ids)
        if key in SPARE_WORK:
            ids["work_id"] = self.ids[SPARE_WORK[key]]
        return path.format(
            **{
                k: ids[k]
                for k in ("work_id", "match_id", "notice_id", "job_id", "source_id", "user_id", "upload_id")
                if "{" + k + "}" in path
            }
        )

    @staticmethod
    def _wait_for_job(client: TestClient, job_url: str) -> None:
        # Let the import thread finish: the matching decoder and FastAPI both use
        # warnings.catch_warnings(), which is not thread-safe under pytest's "error" filter.
        deadline = time.monotonic() + 60
        while 'data-state="done"' not in client.get(job_url + "/progress").text:
            assert time.monotonic() < deadline, "import job did not finish"
            time.sleep(0.1)

    def request(self, who: str, method: str, path: str) -> Any:
        api = path.startswith("/api/")
        client: TestClient = (
            (self.a_api if who == "a" else self.b_api)
            if api
            else (self.a_web if who == "a" else self.b_web)
        )
        csrf = self.a_csrf if who == "a" else self.b_csrf
        data: dict[str, Any] = {} if api else {"csrf_token": csrf}
        files = None
        if path in ("/works", "/api/v1/works"):
            files = {"file": ("mine.png", png(painting(7)), "image/png")}
            data.update(title="bob work", kind="artwork")
        elif path == "/works/import":
            files = {"files": ("mine.png", png(painting(8)), "image/png")}
            data["kind"] = "artwork"
        elif path == "/api/v1/check":
            files = {"file": ("probe.jpg", self.shot, "image/jpeg")}
        elif path.endswith("/reject"):
            data["reason"] = "probe"
        elif path.startswith("/works/") and path.endswith("/edit"):
            data.update(title=A_TITLE if who == "a" else "hijacked", kind="logo")
        elif path.endswith("/edit"):
            data.update(subject="hijacked", body_text="hijacked")
        elif path.endswith("/approve"):
            data["none_applies"] = "on"
        elif path == "/profile":
            data["alert_mode"] = "off"
        elif path == "/matches/decide":  # a bulk decision naming A's match
            data.update(ids=str(self.ids["match_id"]), decision="ignore")
        elif path.startswith("/matches/") and path.endswith("/decide"):
            data["decision"] = "unsure"
        if method == "GET":
            return client.get(path)
        if method == "DELETE":
            return client.delete(path)
        r = client.post(path, data=data, files=files)
        if path == "/works/import" and r.status_code == 303:
            self._wait_for_job(client, r.headers["location"])
        if path == "/profile/token":  # the old API token is replaced: keep using the new one
            import re

            token = re.search(r'id="new-token">([^<]+)<', r.text)
            assert token is not None
            (self.a_api if who == "a" else self.b_api).headers["Authorization"] = (
                f"Bearer {token.group(1)}"
            )
        return r


def test_every_route_is_classified(world: World) -> None:
    routes = set(route_table(world.app))
    missing = routes - set(ROUTES)
    stale = set(ROUTES) - routes
    assert not missing, f"routes without an isolation test (add them to ROUTES): {sorted(missing)}"
    assert not stale, f"ROUTES lists routes the app no longer has: {sorted(stale)}"


@pytest.fixture
def scene(world: World) -> Scene:
    return Scene(world)


def _a_state(world: World, scene: Scene) -> Any:
    with world.sessions() as s:
        notice = s.get(Notice, scene.ids["notice_id"])
        account = s.get(Account, scene.a)
        assert notice is not None and account is not None
        return (
            sorted(s.scalars(select(Work.id).where(Work.owner_id == scene.a)).all()),
            s.execute(select(Match.id, Match.status).where(Match.owner_id == scene.a)).all(),
            notice.state,
            notice.subject,
            notice.reject_reason,
            account.role,
        )


def test_owner_gets_404_for_another_owners_objects_at_every_owned_route(
    world: World, scene: Scene
) -> None:
    before = _a_state(world, scene)
    owned = [k for k, v in ROUTES.items() if v == "owned"]
    assert len(owned) >= 15
    for method, template in owned:
        path = scene.fill((method, template), template)
        r = scene.request("b", method, path)
        assert r.status_code == 404, f"{method} {path} answered {r.status_code} to another owner"
        if path.startswith("/api/"):
            assert r.headers["content-type"] == "application/problem+json"
        assert A_TITLE not in r.text and A_URL not in r.text
        # An id that exists is indistinguishable from one that does not.
        missing = scene.request(
            "b",
            method,
            template.format(work_id=99999, match_id=99999, notice_id=99999, job_id=99999),
        )
        assert missing.status_code == 404
        assert _strip_ids(missing.text) == _strip_ids(r.text), f"{method} {path} leaks existence"
    assert _a_state(world, scene) == before, "another owner changed A's data"

    # Positive control: A's own requests reach the objects (not 404).
    for method, template in owned:
        path = scene.fill((method, template), template)
        r = scene.request("a", method, path)
        expected = (
            {403}
            if template.startswith("/notices/{notice_id}/") and method == "POST"
            else {200, 204, 303}
        )
        assert r.status_code in expected, f"{method} {path}: owner got {r.status_code}"


def _strip_ids(text: str) -> str:
    import re

    text = re.sub(r'name="csrf_token" value="[^"]*"', "", text)
    return re.sub(r"\d+", "N", text)


def test_listings_never_show_another_owners_data(world: World) -> None:
    scene = Scene(world, indexed=True)  # the check below needs A's work in the matching index
    listing = [k for k, v in ROUTES.items() if v == "listing"]
    for method, path in listing:
        r = scene.request("b", method, path)
        assert r.status_code < 400, f"{method} {path}: {r.status_code} {r.text[:200]}"
        assert A_TITLE not in r.text and A_URL not in r.text, f"{method} {path} shows A's data"
        if path.startswith("/api/") and method == "GET":
            body = r.json()
            assert all(
                item.get("id") not in scene.ids.values() or item.get("title") != A_TITLE
                for item in body
            )
    # B's bulk decision named A's match and changed nothing.
    with world.sessions() as s:
        assert s.scalar(select(Match.status).where(Match.id == scene.ids["match_id"])) == MatchStatus.NEW
    # B's own API listings are empty of A's ids; A's contain them.
    assert scene.ids["match_id"] not in [m["id"] for m in scene.b_api.get("/api/v1/matches").json()]
    assert scene.ids["match_id"] in [m["id"] for m in scene.a_api.get("/api/v1/matches").json()]
    assert scene.ids["notice_id"] not in [
        n["id"] for n in scene.b_api.get("/api/v1/notices").json()
    ]
    assert scene.ids["notice_id"] in [n["id"] for n in scene.a_api.get("/api/v1/notices").json()]
    # The check endpoint, given an exact copy of A's logo in a photo, tells B nothing about it.
    probe = scene.b_api.post(
        "/api/v1/check", files={"file": ("p.png", scene.a_logo, "image/png")}
    ).json()
    a_work_ids = {scene.ids["work_id"], scene.ids["spare1"], scene.ids["spare2"]}
    assert probe["copies"] is False
    assert not {c["work_id"] for c in probe["candidates"]} & a_work_ids
    mine = scene.a_api.post(
        "/api/v1/check", files={"file": ("p.png", scene.a_logo, "image/png")}
    ).json()
    assert mine["copies"] is True and mine["candidates"][0]["work_id"] == scene.ids["work_id"]


def test_staff_routes_refuse_owners(world: World, scene: Scene) -> None:
    staff = [k for k, v in ROUTES.items() if v == "staff"]
    with world.sessions() as s:
        roles_before = sorted((a.email, a.role.value) for a in s.scalars(select(Account)))
    for method, template in staff:
        path = scene.fill((method, template), template)
        r = scene.request("b", method, path)
        assert r.status_code == 403, f"{method} {path}: {r.status_code}"
        assert A_TITLE not in r.text and A_URL not in r.text
    with world.sessions() as s:
        assert sorted((a.email, a.role.value) for a in s.scalars(select(Account))) == roles_before
        assert s.scalars(select(Source)).one().enabled is True


def test_public_routes_reveal_nothing(world: World, scene: Scene) -> None:
    anon = TestClient(world.app, follow_redirects=False)
    assert anon.get("/").status_code == 303
    assert anon.get("/static/app.css").status_code == 200
    assert anon.get("/healthz").json() == {"status": "ok"}
    spec = anon.get("/api/v1/openapi.json")
    assert spec.status_code == 200 and A_TITLE not in spec.text
    # A guessed or forged unsubscribe token is a 404 and changes nothing.
    assert anon.get("/unsubscribe/forged.token").status_code == 404
    assert anon.post("/unsubscribe/forged.token").status_code == 404
    # Without a token or session nothing owned is reachable.
    for method, template in [k for k, v in ROUTES.items() if v in ("owned", "listing")]:
        path = scene.fill((method, template), template)
        r = anon.request(method, path)
        assert r.status_code in (401, 303, 403), f"anonymous {method} {path}: {r.status_code}"
        if r.status_code == 303:
            assert r.headers["location"].startswith("/login")
    with world.sessions() as s:
        notice = s.get(Notice, scene.ids["notice_id"])
        assert notice is not None and notice.state == NoticeState.DRAFT
