"""JSON API, version 1: works, matches, notices and the on-demand check.

Authentication is a per-user API token sent as ``Authorization: Bearer``.
Owners see only their own rows; an id that belongs to someone else answers
404 exactly like one that does not exist. Errors are RFC 9457 problem details.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile
from pydantic import AfterValidator, BaseModel, Field
from sqlalchemy.orm import Session

from notices.drafting import notice_laws
from storage.models import Account, Match, Notice, Role, Work
from webapp.access import (
    is_staff,
    match_query,
    notice_query,
    visible_match,
    visible_notice,
    visible_work,
    work_rows,
)
from webapp.deps import DB, WebContext, api_user, get_ctx, read_upload, require_api_role, run_heavy
from webapp.errors import UnsupportedImage
from webapp.works import WorkForm, check_image, parse_licensed, register, remove

_PROBLEM = {
    "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API token", **_PROBLEM},
    403: {"description": "Your role may not do this", **_PROBLEM},
    404: {"description": "No such object (or it is not yours)", **_PROBLEM},
    422: {"description": "Invalid input", **_PROBLEM},
}
_UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    413: {"description": "The file is larger than the upload limit", **_PROBLEM},
    415: {
        "description": "Not a PNG, JPEG, WebP or SVG image, or the image cannot be decoded",
        **_PROBLEM,
    },
}

router = APIRouter(prefix="/api/v1", tags=["api"], responses=_ERRORS)

OWNER = require_api_role(Role.OWNER)


def _utc(value: datetime) -> datetime:
    # Every stored time is UTC, but SQLite hands them back naive; the API's
    # ``date-time`` (RFC 3339) needs the offset.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDateTime = Annotated[datetime, AfterValidator(_utc)]
"""A time in UTC, always written with its offset (``2026-01-01T12:00:00Z``)."""


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str


class WorkOut(BaseModel):
    id: int
    title: str
    kind: str
    filename: str
    registration_number: str
    licensed_sites: list[str]
    created_at: UtcDateTime
    match_count: int | None = Field(None, description="Flagged matches (licensed sites excluded)")

    @classmethod
    def of(cls, work: Work, match_count: int | None = None) -> WorkOut:
        return cls(
            id=work.id,
            title=work.title,
            kind=work.kind.value,
            filename=work.filename,
            registration_number=work.registration_number,
            licensed_sites=[str(s) for s in work.licensed_sites or []],
            created_at=work.created_at,
            match_count=match_count,
        )


class MatchOut(BaseModel):
    id: int
    work_id: int
    score: float
    signals: dict[str, Any]
    region: list[list[float]] | None = Field(
        None, description="Polygon [[x, y], ...] in upload pixels"
    )
    status: str
    page_url: str
    image_url: str
    host: str
    captured_at: UtcDateTime | None
    created_at: UtcDateTime

    @classmethod
    def of(cls, m: Match) -> MatchOut:
        return cls(
            id=m.id,
            work_id=m.work_id,
            score=m.score,
            signals=dict(m.signals or {}),
            region=m.region,
            status=m.status.value,
            page_url=m.upload.page_url,
            image_url=m.upload.image_url,
            host=m.upload.host,
            captured_at=m.upload.fetched_at,
            created_at=m.created_at,
        )


class NoticeOut(BaseModel):
    id: int
    host: str
    law: str
    #: The instruments the notice contains: its copyright law, then "trademark" when it lists logos.
    laws: list[str]
    state: str
    recipient: str
    flags: list[str]
    subject: str
    urls: list[str]
    match_ids: list[int]
    created_at: UtcDateTime
    sent_at: UtcDateTime | None

    @classmethod
    def of(cls, n: Notice, laws: list[str]) -> NoticeOut:
        return cls(
            id=n.id,
            host=n.host,
            law=n.law,
            laws=laws,
            state=n.state.value,
            recipient=n.recipient,
            flags=[str(f) for f in n.flags or []],
            subject=n.subject,
            urls=[i.url for i in n.items],
            match_ids=[i.match_id for i in n.items],
            created_at=n.created_at,
            sent_at=n.sent_at,
        )


class CheckMatch(BaseModel):
    work_id: int
    title: str
    score: float
    match: bool
    signals: dict[str, Any]
    region: list[list[float]] | None


class CheckResult(BaseModel):
    copies: bool = Field(description="True when the image copies at least one registered work")
    threshold: float
    candidates: list[CheckMatch]


def install_problem_schema(app: Any) -> None:
    """Publish the Problem schema that the error responses above refer to."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = (
                Problem.model_json_schema()
            )
            app.openapi_schema = schema
        return dict(app.openapi_schema)

    app.openapi = openapi


@router.get("/works", response_model=list[WorkOut], summary="List your works")
def list_works(account: Account = Depends(api_user), session: Session = DB) -> list[WorkOut]:
    return [WorkOut.of(w, n) for w, n in work_rows(session, account.id)]


