"""Crawlers: turn image-sharing sites into Upload rows with evidence.

Entry points (see :mod:`crawler.service`): ``build_client``, ``build_source``,
``poll_source``, ``fetch_upload``, ``SOURCE_KINDS``; ``crawler.stream.run_stream``
for streaming sources; ``crawler.limits.host_limits`` for the per-host limits the
configuration asks for; ``crawler.cli.sources_group`` for ``artwatch sources``;
``crawler.localsite.LocalSite`` for the demo and tests. Submodules are imported
on use so that ``import crawler`` stays cheap.
"""

__all__ = ["cli", "errors", "fetch", "limits", "localsite", "politeness", "service", "sources", "stream"]
