"""Takedown notices: drafting, validation, review, evidence, sending, follow-up.

Entry points other packages call (each documents its contract):

- ``notices.drafting.draft_for_match(session, match_id, settings)``
- ``notices.workflow.submit / approve / reject / edit / mark_sent / resolve /
  record_counter_notice`` — all ``(session, notice_id, actor, ...)``
- ``notices.evidence.build_bundle(session, blobs, notice_id)``
- ``notices.sending.send_notice / run_followups / export_eml / export_pdf``
- ``notices.mail.send_email(settings, message)``, ``notices.mail.safe_header(value)``
- ``notices.cli.notices_group`` (the ``artwatch notices`` commands)

Modules are imported on use; importing ``notices`` itself loads nothing heavy.
"""

from notices.errors import (
    ApprovalRefused,
    DraftingBlocked,
    EvidenceError,
    HostDirectoryError,
    IllegalTransition,
    MailError,
    ManualSubmission,
    NoticeError,
    NoticeNotFound,
    ProfileIncomplete,
    RateLimited,
    RefetchFailed,
    SendRefused,
    TemplateRejected,
)

__all__ = [
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
    "RefetchFailed",
    "SendRefused",
    "TemplateRejected",
]
