"""Works' visual words as a sparse named vector of the VectorIndex.

The candidate source that shards: instead of walking the in-process
postings (:mod:`matching.postings`), an upload's words are looked up in
Qdrant, where every registered (work, mirror) image is one point whose sparse
``words`` vector holds its visual words under the current vocabulary
(:mod:`matching.vocabulary`), so a Qdrant cluster shards and replicates them
like any other vector.

Weights are BM25's. A work image's vector holds, per word, the saturated term
frequency ``tf (k1 + 1) / (tf + k1 (1 - b + b len / REFERENCE_WORDS))`` (``len``:
its keypoints); the IDF is Qdrant's own (the spec's ``modifier="idf"``), applied
to the query at search time over the points that carry the vector, so a stored
vector never goes stale as the registry grows. The query vector holds each
word's count among the upload's multiply-assigned words, as the postings walk
assigns them. ``REFERENCE_WORDS`` is a fixed length rather than the registry's
mean, again so that stored vectors do not depend on the rest of the registry.

What the words cannot carry is the postings' Hamming-embedding signature and
keypoint geometry: the sparse search only ranks images, and the engine then
takes the tentative correspondences of the best-ranked works from the postings
(``Engine.candidates = "sparse"``), so verification is unchanged.

Points: ``point_id(work_id, DIRECT_SLOT)`` and ``point_id(work_id, MIRROR_SLOT)``,
the last two slots of a work, clear of the CLIP and PDQ points
(:mod:`matching.index.vectors`). Payload: ``work_id``, ``owner_id``, ``kind``,
``signal = "words"``, ``mirrored`` and ``vocab`` (the vocabulary version the
words were assigned under; hits under another version are stale and ignored,
and their presence makes :meth:`SparseWords.candidates` report it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from matching.features import LocalFeatures, StoredWork
from matching.index.base import MAX_POINTS_PER_WORK, IndexPoint, SparseVector, SparseVectorSpec, VectorIndex, point_id
from matching.postings import PostingsIndex
from matching.vocabulary import Vocabulary

__all__ = ["BM25_B", "BM25_K1", "DIRECT_SLOT", "MIRROR_SLOT", "REFERENCE_WORDS", "WORDS_VECTOR", "SparseWords",
           "document_vector", "postings_points", "query_vector", "work_points"]

I32 = npt.NDArray[np.int32]

#: The sparse named vector: Qdrant supplies the IDF.
WORDS_VECTOR = SparseVectorSpec("words", "idf")
DIRECT_SLOT = MAX_POINTS_PER_WORK - 2
MIRROR_SLOT = MAX_POINTS_PER_WORK - 1
BM25_K1 = 1.2
BM25_B = 0.75
#: The document length BM25 normalises against (keypoints of a work image).
REFERENCE_WORDS = 1000


def _counts(words: I32) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.float32]]:
    idx, tf = np.unique(np.asarray(words, np.int64), return_counts=True)
    return idx.astype(np.uint32), tf.astype(np.float32)


def document_vector(words: I32, n_keypoints: int | None = None) -> SparseVector:
    """A work image's BM25 document vector from its postings' words (one per posting).

    ``n_keypoints`` is its length (default: the number of words)."""
    idx, tf = _counts(words)
    length = float(len(words) if n_keypoints is None else n_keypoints)
    norm = BM25_K1 * (1.0 - BM25_B + BM25_B * length / REFERENCE_WORDS)
    return SparseVector(idx, (tf * (BM25_K1 + 1.0) / (tf + norm)).astype(np.float32))


def query_vector(words: I32) -> SparseVector:
    """An upload's query vector: each word's count among its assigned words."""
    idx, tf = _counts(words)
    return SparseVector(idx, tf)


def _point(work_id: int, owner_id: int, kind: str, mirrored: bool, version: str, vec: SparseVector) -> IndexPoint:
    payload = {"work_id": int(work_id), "owner_id": int(owner_id), "kind": str(kind), "signal": "words",
               "mirrored": bool(mirrored), "vocab": version}
    return IndexPoint(point_id(int(work_id), MIRROR_SLOT if mirrored else DIRECT_SLOT), {}, payload,
                      sparse={WORDS_VECTOR.name: vec})


def work_points(vocab: Vocabulary, work: StoredWork) -> list[IndexPoint]:
    """A work's two points (the work and its mirror image) under ``vocab``; the
    words are the ones its postings get (:meth:`Vocabulary.assign`, one per keypoint)."""
    out = []
    for mirrored, f in ((False, work.direct), (True, work.mirrored)):
        words = vocab.assign(f.desc)[2] if len(f) else np.zeros(0, np.int32)
        out.append(_point(work.work_id, work.owner_id, work.kind, mirrored, vocab.version,
                          document_vector(words, len(f))))
    return out


def postings_points(postings: PostingsIndex) -> list[IndexPoint]:
    """Every searchable work's points, from the postings already in memory (no
    descriptor is read or quantised again)."""
    if postings.vocab is None:
        return []
    version = postings.vocab.version
    out = []
    for work_id, mirrored, n_kp, words in postings.image_words():
        sw = postings.work(work_id)
        if sw is not None:
            out.append(_point(work_id, sw.owner_id, sw.kind, mirrored, version, document_vector(words, n_kp)))
    return out


class SparseWords:
    """Writes and queries works' visual words in one VectorIndex."""

    def __init__(self, index: VectorIndex, *, batch: int = 512) -> None:
        if WORDS_VECTOR not in list(index.sparse_specs):
            raise ValueError(f"index has no sparse vector {WORDS_VECTOR}")
        self.index = index
        self.batch = batch

    def register(self, vocab: Vocabulary, work: StoredWork) -> int:
        """Replace a work's points; returns how many were written."""
        pts = work_points(vocab, work)
        self.index.upsert(pts)
        return len(pts)

    def rewrite(self, postings: PostingsIndex) -> int:
        """Write every work's points under the postings' vocabulary (after a retrain)."""
        pts = postings_points(postings)
        for i in range(0, len(pts), self.batch):
            self.index.upsert(pts[i : i + self.batch])
        return len(pts)

    def unregister(self, work_id: int) -> None:
        self.index.delete_work(work_id)

    def candidates(
        self, vocab: Vocabulary, q: LocalFeatures, *, limit: int, owner_ids: Sequence[int] | None = None,
        n_coarse: int = 1, n_fine: int = 1, n_sub: int = 1,
    ) -> tuple[list[int], bool]:
        """Works whose images rank in the top ``limit``, best first, and whether
        any hit was assigned under another vocabulary (then :meth:`rewrite` is due)."""
        if not len(q):
            return [], False
        words = vocab.assign(q.desc, n_coarse=n_coarse, n_fine=n_fine, n_sub=n_sub)[2]
        hits = self.index.search_sparse(WORDS_VECTOR.name, query_vector(words), limit, owner_ids=owner_ids)
        out: list[int] = []
        stale = False
        for h in hits:
            if h.payload.get("vocab") != vocab.version:
                stale = True
            elif h.work_id not in out:
                out.append(h.work_id)
        return out, stale
