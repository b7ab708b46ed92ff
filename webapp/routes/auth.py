"""Log in, log out, and the one-click unsubscribe link from alert emails."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Account, Role
from webapp.deps import DB, DEVICE_COOKIE, SESSION_COOKIE, client_ip, csrf_protect, get_ctx
from webapp.errors import NotFound, TooManyRequests
from webapp.security import DEVICE_DAYS, end_session, new_session, session_account, verify_password

router = APIRouter(include_in_schema=False)

# Everyone lands on the dashboard: an owner sees their own numbers, staff the overview.
HOME = {Role.OWNER: "/dashboard", Role.REVIEWER: "/dashboard", Role.ADMIN: "/dashboard"}


def _safe_next(value: str) -> str:
    # Only same-site paths: never "//evil.example" or "https://...".
    if value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return ""


@router.get("/", response_class=HTMLResponse)
def home(request: Request, session: Session = DB) -> Response:
    key = request.cookies.get(SESSION_COOKIE)
    account = session_account(session, key) if key else None
    if account is None:
        return RedirectResponse("/login", status_code=303)
    return RedirectResponse(HOME[account.role], status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "") -> Response:
    return get_ctx(request).templates.TemplateResponse(
        request, "login.html", {"next": _safe_next(next), "error": "", "email": ""}
    )


@router.post("/login", dependencies=[Depends(csrf_protect)])
def login(
    request: Request,
    email: str = Form(""),
    password: str = Form(""),
    next: str = Form(""),
    session: Session = DB,
) -> Response:
    ctx = get_ctx(request)
    email = email.strip().lower()
    ip = client_ip(request)
    account = session.scalar(select(Account).where(func.lower(Account.email) == email))
    device = request.cookies.get(DEVICE_COOKIE, "")
    known_device = (
        account is not None and bool(device) and ctx.signer.device_account(device) == account.id
    )
    wait = ctx.throttle.retry_after(session, email, ip, known_device=known_device)
    if wait:
        raise TooManyRequests(
            f"too many failed logins; try again in {wait // 60 + 1} minutes", wait
        )
    # Verified even when the account does not exist (against a dummy hash), so
    # both cost one argon2 verification and the timing names no account.
    if not verify_password(account.password_hash if account else None, password) or account is None:
        ctx.throttle.record_failure(session, email, ip)
        session.commit()
        return ctx.templates.TemplateResponse(
            request,
            "login.html",
            {"next": _safe_next(next), "error": "Wrong email or password.", "email": email},
            status_code=400,
        )
    ctx.throttle.clear(session, email, ip)
    key = new_session(session, account)
    response = RedirectResponse(_safe_next(next) or HOME[account.role], status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        key,
        httponly=True,
        samesite="lax",
        secure=ctx.secure_cookies,
        max_age=14 * 86400,
    )
    # This browser is now a known device for the account: it passes the
    # account lock (not the per-address backoff) while someone else guesses.
    response.set_cookie(
        DEVICE_COOKIE,
        ctx.signer.device_token(account.id),
        httponly=True,
        samesite="lax",
        secure=ctx.secure_cookies,
        max_age=DEVICE_DAYS * 86400,
    )
    return response


@router.post("/logout", dependencies=[Depends(csrf_protect)])
def logout(request: Request, session: Session = DB) -> Response:
    key = request.cookies.get(SESSION_COOKIE)
    if key:
        end_session(session, key)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


def _unsubscribe_account(request: Request, session: Session, token: str) -> Account:
    account_id = get_ctx(request).signer.unsubscribe_account(token)
    account = session.get(Account, account_id) if account_id is not None else None
    if account is None:
        raise NotFound("this unsubscribe link is not valid")
    return account


@router.get("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe_page(request: Request, token: str, session: Session = DB) -> Response:
    account = _unsubscribe_account(request, session, token)
    return get_ctx(request).templates.TemplateResponse(
        request, "unsubscribe.html", {"token": token, "email": account.email, "done": False}
    )


@router.post("/unsubscribe/{token}", response_class=HTMLResponse)
def unsubscribe(request: Request, token: str, session: Session = DB) -> Response:
    # The signed token is the credential (RFC 8058 one-click POST); no login, no CSRF form token.
    account = _unsubscribe_account(request, session, token)
    account.alert_mode = "off"
    return get_ctx(request).templates.TemplateResponse(
        request, "unsubscribe.html", {"token": token, "email": account.email, "done": True}
    )
