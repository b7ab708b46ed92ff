"""Errors raised by the notices package.

Every error a person can act on derives from :class:`NoticeError`; its message
is written for that person (the CLI prints it as one line, the web app shows
it). The hierarchy::

    NoticeError
    ├── AddressError              an account email is not exactly one mailbox address
    ├── MailError                 SMTP refused, unreachable or misconfigured
    ├── TemplateRejected          syntax error or unsafe construct (has .lineno)
    ├── HostDirectoryError        config/hosts.toml unreadable or invalid
    ├── DraftingBlocked           a draft cannot be made for this match
    │   └── ProfileIncomplete     the owner's contact details are missing (.missing)
    ├── NoticeNotFound
    ├── UnknownReviewer           --reviewer names no account allowed to act on the notice
    ├── IllegalTransition         the review state machine forbids this step
    │   └── ApprovalRefused       required elements or checklist answers missing (.missing)
    ├── SendRefused               cannot send now
    │   ├── RateLimited           host's hourly budget used (.retry_at)
    │   ├── RefetchFailed         could not confirm the content is still online
    │   │   └── RefetchBlocked    the fetcher refuses the URL (its host resolves to an internal address)
    │   └── ManualSubmission      recipient is a web form: export and submit by hand
    └── EvidenceError             a file the bundle needs is missing
"""

from __future__ import annotations

from datetime import datetime

__all__ = [
    "AddressError",
    "ApprovalRefused",
    "DraftingBlocked",
    "EvidenceError",
    "HostDirectoryError",
    "IllegalTransition",
    "MailError",
    "ManualSubmission",
    "NoticeError",
    "NoticeNotFound",
    "ProfileIncomplete",
    "RateLimited",
    "RefetchBlocked",
    "RefetchFailed",
    "SendRefused",
    "TemplateRejected",
    "UnknownReviewer",
]


class NoticeError(Exception):
    """Base class; the message is meant for the person who must act."""


class MailError(NoticeError):
    """An email could not be handed to the SMTP server."""


class AddressError(NoticeError):
    """An account's email is not exactly one mailbox address (``notices.mail.single_address``)."""


class TemplateRejected(NoticeError):
    """A template cannot be used. ``lineno`` is the 1-based line, when known."""

    def __init__(self, message: str, lineno: int | None = None) -> None:
        self.lineno = lineno
        where = f"line {lineno}: " if lineno is not None else ""
        super().__init__(f"template rejected: {where}{message}")


class HostDirectoryError(NoticeError):
    """The host directory file is missing or invalid."""


class DraftingBlocked(NoticeError):
    """No draft can be made for this match now; the message says why."""


class ProfileIncomplete(DraftingBlocked):
    """The owner's profile lacks contact details that the notice must carry."""

    def __init__(self, owner_email: str, missing: list[str]) -> None:
        self.missing = list(missing)
        flags = {"legal name": "--legal-name", "postal address": "--address", "phone number": "--phone"}
        cli = " ".join(f"{flags[m]} ..." for m in missing if m in flags)
        super().__init__(
            f"cannot draft notices for {owner_email}: fill in {', '.join(missing)} in the owner's "
            "profile (a takedown notice must carry the sender's contact details)"
            + (f"; on the web: Profile page; from the shell: artwatch owners set {owner_email} {cli}" if cli else "")
        )


class NoticeNotFound(NoticeError):
    """No notice has that id."""


class UnknownReviewer(NoticeError):
    """The person named as acting has no account, or one that may not act on this notice.

    The audit trail must name someone who can be asked about the decision."""


class IllegalTransition(NoticeError):
    """The review workflow does not allow this step from the notice's state."""


class ApprovalRefused(IllegalTransition):
    """Approval is refused; ``missing`` lists every element or answer still missing."""

    def __init__(self, notice_id: int, missing: list[str]) -> None:
        self.missing = list(missing)
        super().__init__(f"notice {notice_id} cannot be approved; missing: " + "; ".join(missing))


class SendRefused(NoticeError):
    """The notice cannot be sent now."""


class RateLimited(SendRefused):
    """The host's sending budget for the past hour is used up."""

    def __init__(self, host: str, limit: int, retry_at: datetime) -> None:
        self.retry_at = retry_at
        super().__init__(
            f"{limit} notices were already sent to {host} in the past hour; try again after "
            f"{retry_at:%Y-%m-%d %H:%M} UTC"
        )


class RefetchFailed(SendRefused):
    """Whether the content is still online could not be established."""


class RefetchBlocked(RefetchFailed):
    """The fetcher refuses the URL (e.g. its host now resolves to an internal
    address), so it is never contacted. Unlike a failed check this will not
    pass by itself: the reviewer must look at the URL. ``url`` is the item's URL."""

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.url = url


class ManualSubmission(SendRefused):
    """The recipient is a web form, which cannot be sent over SMTP."""


class EvidenceError(NoticeError):
    """The evidence bundle cannot be built (a stored file is missing)."""
