"""A process's postings index kept in step with the shared feature registry.

Every process that matches holds a :class:`~matching.postings.PostingsIndex`
in memory and replays the store's change feed (:mod:`matching.store`) from
the cursor it has read, so works registered by another process become
searchable on its next query.

- Works are written to the store, then announced by an ``add <id>`` /
  ``del <id>`` line; a retrain (under the ``retrain`` lock, so the feed is
  never held while it reads every work) publishes ``vocab <version> <works>``.
- Postings snapshots: the postings of every work under vocabulary
  ``<version>``, with the feed cursor they cover. A process that starts (or
  meets a new vocabulary) restores the snapshot and replays only the feed after
  that cursor, instead of re-reading and re-quantising every work (about 20 ms
  per work). A retrain quantises every work and snapshots the new vocabulary
  before announcing it, so the other processes switch in a fraction of a
  second. A snapshot is only a cache: when it is missing or unreadable the
  works are read again and a new snapshot is written (under the ``snapshot``
  lock).

Maintenance (a retrain, a snapshot write) is due at thresholds a registration
or a query crosses. :attr:`LocalIndex.maintenance` decides where it runs: left
None, in this process at once (a library user, the benchmark harness); a
service passes a hook that hands it to a queue of its own (``workers.maintenance``),
and a worker runs it later with :meth:`LocalIndex.run_maintenance`, so no
request waits for minutes of retraining.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from matching.features import LocalFeatures, StoredWork
from matching.postings import Correspondences, PostingsIndex, QuantisedWork, from_format2
from matching.store import FeatureStore, Locked
from matching.vocabulary import Vocabulary

__all__ = ["LocalIndex", "MaintenanceHook", "MaintenanceJob"]

log = logging.getLogger(__name__)

U8 = npt.NDArray[np.uint8]
_T = TypeVar("_T")

#: Work thumbnails kept in memory per process (about 16-32 KiB each).
THUMB_CACHE = 2048
#: Descriptors sampled per work to train the sub-words.
SUB_SAMPLE_PER_WORK = 200
#: A process writes a new postings snapshot once it has applied this many
#: change-feed lines since its state was last snapshotted, or a quarter of the
#: registry if that is more (a snapshot rewrites every posting).
SNAPSHOT_EVERY = 64
#: 2 since postings keep fixed-point positions (:data:`matching.postings.XY_UNIT`), 3 since they are
#: 16 bytes (the image's low bits, size and orientation a byte each). A format-2 snapshot is converted
#: (:func:`matching.postings.from_format2`: minutes at 100,000 works, where quantising every work again
#: takes most of an hour); one of another format is ignored: the process loads the registry in full and
#: writes a new one.
SNAPSHOT_FORMAT = 3
#: The arrays of a format-2 snapshot worth memory-mapping.
FORMAT2_MAPPED = ("offsets", "image", "sig", "xy", "scale_angle")

#: The vocabulary's centroid arrays a snapshot also holds (by far its largest: 110 MiB at 10,000
#: works), so that a restoring process maps them, shared with the node's other processes, instead of
#: holding its own copy. Snapshots without them (older ones) restore with the vocabulary's own copy.
VOCAB_ARRAYS = ("vocab_fine", "vocab_sub")


def _vocab_arrays(vocab: Vocabulary) -> dict[str, npt.NDArray[Any]]:
    out: dict[str, npt.NDArray[Any]] = {"vocab_fine": vocab.fine}
    if vocab.sub is not None:
        out["vocab_sub"] = vocab.sub
    return out


def _mapped_vocab(vocab: Vocabulary, arrays: dict[str, Any]) -> Vocabulary:
    """``vocab`` with its centroids replaced by the snapshot's mapped copies (removed from
    ``arrays``), which must be equal to them; ``vocab`` itself when the snapshot has none."""
    fine, sub = arrays.pop("vocab_fine", None), arrays.pop("vocab_sub", None)
    if fine is None:
        return vocab
    same_sub = sub is None if vocab.sub is None else sub is not None and np.array_equal(sub, vocab.sub)
    if not (same_sub and np.array_equal(fine, vocab.fine)):
        raise ValueError("its vocabulary arrays differ from the published vocabulary")
    return replace(vocab, fine=fine, sub=sub)


#: The maintenance an index can find due.
MaintenanceJob = Literal["retrain", "snapshot"]
#: Called when a job falls due; True when it took the job (queued it, or noted
#: it for later), False to have the index run it here and now.
MaintenanceHook = Callable[[MaintenanceJob], bool]


#: A refresh replaying at least this many registrations loads them in threads
#: (fewer: a pool would cost more than it saves).
READ_AHEAD_FROM = 16


def default_load_threads() -> int:
    """Threads a full load uses unless configured: half the CPUs, 1 to 4, so the
    engine processes beside a retrain keep the other half (as Lucene sizes its
    merge threads)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cpus // 2))


