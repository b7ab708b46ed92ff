"""Postings snapshots: a starting process maps them instead of re-reading every work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import portalocker
import pytest

from matching import replica as index
from matching import vocabulary
from matching.engine import Engine, WorkRef
from matching.features import StoredWork
from matching.store.folder import FolderFeatureStore

from .test_engine import OWNER, WORKS, encode, scene, textured


def _register_all(e: Engine) -> None:
    for wid, img in WORKS.items():
        e.register(WorkRef(wid, OWNER[wid], "artwork"), encode(img, "PNG"))


def _snapshotted(root: Path) -> tuple[Engine, dict[str, Any]]:
    """A registry of WORKS whose current state is snapshotted, and that snapshot's pointer."""
    writer = Engine(root)
    _register_all(writer)
    writer.index._write_snapshot()
    return writer, _meta(root)


def _decisions(e: Engine, data: bytes) -> list[tuple[int, bool, float]]:
    return [(c.work_id, c.match, round(c.score, 6)) for c in e.analyse(data)]


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    reads: list[int] = []
    real = FolderFeatureStore.get_work

    def counted(self: FolderFeatureStore, work_id: int) -> StoredWork | None:
        reads.append(work_id)
        return real(self, work_id)

    monkeypatch.setattr(FolderFeatureStore, "get_work", counted)
    return reads


def _pointer(root: Path) -> Path:
    pointers = list((root / "features" / "snapshots").glob("*.json"))
    assert len(pointers) == 1, pointers  # one vocabulary's snapshot
    return pointers[0]


def _meta(root: Path) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads(_pointer(root).read_text())
    return meta


UPLOADS = {
    "crop": encode(WORKS[1][60:300, 100:420], quality=85),
    "flip": encode(np.ascontiguousarray(WORKS[2][:, ::-1]), quality=80),
    "other": encode(textured(99), quality=80),
}


def test_a_new_process_restores_the_snapshot_without_reading_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, meta = _snapshotted(tmp_path)
    assert writer.index.vocab is not None
    assert meta["works"] == len(WORKS) and meta["vocab"] == writer.index.vocab.version
    reads = _count_reads(monkeypatch)
    reader = Engine(tmp_path)
    assert reads == []  # nothing re-read, nothing re-quantised
    assert reader.index.work_ids == sorted(WORKS)
    restored, registered = reader.index.work(3), writer.index.work(3)
    assert restored is not None and registered is not None
    assert restored.owner_id == OWNER[3]
    np.testing.assert_array_equal(restored.pdq, registered.pdq)
    for data in UPLOADS.values():
        assert _decisions(reader, data) == _decisions(writer, data)
    assert [c.work_id for c in reader.analyse(UPLOADS["crop"]) if c.match] == [1]
    assert not any(c.match for c in reader.analyse(UPLOADS["other"]))


def test_changes_after_the_snapshot_are_replayed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer, meta = _snapshotted(tmp_path)
    before = meta["offset"]
    writer.unregister(1)
    pasted = scene(50)
    pasted[200:380, 300:540] = textured(7)[:180, :240]
    writer.register(WorkRef(7, 30, "artwork"), encode(textured(7), "PNG"))
    assert _meta(tmp_path)["offset"] == before  # fewer changes than SNAPSHOT_EVERY
    reads = _count_reads(monkeypatch)
    reader = Engine(tmp_path)
    assert reads == [7]  # the snapshot plus the one added work
    assert reader.index.work_ids == [2, 3, 4, 7]
    assert not any(c.work_id == 1 and c.match for c in reader.analyse(UPLOADS["crop"]))
    assert [c.work_id for c in reader.analyse(encode(pasted, quality=85)) if c.match] == [7]
    assert [c.work_id for c in reader.analyse(encode(pasted, quality=85), owner_ids=[30]) if c.match] == [7]
    assert 7 not in [c.work_id for c in reader.analyse(encode(pasted, quality=85), owner_ids=[10])]


def test_a_snapshot_is_rewritten_after_enough_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index, "SNAPSHOT_EVERY", 2)
    writer = Engine(tmp_path)
    _register_all(writer)
    first = _meta(tmp_path)
    writer.register(WorkRef(8, 30, "artwork"), encode(textured(8), "PNG"))
    writer.register(WorkRef(9, 30, "artwork"), encode(textured(9), "PNG"))
    second = _meta(tmp_path)
    assert second["offset"] > first["offset"] and second["works"] == len(WORKS) + 2
    # Only the current snapshot's files are kept.
    names = sorted(p.name for p in (tmp_path / "features" / "snapshots").iterdir())
    assert names == sorted([second["dir"], f"{second['vocab']}.json"])


