"""The registry of works: the service every entry point calls and the one
composition root.

- :mod:`registry.service`: the steps every entry point calls (register,
  remove, rebuild, analyse and record);
- :mod:`registry.root`: the one composition root that builds what they share
  (settings, sessions, blobs, the feature store, the shared documents, the
  matcher);
- :mod:`registry.cli`: ``artwatch index rebuild`` and ``index status``.

The local-feature store itself (work features, the change feed, the
vocabulary and postings snapshots) is a lower layer that the matcher reads:
:mod:`matching.store` (folder or PostgreSQL plus the blob store) and
:mod:`matching.replica`, which keeps a process's in-memory postings in step
with it.
"""