@router.post(
    "/works",
    response_model=WorkOut,
    status_code=201,
    summary="Register a work",
    responses=_UPLOAD_ERRORS,
)
async def create_work(
    request: Request,
    account: Account = OWNER,
    session: Session = DB,
    file: UploadFile = File(description="PNG, JPEG, WebP or SVG"),
    title: str = Form(""),
    kind: str = Form("artwork", pattern="^(logo|artwork)$"),
    registration_number: str = Form(""),
    licensed_sites: list[str] = Form(
        default_factory=list, description="Hosts, handles or URL prefixes"
    ),
) -> WorkOut:
    data = await read_upload(request, file)
    sites = parse_licensed([s for item in licensed_sites for s in item.split(",")])
    ctx = get_ctx(request)
    form = WorkForm(title, kind, registration_number, sites)
    work = await run_heavy(ctx, register, ctx, session, account.id, data, file.filename or "", form)
    return WorkOut.of(work, 0)


@router.get("/works/{work_id}", response_model=WorkOut, summary="One of your works")
def get_work(work_id: int, account: Account = Depends(api_user), session: Session = DB) -> WorkOut:
    work = visible_work(session, account, work_id)
    return WorkOut.of(work)


@router.delete("/works/{work_id}", status_code=204, summary="Remove a work and its matches")
def delete_work(
    request: Request,
    work_id: int,
    account: Account = Depends(api_user),
    session: Session = DB,
) -> Response:
    work = visible_work(session, account, work_id)
    if work.owner_id != account.id:
        from webapp.errors import NotFound

        raise NotFound(f"no work with id {work_id}")
    remove(get_ctx(request), session, work)
    return Response(status_code=204)


@router.get("/matches", response_model=list[MatchOut], summary="List matches, highest score first")
def list_matches(
    account: Account = Depends(api_user),
    session: Session = DB,
    work_id: int | None = None,
    include_suppressed: bool = False,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
) -> list[MatchOut]:
    if work_id is not None:
        visible_work(session, account, work_id)
    q = match_query(account, work_id=work_id, include_suppressed=include_suppressed)
    return [MatchOut.of(m) for m in session.scalars(q.limit(limit).offset(offset))]


@router.get("/matches/{match_id}", response_model=MatchOut, summary="One match")
def get_match(
    match_id: int, account: Account = Depends(api_user), session: Session = DB
) -> MatchOut:
    return MatchOut.of(visible_match(session, account, match_id))


@router.get(
    "/notices", response_model=list[NoticeOut], summary="List notices, most confident first"
)
def list_notices(
    account: Account = Depends(api_user),
    session: Session = DB,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
) -> list[NoticeOut]:
    notices = [
        n for n, _best in session.execute(notice_query(account).limit(limit).offset(offset)).all()
    ]
    laws = notice_laws(session, notices)
    return [NoticeOut.of(n, laws[n.id]) for n in notices]


@router.get("/notices/{notice_id}", response_model=NoticeOut, summary="One notice")
def get_notice(
    notice_id: int, account: Account = Depends(api_user), session: Session = DB
) -> NoticeOut:
    notice = visible_notice(session, account, notice_id)
    return NoticeOut.of(notice, notice_laws(session, [notice])[notice.id])


@router.post(
    "/check",
    response_model=CheckResult,
    summary="Does this image copy a registered work?",
    responses=_UPLOAD_ERRORS,
    description="Owners check against their own works; reviewer and admin tokens (for example a "
    "platform's integration) check against every registered work.",
)
async def check(
    request: Request,
    account: Account = Depends(api_user),
    session: Session = DB,
    file: UploadFile = File(description="The image to check"),
) -> CheckResult:
    ctx = get_ctx(request)
    data = await read_upload(request, file)
    return await run_heavy(ctx, _check, ctx, session, account, data, file.filename or "upload")


def _check(ctx: WebContext, session: Session, account: Account, data: bytes, name: str) -> CheckResult:
    """The check itself, on the heavy-work threads (it decodes and searches: never on the event loop)."""
    check_image(data, name)
    from matching.errors import ImageError

    owner_ids = None if is_staff(account) else [account.id]
    try:
        with ctx.engine_lock:
            candidates = ctx.engine.analyse(data, name=name, owner_ids=owner_ids)
    except ImageError as exc:
        raise UnsupportedImage(str(exc)) from None
    out = []
    for cand in candidates:
        if owner_ids is not None and cand.owner_id != account.id:
            continue  # defence in depth: never reveal another owner's work
        work = session.get(Work, cand.work_id)
        if work is None:
            continue
        out.append(
            CheckMatch(
                work_id=work.id,
                title=work.title,
                score=float(cand.score),
                match=bool(cand.match),
                signals=dict(cand.signals),
                region=cand.region,
            )
        )
    out.sort(key=lambda c: c.score, reverse=True)
    return CheckResult(
        copies=any(c.match for c in out), threshold=ctx.settings.matching.threshold, candidates=out
    )
