"""The local-feature registry: work features, the change feed, the vocabulary and
postings snapshots that every matching process shares, behind
:class:`registry.store.FeatureStore` (a folder on one machine, or PostgreSQL
plus the blob store), and :class:`registry.index.LocalIndex`, which keeps a
process's in-memory postings in step with it."""