def ordered_map(fn: Callable[[int], _T], items: Sequence[int], threads: int) -> Generator[_T, None, None]:
    """``map(fn, items)`` with up to ``threads`` calls running ahead of the
    consumer in a thread pool (a window of ``2 * threads``, so what is held
    ahead stays small); in order. ``fn`` must be safe to call from several
    threads. One thread: plain ``map``, nothing runs ahead."""
    if threads <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="artwatch-load") as pool:
        window: deque[Future[_T]] = deque()
        try:
            for item in items:
                window.append(pool.submit(fn, item))
                if len(window) >= 2 * threads:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:  # the consumer stopped early, or a call raised: drop what is queued
            for f in window:
                f.cancel()


#: Lock names in the store.
RETRAIN_LOCK = "retrain"
SNAPSHOT_LOCK = "snapshot"


@dataclass
class LocalIndex(PostingsIndex):
    """Inverted file over registered works' descriptors, shared through a
    :class:`~matching.store.FeatureStore`.

    ``refresh()`` is cheap (one ``stat`` or one query) when nothing changed;
    the engine calls it before each query.
    """

    store: FeatureStore
    #: The change-feed cursor this process has applied.
    _offset: int = 0
    _trained_on: int = 0
    _thumbs: dict[int, U8] = field(default_factory=dict)
    #: Feed changes applied since the state was last snapshotted or restored.
    _unsnapshotted: int = 0
    #: The vocabulary version the feed announced last, and the ones before it.
    _published_vocab: str = ""
    _stale_vocabs: set[str] = field(default_factory=set)
    #: A snapshot this process found damaged (replaced, never trusted).
    _damaged_snapshot: str = ""
    #: Where due maintenance goes (see the module doc); None: run it here.
    maintenance: MaintenanceHook | None = None
    #: Threads that read and quantise works when many are loaded at once (a retrain,
    #: a start with no usable snapshot, a refresh replaying :data:`READ_AHEAD_FROM`
    #: or more registrations); 0: :func:`default_load_threads`.
    load_threads: int = 0

    # ---- registration (writer side)

    def add(self, work: StoredWork) -> None:
        """Persist a work's features and make them searchable everywhere."""
        self.store.put_work(work)
        self.store.append([f"add {work.work_id}"])
        self._maybe_train()
        self.refresh()

    def remove(self, work_id: int) -> None:
        self.store.remove_work(work_id)
        self.store.append([f"del {int(work_id)}"])
        self.refresh()

    def retrain_due(self) -> bool:
        """Whether the vocabulary should be trained again: when absent, again each
        time the registry has grown 4x until it was trained on 256 works (enough
        for stable words), and after that each time it has doubled, so the
        sub-words keep the postings per word near :data:`POSTINGS_PER_WORD` (a
        retrain re-reads every work: minutes at thousands of works)."""
        n_works = len(self.store.work_ids())
        grow = 4 if self._trained_on < 256 else 2
        return n_works > 0 and (self.vocab is None or n_works >= grow * max(1, self._trained_on))

    def _maybe_train(self) -> None:
        self.refresh()
        if not self.retrain_due():
            return
        # The first vocabulary is trained here whatever the hook says: until one
        # exists no work is searchable (a copy analysed meanwhile would be missed
        # for good), and a vocabulary of the first work trains in a second or two.
        if self.vocab is None or not self._hand_off("retrain"):
            self.retrain(wait=False)

    def _hand_off(self, job: MaintenanceJob) -> bool:
        """Give due maintenance to the hook; False when it must run here."""
        return self.maintenance is not None and self.maintenance(job)

    def run_maintenance(self, job: MaintenanceJob) -> bool:
        """Run ``job`` here if it is still due (the maintenance task's body).

        Nothing is handed off meanwhile. A retrain waits for one under way in
        another process (the ``retrain`` lock), then runs only if the registry still
        calls for one, so a second task queued behind the first is a no-op. A
        snapshot is written when this process's postings are newer than the
        current one. Returns whether it did anything.
        """
        hook, self.maintenance = self.maintenance, None
        try:
            if job == "retrain":
                with self.store.lock(RETRAIN_LOCK, timeout=3600):
                    self.refresh()
                    if not self.retrain_due():
                        return False
                    self._retrain_locked()
                    return True
            self.refresh()
            before = self._snapshot_offset()
            self._write_snapshot()
            return self._snapshot_offset() != before
        finally:
            self.maintenance = hook

    def _snapshot_offset(self) -> int | None:
        """The feed cursor the current snapshot of this vocabulary covers."""
        if self.vocab is None:
            return None
        try:
            return int((self.store.snapshot_meta(self.vocab.version) or {})["offset"])
        except (KeyError, ValueError, TypeError):
            return None

    def retrain(self, *, wait: bool = True) -> None:
        """Train a new vocabulary from the stored works (sampled), quantise every
        work under it, snapshot the postings, and only then publish it.

        Other processes keep searching under the old vocabulary meanwhile, and
        restore the snapshot when the feed announces the new one. The
        feed is written only to publish, so registrations elsewhere never
        wait for a retrain. One retrain runs at a time (the ``retrain`` lock); with
        ``wait=False`` one already under way elsewhere makes this call a no-op.
        """
        try:
            with self.store.lock(RETRAIN_LOCK, timeout=3600, wait=wait):
                self._retrain_locked()
        except Locked:
            log.info("local index: another process is retraining the vocabulary")

    def _retrain_locked(self) -> None:
        self.refresh()
        ids = self.store.work_ids()
        rng = np.random.default_rng(0)
        rng_sub = np.random.default_rng(1)
        per = max(50, 300_000 // max(1, len(ids)))
        sample: list[U8] = []
        sample_sub: list[U8] = []
        postings = 0
        with closing(ordered_map(self.store.get_work, ids, self._threads())) as works:  # read ahead; sampled in order
            for w in works:
                if w is None:
                    continue
                for f in (w.direct, w.mirrored):
                    postings += len(f)
                    if len(f) > per // 2:
                        sample.append(f.desc[rng.choice(len(f), per // 2, replace=False)])
                    elif len(f):
                        sample.append(f.desc)
                    take = min(len(f), SUB_SAMPLE_PER_WORK // 2)
                    sample_sub.append(f.desc[rng_sub.choice(len(f), take, replace=False)])
        if not sample:
            return
        desc = np.concatenate(sample)
        sample.clear()
        vocab = Vocabulary.train(desc)
        desc = np.concatenate(sample_sub)
        sample_sub.clear()
        vocab = vocab.with_sublevel(desc, postings)
        del desc  # the samples are gone before every work is quantised (2.6 GB at 100,000 works)
        # Every work under the new vocabulary, covering the feed this process
        # has read; what others append meanwhile is replayed on top.
        self._reload_all(vocab)
        self._write_snapshot(publishing=True)
        self.store.publish_vocab(vocab.to_bytes(), vocab.version, len(ids))
        if self._published_vocab and self._published_vocab != vocab.version:
            self._stale_vocabs.add(self._published_vocab)
        self._published_vocab = vocab.version
        with self.store.lock(SNAPSHOT_LOCK, timeout=600):
            self._remove_old_snapshots(vocab.version)
        log.info("local index: trained a %d-word vocabulary%s on %d works (vocabulary %s)", vocab.size // vocab.k3,
                 f" with {vocab.k3} sub-words per word" if vocab.k3 > 1 else "", len(ids), vocab.version)

    # ---- reader side

    def refresh(self) -> None:
        """Apply change-feed lines written since the last call (by any process)."""
        lines, cursor = self.store.changes(self._offset)
        if not lines:
            return
        self._offset = cursor
        vocab_lines = [i for i, ln in enumerate(lines) if ln.startswith("vocab ")]
        if vocab_lines:
            last = vocab_lines[-1]
            parts = lines[last].split()
            self._trained_on = int(parts[2]) if len(parts) > 2 else 0
            if self._published_vocab:
                self._stale_vocabs.add(self._published_vocab)
            self._stale_vocabs.update(lines[i].split()[1] for i in vocab_lines[:-1])
            self._stale_vocabs.discard(parts[1])
            self._published_vocab = parts[1]
            if self.vocab is None or self.vocab.version != parts[1]:
                restored = self._restore_snapshot()
                if restored is None:
                    self._reload_all()
                    log.info("local index: switched to vocabulary %s by reading %d works", parts[1],
                             len(self._works))
                    self._snapshot_due()
                    return
                # The snapshot covers the feed up to its cursor; replay the rest.
                self._offset = restored
                self.refresh()
                return
        touched: dict[int, str] = {}
        for ln in lines:
            op, _, arg = ln.partition(" ")
            if op in ("add", "del"):
                touched[int(arg)] = op
        adds = [wid for wid, op in touched.items() if op == "add"]
        threads = self._threads() if len(adds) >= READ_AHEAD_FROM else 1
        with closing(ordered_map(self._load, adds, threads)) as loaded:
            for wid, op in touched.items():
                self._drop(wid)
                if op == "add" and (r := next(loaded)) is not None:
                    self._insert(*r)
        self._unsnapshotted += len(touched)
        if self._unsnapshotted >= max(SNAPSHOT_EVERY, len(self._works) // 4):
            self._snapshot_due()

    def _snapshot_due(self) -> None:
        """Write a snapshot here, or hand it off. A handed-off snapshot is not
        asked for again until as many changes again have been applied."""
        if self.vocab is None or not self._works or self.vocab.version != self._published_vocab:
            return  # nothing _write_snapshot would write
        if self._hand_off("snapshot"):
            self._unsnapshotted = 0
        else:
            self._write_snapshot()

    def _reset(self, vocab: Vocabulary | None) -> None:
        super()._reset(vocab)
        self._thumbs.clear()

    def _reload_all(self, vocab: Vocabulary | None = None) -> None:
        """Re-read every work under the published vocabulary (or ``vocab``: the
        speed benchmark installs one trained for a registry it grows in memory)."""
        if vocab is None:
            data = self.store.get_vocab()
            vocab = Vocabulary.from_bytes(data) if data is not None else None
        self._reset(vocab)
        # Read and quantised by several threads ahead of this one; inserted in order,
        # so the arrays are the same however many.
        with closing(ordered_map(self._load, self.store.work_ids(), self._threads())) as loaded:
            for r in loaded:
                if r is not None:
                    self._insert(*r)
        self._unsnapshotted = len(self._works)

    def _load(self, wid: int) -> tuple[StoredWork, QuantisedWork] | None:
        """A stored work and its postings under the current vocabulary (None: gone)."""
        w = self.store.get_work(wid)
        return None if w is None else (w, self.quantise(w))

    def _threads(self) -> int:
        return self.load_threads if self.load_threads > 0 else default_load_threads()

    # ---- snapshots (a cache of the postings; see the module doc)

    def _write_snapshot(self, *, publishing: bool = False) -> None:
        """Save this process's postings with the feed cursor they cover.

        Only for the vocabulary the feed announced last, or the one this
        process is about to announce (``publishing``: a retrain, which waits
        for another writer to finish). Otherwise skipped when another process
        is writing one. Failures only log: the works stay the source of truth.
        """
        vocab = self.vocab
        if vocab is None or not self._works:
            return
        if vocab.version != self._published_vocab and not publishing:
            # An older vocabulary than the feed's, or one that lives in memory
            # only (the speed benchmark).
            return
        try:
            with self.store.lock(SNAPSHOT_LOCK, timeout=600, wait=publishing):
                self._write_snapshot_locked(vocab)
        except Locked:
            return
        except OSError as exc:
            log.warning("local index: could not write a postings snapshot: %s", exc)

    def _write_snapshot_locked(self, vocab: Vocabulary) -> None:
        meta = self.store.snapshot_meta(vocab.version)
        try:
            if meta is not None and int(meta.get("offset", -1)) >= self._offset \
                    and meta.get("dir") != self._damaged_snapshot:
                self._unsnapshotted = 0
                return  # another process published these postings (or later ones)
        except (TypeError, ValueError):
            pass
        arrays = {**self.export_state(), **_vocab_arrays(vocab)}
        assert self._main is not None
        info = {"format": SNAPSHOT_FORMAT, "vocab": vocab.version, "offset": self._offset,
                "trained_on": self._trained_on, "works": len(self._works), "postings": self._main.n}
        self.store.put_snapshot(vocab.version, arrays, info)
        self._unsnapshotted = 0
        self._remove_old_snapshots(vocab.version)
        log.info("local index: wrote a postings snapshot of %d works (%d postings)", len(self._works),
                 self._main.n)

    def _remove_old_snapshots(self, version: str) -> None:
        """Delete ``version``'s snapshots other than its current one, and those
        of vocabularies the feed has replaced (under the ``snapshot`` lock).

        A process that mapped one keeps its pages. A vocabulary that a retrain
        elsewhere is about to announce is neither, so its snapshot stays.
        """
        self.store.remove_snapshots(version, set(self._stale_vocabs))

    def _restore_snapshot(self) -> int | None:
        """Load the current snapshot of the published vocabulary; returns the
        feed cursor it covers, or None (none, or unreadable: logged)."""
        meta: Any = None
        try:
            data = self.store.get_vocab()
            if data is None:
                return None
            vocab = Vocabulary.from_bytes(data)
            meta = self.store.snapshot_meta(vocab.version)  # named when its arrays turn out damaged
            if isinstance(meta, dict) and meta.get("format") == 2 and meta.get("vocab") == vocab.version:
                self._convert_snapshot(vocab.version)
                meta = self.store.snapshot_meta(vocab.version)
            meta, arrays = self.store.get_snapshot(vocab.version, (*PostingsIndex.MAPPED, *VOCAB_ARRAYS))
            if meta.get("format") != SNAPSHOT_FORMAT or meta.get("vocab") != vocab.version:
                raise ValueError("it names another vocabulary or format")
            offset = int(meta["offset"])
            if offset > self.store.end():
                raise ValueError("it covers more of the change feed than there is")
            vocab = _mapped_vocab(vocab, arrays)
            self.import_state(vocab, arrays)
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - a damaged cache only costs a full read
            log.warning("local index: ignoring an unreadable postings snapshot: %s", exc)
            if isinstance(meta, dict):
                self._damaged_snapshot = str(meta.get("dir"))
            return None
        self._trained_on = int(meta.get("trained_on", self._trained_on))
        self._unsnapshotted = 0
        log.info("local index: restored %d works (%d postings) of vocabulary %s from a snapshot",
                 len(self._works), self._main.n if self._main is not None else 0, vocab.version)
        return offset

    def _convert_snapshot(self, version: str) -> None:
        """Rewrite ``version``'s format-2 snapshot in the current format, once for
        every process (under the ``snapshot`` lock; another process may have done it
        meanwhile). Raises what reading or converting it raises."""
        with self.store.lock(SNAPSHOT_LOCK, timeout=600):
            meta = self.store.snapshot_meta(version)
            if meta is None or meta.get("format") != 2:
                return
            start = time.perf_counter()
            meta, arrays = self.store.get_snapshot(version, (*FORMAT2_MAPPED, *VOCAB_ARRAYS))
            if meta.get("format") != 2:
                return
            converted = {k: v for k, v in arrays.items() if k not in FORMAT2_MAPPED}
            converted.update(from_format2(arrays, int(np.asarray(arrays["img_work"]).shape[0])))
            del arrays
            info = {k: v for k, v in meta.items() if k != "dir"}
            info["format"] = SNAPSHOT_FORMAT
            self.store.put_snapshot(version, converted, info)
            del converted
            self.store.remove_snapshots(version, set(self._stale_vocabs))
        log.info("local index: converted the format-2 postings snapshot of vocabulary %s (%s postings) to format "
                 "%d in %.1f s", version, meta.get("postings"), SNAPSHOT_FORMAT, time.perf_counter() - start)

    def thumbs(self, work_id: int) -> U8:
        """A searchable work's thumbnails, read from the store on first use (bounded cache)."""
        found = self._thumbs.pop(work_id, None)
        if found is None:
            found = self.store.get_thumbs(work_id)
            if len(self._thumbs) >= THUMB_CACHE:
                self._thumbs.pop(next(iter(self._thumbs)))
        self._thumbs[work_id] = found  # most recently used last
        return found

    def _drop(self, work_id: int) -> None:
        self._thumbs.pop(work_id, None)
        super()._drop(work_id)

    def search(
        self, q: LocalFeatures, *, top: int = 24, owner_ids: Sequence[int] | None = None,
        work_ids: Sequence[int] | None = None,
    ) -> list[Correspondences]:
        """Best-voted (work, mirror) images with their tentative correspondences
        (after applying the feed)."""
        self.refresh()
        return super().search(q, top=top, owner_ids=owner_ids, work_ids=work_ids)