def test_a_retrain_snapshots_the_new_vocabulary_before_announcing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer, old = _snapshotted(tmp_path)
    ready: list[bool] = []
    real_publish = FolderFeatureStore.publish_vocab

    def publish(self: FolderFeatureStore, data: bytes, version: str, works: int) -> int:
        ready.append(self.snapshot_pointer(version).exists())
        return real_publish(self, data, version, works)

    monkeypatch.setattr(FolderFeatureStore, "publish_vocab", publish)
    monkeypatch.setattr(vocabulary, "POSTINGS_PER_WORD", 2)  # the retrain adds sub-words
    writer.retrain()
    assert ready == [True]
    assert writer.index.vocab is not None and writer.index.vocab.k3 == vocabulary.MAX_SUB_WORDS
    new = _meta(tmp_path)  # and the old vocabulary's snapshot is gone
    assert new["vocab"] == writer.index.vocab.version != old["vocab"]
    assert not any(p.name.startswith(old["vocab"]) for p in (tmp_path / "features" / "snapshots").iterdir())
    reads = _count_reads(monkeypatch)
    reader = Engine(tmp_path)
    assert reads == []
    assert reader.index.vocab is not None and reader.index.vocab.version == new["vocab"]
    for data in UPLOADS.values():
        assert _decisions(reader, data) == _decisions(writer, data)


def test_a_retrain_never_holds_the_journal_lock_while_it_reads_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Registrations in other processes append to the journal under its lock; a
    retrain reads every work (minutes at thousands of works) without it."""
    writer = Engine(tmp_path)
    _register_all(writer)
    blocked: list[int] = []
    reads: list[int] = []
    real = FolderFeatureStore.get_work

    def read(self: FolderFeatureStore, work_id: int) -> StoredWork | None:
        reads.append(work_id)
        try:
            with portalocker.Lock(str(self.lock_path), timeout=0, fail_when_locked=True):
                pass
        except portalocker.AlreadyLocked:
            blocked.append(work_id)
        return real(self, work_id)

    monkeypatch.setattr(FolderFeatureStore, "get_work", read)
    writer.retrain()
    assert reads and blocked == []


def _truncate(root: Path, meta: dict, name: str) -> None:  # type: ignore[type-arg]
    f = root / "features" / "snapshots" / meta["dir"] / name
    f.write_bytes(f.read_bytes()[:100])


def _overstate_offset(root: Path, meta: dict) -> None:  # type: ignore[type-arg]
    # e.g. a data dir restored from a backup whose journal is older than its snapshot
    _pointer(root).write_text(json.dumps(dict(meta, offset=meta["offset"] + 10_000)))


@pytest.mark.parametrize("damage", [
    lambda root, meta: _truncate(root, meta, "sig.npy"),  # a mapped array
    lambda root, meta: _truncate(root, meta, "works.npy"),  # a loaded one
    lambda root, meta: _truncate(root, meta, "offsets.npy"),
    lambda root, meta: _pointer(root).write_text('{"format": 1, "vocab": '),
    _overstate_offset,
], ids=["mapped-array", "loaded-array", "offsets", "pointer", "offset-beyond-journal"])
def test_a_damaged_snapshot_is_ignored_and_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, damage: Any
) -> None:
    _, meta = _snapshotted(tmp_path)
    damage(tmp_path, meta)
    reads = _count_reads(monkeypatch)
    with caplog.at_level("WARNING", logger="matching.replica"):
        reader = Engine(tmp_path)
    assert "unreadable postings snapshot" in caplog.text
    assert sorted(reads) == sorted(WORKS)  # fell back to reading every work
    assert [c.work_id for c in reader.analyse(UPLOADS["crop"]) if c.match] == [1]
    assert _meta(tmp_path)["dir"] != meta["dir"]  # and published a sound one
    reads.clear()
    Engine(tmp_path)
    assert reads == []


def _mapped(a: np.ndarray) -> bool:
    """Whether ``a`` is a view of a memory-mapped file."""
    seen: np.ndarray | None = a
    while seen is not None and not isinstance(seen, np.memmap):
        seen = seen.base
    return seen is not None


def test_postings_keep_positions_in_fixed_point_within_a_64th_of_a_pixel(tmp_path: Path) -> None:
    """A posting is 16 bytes: its position is two uint16 in XY_UNIT steps, not two float32, its
    image the low 16 bits, its keypoint size and orientation a byte each."""
    from matching.features import extract_features
    from matching.postings import XY_UNIT

    writer = Engine(tmp_path)
    _register_all(writer)
    state = writer.index.export_state()
    assert state["xy"].dtype == np.uint16
    fields = ("image_lo", "sig", "xy", "sa")
    per_posting = {k: state[k].itemsize * int(np.prod(state[k].shape[1:])) for k in fields}
    assert sum(per_posting.values()) == 16
    q = extract_features(WORKS[1][60:300, 100:420], balanced=True)
    found = writer.index.search(q)
    assert found and found[0].work_id == 1
    for c in found[:4]:
        w = writer.index.store.get_work(c.work_id)
        assert w is not None
        kp = (w.mirrored if c.mirrored else w.direct).xy
        # every correspondence's work-side position is one of the work's keypoints, rounded
        gap = np.abs(c.w_xy[:, None, :] - kp[None, :, :]).max(axis=2).min(axis=1)
        assert c.w_xy.shape[0] > 0 and float(gap.max()) <= XY_UNIT / 2 + 1e-4


def test_a_snapshot_of_the_previous_format_is_ignored_and_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Format 1 kept positions as float32: such a snapshot is not mapped, the registry is read in
    full once, and a snapshot of the current format takes its place."""
    from matching.postings import XY_UNIT

    writer, meta = _snapshotted(tmp_path)
    folder = tmp_path / "features" / "snapshots" / meta["dir"]
    old_xy = np.load(folder / "xy.npy").astype(np.float32) * np.float32(XY_UNIT)
    np.save(folder / "xy.npy", old_xy)
    _pointer(tmp_path).write_text(json.dumps(dict(meta, format=1)))
    reads = _count_reads(monkeypatch)
    with caplog.at_level("WARNING", logger="matching.replica"):
        reader = Engine(tmp_path)
    assert "unreadable postings snapshot" in caplog.text
    assert sorted(reads) == sorted(WORKS)
    for data in UPLOADS.values():
        assert _decisions(reader, data) == _decisions(writer, data)
    assert _meta(tmp_path)["format"] == index.SNAPSHOT_FORMAT == 3
    reads.clear()
    Engine(tmp_path)
    assert reads == []


