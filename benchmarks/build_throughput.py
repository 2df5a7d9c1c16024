"""Builder throughput on the shared real dialogues (the rewrite endpoint excluded), with peer baselines.

    python benchmarks/build_throughput.py [--data ../shared/data] [--repeat 1]

Runs import → deid → kg_check → screen → departments → split in-process on COVID-Dialogue, DXY,
the CMtMedQA test part and Toyhom (all records) and prints dialogues/s per step and overall.
Three parts are compared with a named peer measured in the same run on the same input:
  - de-identification vs a plain single-pass loop applying the same regexes with re.sub
    (no checksum/context validation, no overlap resolution);
  - KG mention finding (trie, leftmost-longest) vs testing every dictionary term with `in`;
  - near-duplicate detection (our numpy MinHash + LSH) vs datasketch's MinHash + MinHashLSH
    (skipped with a note when datasketch is not installed).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from zhongjing.dataset import deid as deid_mod
from zhongjing.dataset.chain import BuildConfig, InputConfig, import_dialogues
from zhongjing.data.kg import KGConfig, load_index
from zhongjing.dataset.minhash import MinHasher, near_duplicate_clusters, shingle_hashes
from zhongjing.dataset.report import StepReport
from zhongjing.dataset.steps import StepContext, run_step

SOURCES = ["covid_dialogue_zh/COVID-Dialogue-Dataset-Chinese.json", "dxy_dialog/dxy_dialog_data_dialog_v2.txt",
           "cmtmedqa_test/CMtMedQA_test.shared.json", "toyhom_medical_dialogue/样例_内科5000-6000.csv"]


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def peer_deid(texts: list[str]) -> list[str]:
    """Peer: every pattern of ours as a blind re.sub, one pass per pattern."""
    pats = [(rx, deid_mod.PLACEHOLDERS[t]) for t, rx, _ in deid_mod._PATTERNS]
    pats += [(deid_mod._ID18, "[身份证号]"), (deid_mod._ID15, "[身份证号]"), (deid_mod._LONG_DIGITS, "[银行卡号]"),
             (deid_mod._ADDRESS_RE, "[地址]")]
    out = []
    for t in texts:
        for rx, ph in pats:
            t = rx.sub(ph, t)
        out.append(t)
    return out


def peer_mentions(texts: list[str], terms: list[str]) -> int:
    return sum(1 for t in texts for term in terms if term in t)


def peer_datasketch(docs: list[str], threshold: float, num_perm: int, k: int) -> int | None:
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError:
        return None
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    sigs = []
    for i, d in enumerate(docs):
        m = MinHash(num_perm=num_perm)
        m.update_batch([d[j:j + k].encode() for j in range(max(1, len(d) - k + 1))])
        lsh.insert(str(i), m)
        sigs.append(m)
    return sum(len(lsh.query(m)) > 1 for m in sigs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = ap.parse_args()
    data = Path(args.data)
    work = Path(tempfile.mkdtemp(prefix="zj-build-bench-"))
    cfg = BuildConfig(inputs=[InputConfig(str(data / s)) for s in SOURCES], work_dir=str(work), output=str(work / "out"),
                      progress=False, kg=KGConfig(path=str(data / "medical_kg_xywy" / "tonystark_records"),
                                                   extra_drug_lists=[str(data / "medical_kg_xywy/liuhuanyong_dict/drug.txt"),
                                                                     str(data / "medical_kg_xywy/liuhuanyong_dict/producer.txt")]))
    rows = []
    ds, secs = _timed(lambda: import_dialogues(cfg, StepReport("import")))
    n_total = len(ds)
    rows.append(("import (read + normalise)", n_total, secs))
    index, kg_secs = _timed(lambda: load_index(cfg.kg))
    print(f"{n_total} dialogues from {len(SOURCES)} sources; KG: {len(index.diseases)} diseases, "
          f"{index.matcher.size} dictionary terms (built in {kg_secs:.1f} s, once per process)\n")
    total = rows[0][2]
    for name in ("deid", "kg_check", "screen", "departments", "split"):
        ctx = StepContext(work / f"{name}.jsonl" if name != "split" else work / "out", work, False)
        n_in = len(ds)
        (res, _), secs = _timed(lambda: run_step(name, ds, cfg, ctx))
        rows.append((name, n_in, secs))
        total += secs
        ds = res if res is not None else ds
    for name, n, secs in rows:
        print(f"  {name:<26} {n:>6} dialogues  {secs:7.2f} s  {n / secs:>10,.0f} dialogues/s")
    print(f"  {'whole chain (no rewrite)':<26} {n_total:>6} dialogues  {total:7.2f} s  {n_total / total:>10,.0f} dialogues/s\n")

    # peer comparisons on the same imported dialogues
    raw = import_dialogues(cfg, StepReport("import"))
    texts = [m.content for d in raw for m in d.messages]
    engine = deid_mod.Deidentifier()
    _, ours = _timed(lambda: [engine.redact(t) for t in texts])
    _, peer = _timed(lambda: peer_deid(texts))
    print(f"deid: zhongjing {len(raw) / ours:,.0f} dialogues/s vs plain re.sub loop {len(raw) / peer:,.0f} dialogues/s "
          f"(ratio {peer / ours:.2f}x; ours also validates checksums, dates and context)")
    doctor = [m.content for d in raw for m in d.messages if m.role == "assistant"][:2000]
    terms = [t for t in _terms(index)]
    _, ours = _timed(lambda: [index.matcher.find(t) for t in doctor])
    _, peer = _timed(lambda: peer_mentions(doctor, terms))
    print(f"KG mentions: trie {len(doctor) / ours:,.0f} turns/s vs `term in text` over {len(terms)} terms "
          f"{len(doctor) / peer:,.0f} turns/s (ratio {peer / ours:.1f}x)")
    docs = ["".join(m.content for m in d.messages) for d in raw]
    hasher = MinHasher(128)
    found, ours = _timed(lambda: near_duplicate_clusters([hasher.signature(shingle_hashes(x, 5)) for x in docs], 0.8))
    dup, peer = _timed(lambda: peer_datasketch(docs, 0.8, 128, 5))
    if dup is None:
        print("near-dup: datasketch not installed (pip install datasketch) — peer not measured")
    else:
        print(f"near-dup: zhongjing MinHash+LSH {len(docs) / ours:,.0f} dialogues/s ({sum(map(len, found))} in clusters) vs "
              f"datasketch {len(docs) / peer:,.0f} dialogues/s ({dup} with a neighbour) (ratio {peer / ours:.1f}x)")


def _terms(index) -> list[str]:
    out, stack = [], [(index.matcher.root, "")]
    while stack:
        node, prefix = stack.pop()
        for ch, child in node.items():
            if ch == "":
                out.append(prefix)
            else:
                stack.append((child, prefix + ch))
    return out


if __name__ == "__main__":
    main()
