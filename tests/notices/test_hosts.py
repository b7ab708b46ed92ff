"""The bundled host directory and its loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import NoticeSettings
from notices.errors import HostDirectoryError
from notices.hosts import DEFAULT_HOSTS_FILE, load_host_directory

MAJOR = ["mastodon.social", "pixelfed.social", "reddit.com", "i.redd.it", "commons.wikimedia.org",
         "upload.wikimedia.org", "bsky.app", "cdn.bsky.app", "www.flickr.com", "live.staticflickr.com",
         "www.deviantart.com", "i.imgur.com", "someone.tumblr.com", "i.pinimg.com", "www.instagram.com",
         "www.redbubble.com", "www.etsy.com", "www.teepublic.com", "society6.com", "www.zazzle.com"]


@pytest.mark.parametrize("host", MAJOR)
def test_every_major_site_has_a_destination_and_a_law(host: str) -> None:
    entry = load_host_directory().lookup(host)
    assert entry is not None, host
    assert entry.law in ("dmca", "dsa")
    assert entry.email or entry.web_form.startswith("https://")
    if not entry.email:
        assert entry.verify, f"{entry.key}: a web-form-only entry must be marked verify"


def test_cdn_and_site_domains_share_one_entry() -> None:
    d = load_host_directory()
    assert d.lookup("i.redd.it") is d.lookup("https://www.reddit.com/r/x") is d.entries["reddit.com"]
    assert d.lookup("upload.wikimedia.org") is d.lookup("commons.wikimedia.org")
    assert d.lookup("cdn.bsky.app") is d.lookup("bsky.app")
    assert d.lookup("mastodon.social").law == "dsa"  # type: ignore[union-attr]


def test_unknown_and_lookalike_hosts_are_not_guessed() -> None:
    d = load_host_directory()
    for host in ("mastodon.online", "evilreddit.com", "reddit.com.evil.test", "example.org", ""):
        assert d.lookup(host) is None, host


def test_settings_path_is_used(tmp_path: Path) -> None:
    p = tmp_path / "hosts.toml"
    p.write_text('[hosts."art.test"]\nname = "Art"\ndomains = ["art.test"]\nlaw = "dsa"\n'
                 'email = "dmca@art.test"\nverify = false\n')
    d = load_host_directory(NoticeSettings(hosts_file=str(p)))
    e = d.lookup("cdn.art.test")
    assert e is not None and e.recipient == "dmca@art.test" and not e.verify
    bundled = load_host_directory(path=DEFAULT_HOSTS_FILE)
    assert load_host_directory(NoticeSettings()).entries.keys() == bundled.entries.keys()


@pytest.mark.parametrize("body,message", [
    ('[hosts."a.test"]\nlaw = "dmca"\n', "give an email or a web_form"),
    ('[hosts."a.test"]\nlaw = "gdpr"\nemail = "x@a.test"\n', 'law must be "dmca" or "dsa"'),
    ('[hosts."a.test"]\nlaw = "dmca"\nemail = "not-an-email"\n', "is not an email address"),
    ('[hosts."a.test"]\nlaw = "dmca"\nweb_form = "http://a.test/f"\n', "must be an https:// URL"),
    ('[hosts."a.test"]\nlaw = "dmca"\nweb_form = "https://a.test/f"\nverify = false\n', "must set verify = true"),
    ('[hosts."a.test"]\nlaw = "dmca"\nemail = "x@a.test"\nagent = "x"\n', "unknown key(s): agent"),
    (('[hosts."a.test"]\nlaw = "dmca"\nemail = "x@a.test"\n[hosts."b.test"]\ndomains = ["a.test"]\n'
      'law = "dmca"\nemail = "x@b.test"\n'), "listed under both"),
    ("[hosts\n", "not valid TOML"),
])
def test_invalid_directories_are_clear_errors(tmp_path: Path, body: str, message: str) -> None:
    p = tmp_path / "hosts.toml"
    p.write_text(body)
    with pytest.raises(HostDirectoryError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        load_host_directory(path=p)
    assert str(p) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(HostDirectoryError, match="host directory not found"):
        load_host_directory(NoticeSettings(hosts_file=str(tmp_path / "nope.toml")))
