"""The registry of works.

- :mod:`registry.service`: the steps every entry point calls (register,
  remove, rebuild, analyse and record);
- :mod:`registry.root`: the one composition root that builds what they share;
- :mod:`registry.store`, :mod:`registry.folder`, :mod:`registry.sql`: the
  local-feature registry (work features, the change feed, the vocabulary and
  postings snapshots) behind :class:`registry.store.FeatureStore`, a folder on
  one machine or PostgreSQL plus the blob store;
- :mod:`registry.index`: :class:`registry.index.LocalIndex`, which keeps a
  process's in-memory postings in step with that store.
"""
