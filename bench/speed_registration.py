"""Wall time of one registration that makes a vocabulary retrain due, inline and queued.

    python bench/speed_registration.py --scratch /work/benchruns/registration --works 10000

Builds a registry of ``--works`` works in ``--scratch``: a few demo paintings
registered for real (``workers.demo.painting``), grown with the synthetic works
of ``speed_matching.py`` (feature files and journal lines, as registered ones),
every work quantised and snapshotted under a vocabulary that the journal says
was trained on half the registry plus one. The next registration therefore
crosses a doubling and makes a retrain due. Then, in this one process, the
same new work (a real painting) is registered twice through
:meth:`matching.Engine.register` (the step of ``registry.service.register_work``
that the web form, the API and ``artwatch works add`` share; the SQL row and
the blob copy add milliseconds):

1. ``queued`` (this branch): the engine a web process builds
   (``maintenance=workers.maintenance.maintenance_hook``, ``workers.maintenance
   = "queue"``, folder broker in the scratch dir): the registration queues
   ``artwatch.retrain_vocabulary`` and returns;
2. ``inline`` (main's behaviour: no hook): the work is removed, and the same
   registration retrains the vocabulary inside the call (reads every work,
   trains, quantises and snapshots the registry) before it returns.

Timed with ``time.perf_counter`` (wall) and ``time.process_time`` (CPU).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speed_matching import synthetic_works  # the same synthetic works as the other speed benches


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _timed(fn: Any) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scratch", type=Path, required=True, help="emptied and filled with the registry")
    ap.add_argument("--works", type=int, default=10_000)
    ap.add_argument("--real", type=int, default=8, help="demo paintings registered for real")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from config.settings import load_settings
    from matching.engine import Engine, WorkRef
    from matching.features import limit_native_threads
    from matching.replica import LocalIndex
    from matching.store.folder import FolderFeatureStore
    from matching.vocabulary import Vocabulary
    from workers.demo import painting
    from workers.maintenance import maintenance_hook

    limit_native_threads()
    if args.scratch.exists():
        shutil.rmtree(args.scratch)
    data = args.scratch / "data"
    data.mkdir(parents=True)
    t = time.perf_counter()
    seed_engine = Engine(data)
    real = [seed_engine.prepare(WorkRef(i, 1000 + i, "artwork"), _png(painting(100 + i)))
            for i in range(1, args.real + 1)]
    store = FolderFeatureStore(data / "features")
    for w in real:
        store.put_work(w)
    pool = np.concatenate([f.desc for w in real for f in (w.direct, w.mirrored) if len(f)])
    rng = np.random.default_rng(args.seed)
    for w in synthetic_works(real, pool, args.works - len(real), rng):
        store.put_work(w)
    ids = store.work_ids()
    store.append([f"add {i}" for i in ids])
    # Quantise and snapshot the registry under a vocabulary trained on the real
    # works, announced as trained on half the registry plus one: the next
    # registration reaches twice that and makes a retrain due.
    index = LocalIndex(store)
    index._offset = store.end()  # the snapshot covers every add line
    vocab = Vocabulary.train(pool)
    index._reload_all(vocab)
    index._write_snapshot(publishing=True)
    trained_on = (len(ids) + 1) // 2
    if trained_on < 256:  # below 256 works the vocabulary is retrained at 4x, not 2x
        trained_on = (len(ids) + 1) // 4
    store.publish_vocab(vocab.to_bytes(), vocab.version, trained_on)
    del index
    print(f"built a registry of {len(ids)} works in {time.perf_counter() - t:.0f}s", file=sys.stderr)

    new_id = max(ids) + 1
    work = WorkRef(new_id, 1, "artwork")
    image = _png(painting(7))
    settings = load_settings(data_dir=data, broker_url="", matching={"use_embedder": False},
                             workers={"maintenance": "queue"})
    res: dict[str, Any] = {"works_before": len(ids), "trained_on": trained_on}

    queued = Engine(data, maintenance=maintenance_hook(settings))
    wall, cpu = _timed(partial(queued.register, work, image))
    assert queued.index.vocab is not None and queued.index.vocab.version == vocab.version, "retrained inline"
    assert new_id in queued.index.work_ids
    msgs = [p.name for p in (settings.broker_dir() / "queue").iterdir() if p.name.endswith(".maintenance.msg")]
    assert len(msgs) == 1, msgs
    res["queued"] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}
    print(f"queued: {wall:.2f}s", file=sys.stderr)
    queued.unregister(new_id)
    del queued

    inline = Engine(data)
    wall, cpu = _timed(partial(inline.register, work, image))
    assert inline.index.vocab is not None and inline.index.vocab.version != vocab.version, "no retrain"
    res["inline"] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
    print(f"inline: {wall:.0f}s", file=sys.stderr)
    res["inline_over_queued_wall"] = round(res["inline"]["wall_s"] / max(res["queued"]["wall_s"], 1e-6), 1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