def _format2_arrays(e: Engine) -> dict[str, np.ndarray]:
    """The postings arrays format 2 kept for ``e``'s registry, made the way its code made them:
    every image's descriptors quantised, postings stably sorted by word; the image as int32, the
    keypoint size and orientation as float16."""
    from matching.postings import _fixed_xy

    ix = e.index
    assert ix.vocab is not None
    words, image, sig, xy, sa = [], [], [], [], []
    for img, info in enumerate(ix._images):
        work = ix.store.get_work(info.work_id)
        assert work is not None
        f = work.mirrored if info.mirrored else work.direct
        rows, s, w = ix.vocab.assign(f.desc)
        words.append(w)
        sig.append(s)
        image.append(np.full(rows.shape[0], img, np.int32))
        xy.append(_fixed_xy(f.xy[rows]))  # positions are kept as in format 2
        sa.append(np.stack([f.scale, f.angle], axis=1).astype(np.float16)[rows])
    order = np.argsort(np.concatenate(words), kind="stable")
    offsets = np.searchsorted(np.concatenate(words)[order], np.arange(ix.vocab.size + 1)).astype(np.int64)
    return {"offsets": offsets, "image": np.concatenate(image)[order], "sig": np.concatenate(sig)[order],
            "xy": np.concatenate(xy)[order], "scale_angle": np.concatenate(sa)[order]}


def test_a_format2_snapshot_converts_to_what_quantising_every_work_gives(tmp_path: Path) -> None:
    """20-byte postings (format 2) convert to this format's arrays, identical to quantising every
    work again, including image numbers past 65,536 (several runs a word)."""
    from matching.postings import from_format2

    writer = Engine(tmp_path)
    _register_all(writer)
    old = _format2_arrays(writer)
    state = writer.index.export_state()
    got = from_format2(old, state["img_work"].shape[0])
    for k in ("offsets", "runs", "image_lo", "sig", "xy", "sa"):
        assert got[k].dtype == state[k].dtype and np.array_equal(got[k], state[k]), k
    # The same postings as if every image number were 100,000 higher.
    far = from_format2({**old, "image": old["image"] + 100_000}, 100_000 + state["img_work"].shape[0])
    assert far["runs"].shape[0] - 1 == 2 * (state["offsets"].shape[0] - 1)
    high = np.repeat(np.arange(far["runs"].shape[0] - 1) % 2 << 16, np.diff(far["runs"]))
    assert np.array_equal(high | far["image_lo"], old["image"] + 100_000)
    # A word whose postings do not ascend by image is not converted.
    busy = int(np.argmax(np.diff(old["offsets"])))
    lo, hi = int(old["offsets"][busy]), int(old["offsets"][busy + 1])
    shuffled = old["image"].copy()
    shuffled[lo:hi] = shuffled[lo:hi][::-1]
    assert len(set(shuffled[lo:hi].tolist())) > 1
    with pytest.raises(ValueError, match="ascend"):
        from_format2({**old, "image": shuffled}, state["img_work"].shape[0])


