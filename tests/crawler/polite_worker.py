"""A crawling process for the shared-politeness tests.

``python -m tests.crawler.polite_worker URL PREFIX THREADS REQUESTS NAME``
loads the settings from the environment as a worker does, builds the
configured host limits (``crawler.limits.host_limits``, key prefix PREFIX so
parallel test runs never share keys), prints ``ready``, waits for a line on
stdin, then GETs URL?w=NAME REQUESTS times from each of THREADS threads, each
thread through its own client (as Celery tasks build one per task)."""

from __future__ import annotations

import sys
import threading


def main(argv: list[str]) -> int:
    from config.settings import load_settings
    from crawler.errors import CrawlError
    from crawler.fetch import fetch_page
    from crawler.limits import host_limits
    from crawler.service import build_client

    url, prefix, threads, requests, name = argv[0], argv[1], int(argv[2]), int(argv[3]), argv[4]
    settings = load_settings()
    limits = host_limits(settings, prefix=prefix)
    errors: list[CrawlError] = []

    def crawl() -> None:
        try:
            with build_client(settings.crawler, limits) as client:
                for _ in range(requests):
                    fetch_page(client, url, params={"w": name})
        except CrawlError as exc:  # reported through the exit status; anything else kills the thread loudly
            errors.append(exc)

    print(f"ready {type(limits).__name__}", flush=True)
    sys.stdin.readline()
    workers = [threading.Thread(target=crawl) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for exc in errors:
        print(f"error {type(exc).__name__}: {exc}", flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
