"""The host directory: where notices for each site go and which law applies.

Loaded from ``NoticeSettings.hosts_file`` or the bundled ``config/hosts.toml``.
A host name matches an entry when it equals one of the entry's domains or is a
subdomain of one (``i.redd.it`` and ``old.reddit.com`` both find Reddit).
:meth:`HostDirectory.lookup` returns None for anything else: the caller flags
the draft and a person chooses the recipient.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from config.settings import NoticeSettings
from notices.errors import HostDirectoryError

__all__ = ["DEFAULT_HOSTS_FILE", "OVERRIDE_FILE_NAME", "HostDirectory", "HostEntry", "load_host_directory",
           "merge_directories", "parse_host_directory"]

DEFAULT_HOSTS_FILE = Path(__file__).resolve().parents[1] / "config" / "hosts.toml"
# An administrator's additions and corrections, edited from the web app's admin
# page and kept as a shared document (storage.documents.HOSTS_OVERRIDE: a file in
# DATA_DIR, or a database row); its entries replace bundled ones by key.
OVERRIDE_FILE_NAME = "hosts.override.toml"

_KEYS = {"name", "domains", "law", "email", "web_form", "verify", "notes"}
_EMAIL = re.compile(r"^[^@\s<>,;\"]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


@dataclass(frozen=True)
class HostEntry:
    key: str
    name: str
    domains: tuple[str, ...]
    law: str
    email: str = ""
    web_form: str = ""
    verify: bool = True
    notes: str = ""

    @property
    def recipient(self) -> str:
        """The agent's email when known, else the web form URL."""
        return self.email or self.web_form


class HostDirectory:
    def __init__(self, entries: list[HostEntry]) -> None:
        self.entries = {e.key: e for e in entries}
        self._by_domain: dict[str, HostEntry] = {}
        for e in entries:
            for d in e.domains:
                other = self._by_domain.get(d)
                if other is not None and other.key != e.key:
                    raise HostDirectoryError(f"domain {d!r} is listed under both {other.key!r} and {e.key!r}")
                self._by_domain[d] = e

    def lookup(self, host_or_url: str) -> HostEntry | None:
        """The entry for a host name or URL, or None when the site is unknown."""
        host = host_or_url
        if "/" in host_or_url:
            host = urlsplit(host_or_url).hostname or ""
        host = host.strip().lower().rstrip(".")
        host = host.removeprefix("www.")
        labels = host.split(".")
        for i in range(len(labels) - 1):
            entry = self._by_domain.get(".".join(labels[i:]))
            if entry is not None:
                return entry
        return None


def merge_directories(base: HostDirectory, override: HostDirectory) -> HostDirectory:
    """``base`` with ``override``'s entries replacing or adding entries by key."""
    entries = dict(base.entries)
    entries.update(override.entries)
    return HostDirectory(list(entries.values()))


def load_host_directory(settings: NoticeSettings | None = None, path: Path | None = None) -> HostDirectory:
    """Read and validate the directory; every problem names the file and the entry."""
    if path is None:
        path = Path(settings.hosts_file) if settings is not None and settings.hosts_file else DEFAULT_HOSTS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HostDirectoryError(f"host directory not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HostDirectoryError(f"cannot read the host directory {path}: {exc}") from None
    return parse_host_directory(text, str(path))


def parse_host_directory(text: str, source: str) -> HostDirectory:
    """Validate a directory's TOML text; every problem names ``source`` (a file, or the shared
    override document) and the entry."""
    path = source
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HostDirectoryError(f"{path}: not valid TOML: {exc}") from None
    extra = set(data) - {"hosts"}
    if extra:
        raise HostDirectoryError(f"{path}: unknown top-level key(s): {', '.join(sorted(extra))}")
    hosts = data.get("hosts", {})
    if not isinstance(hosts, dict):
        raise HostDirectoryError(f"{path}: [hosts] must be a table")
    entries = []
    for key, raw in hosts.items():
        entries.append(_entry(path, key, raw))
    try:
        return HostDirectory(entries)
    except HostDirectoryError as exc:
        raise HostDirectoryError(f"{path}: {exc}") from None


def _entry(path: str, key: str, raw: object) -> HostEntry:
    where = f"{path}: [hosts.{key!r}]"
    if not isinstance(raw, dict):
        raise HostDirectoryError(f"{where} must be a table")
    unknown = set(raw) - _KEYS
    if unknown:
        raise HostDirectoryError(f"{where}: unknown key(s): {', '.join(sorted(unknown))}")
    domains = raw.get("domains", [key])
    if not isinstance(domains, list) or not domains or not all(isinstance(d, str) for d in domains):
        raise HostDirectoryError(f"{where}: domains must be a non-empty list of host names")
    domains = [d.strip().lower() for d in domains]
    for d in domains:
        if not _DOMAIN.match(d):
            raise HostDirectoryError(f"{where}: {d!r} is not a host name")
    law = raw.get("law")
    if law not in ("dmca", "dsa"):
        raise HostDirectoryError(f"{where}: law must be \"dmca\" or \"dsa\", got {law!r}")
    email = raw.get("email", "")
    web_form = raw.get("web_form", "")
    verify = raw.get("verify", True)
    for name, value in (("email", email), ("web_form", web_form), ("name", raw.get("name", key)),
                        ("notes", raw.get("notes", ""))):
        if not isinstance(value, str):
            raise HostDirectoryError(f"{where}: {name} must be a string")
    if not isinstance(verify, bool):
        raise HostDirectoryError(f"{where}: verify must be true or false")
    if email and not _EMAIL.match(email):
        raise HostDirectoryError(f"{where}: {email!r} is not an email address")
    if web_form and not web_form.startswith("https://"):
        raise HostDirectoryError(f"{where}: web_form must be an https:// URL")
    if not email and not web_form:
        raise HostDirectoryError(f"{where}: give an email or a web_form (or leave the host out: "
                                 "unknown hosts are flagged for the reviewer)")
    if not email and not verify:
        raise HostDirectoryError(f"{where}: an entry without a confirmed email must set verify = true")
    return HostEntry(key=key, name=str(raw.get("name", key)), domains=tuple(domains), law=law, email=email,
                     web_form=web_form, verify=verify, notes=str(raw.get("notes", "")))