def test_a_format2_snapshot_is_converted_once_without_reading_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A process that finds a format-2 snapshot rewrites it in the current format and maps that:
    no work is read, the decisions are the registry's own, and the next process maps the new one."""
    writer, meta = _snapshotted(tmp_path)
    folder = tmp_path / "features" / "snapshots" / meta["dir"]
    for name in ("runs", "image_lo", "sa"):
        (folder / f"{name}.npy").unlink()
    for name, arr in _format2_arrays(writer).items():
        np.save(folder / f"{name}.npy", arr)
    _pointer(tmp_path).write_text(json.dumps(dict(meta, format=2)))
    reads = _count_reads(monkeypatch)
    with caplog.at_level("INFO", logger="matching.replica"):
        reader = Engine(tmp_path)
    assert "converted the format-2 postings snapshot" in caplog.text
    assert reads == []
    for data in UPLOADS.values():
        assert _decisions(reader, data) == _decisions(writer, data)
    now = _meta(tmp_path)
    assert now["format"] == 3 and now["dir"] != meta["dir"] and now["offset"] == meta["offset"]
    assert not folder.exists()  # the format-2 arrays are gone
    assert _mapped(reader.index._main.image_lo)  # type: ignore[union-attr]
    caplog.clear()
    with caplog.at_level("INFO", logger="matching.replica"):
        Engine(tmp_path)
    assert "converted" not in caplog.text and reads == []


def test_a_restoring_process_maps_the_vocabulary_from_the_snapshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The centroids travel in the snapshot, so a restoring process maps them (pages shared with
    the node's other processes) instead of holding its own copy; a snapshot whose centroids differ
    from the published vocabulary's is refused."""
    writer, meta = _snapshotted(tmp_path)
    assert writer.index.vocab is not None
    folder = tmp_path / "features" / "snapshots" / meta["dir"]
    assert (folder / "vocab_fine.npy").exists()
    reader = Engine(tmp_path)
    v = reader.index.vocab
    assert v is not None and v.version == writer.index.vocab.version
    np.testing.assert_array_equal(v.fine, writer.index.vocab.fine)
    assert _mapped(v.fine)
    for data in UPLOADS.values():
        assert _decisions(reader, data) == _decisions(writer, data)

    fine = np.load(folder / "vocab_fine.npy")
    fine[0, 0, 0] += 1.0
    np.save(folder / "vocab_fine.npy", fine)
    with caplog.at_level("WARNING", logger="matching.replica"):
        other = Engine(tmp_path)
    assert "vocabulary arrays differ from the published vocabulary" in caplog.text
    assert other.index.vocab is not None and not _mapped(other.index.vocab.fine)
    assert [c.work_id for c in other.analyse(UPLOADS["crop"]) if c.match] == [1]


def test_a_registry_past_65536_images_searches_as_before(tmp_path: Path) -> None:
    """Image numbers past 65,536 (a word's postings then span several runs of high bits) give the
    same candidates and correspondences: the registry's state with 70,000 dead images first."""
    from matching.features import extract_features
    from matching.postings import PostingsIndex, from_format2

    writer = Engine(tmp_path)
    _register_all(writer)
    vocab = writer.index.vocab
    assert vocab is not None
    state = writer.index.export_state()
    pad = 70_000
    shifted = dict(state)
    for k, fill in (("img_work", -1), ("img_owner", -1), ("img_mirrored", False), ("img_nkp", 0), ("alive", False)):
        shifted[k] = np.concatenate([np.full(pad, fill, state[k].dtype), state[k]])
    old = _format2_arrays(writer)
    shifted.update(from_format2({**old, "image": old["image"] + pad}, pad + state["img_work"].shape[0]))
    assert shifted["runs"].shape[0] - 1 == 2 * (shifted["offsets"].shape[0] - 1)
    far = PostingsIndex(vocab=vocab)
    far.import_state(vocab, shifted)
    near = PostingsIndex(vocab=vocab)
    near.import_state(vocab, state)
    queries = [extract_features(WORKS[1][60:300, 100:420], balanced=True),
               extract_features(np.ascontiguousarray(WORKS[2][:, ::-1]), balanced=True)]
    for q in queries:
        a, b = near.search(q), far.search(q)
        assert a and [(c.work_id, c.mirrored, c.votes) for c in a] == [(c.work_id, c.mirrored, c.votes) for c in b]
        for x, y in zip(a, b, strict=True):
            assert np.array_equal(x.w_xy, y.w_xy) and np.array_equal(x.d_angle, y.d_angle)
