"""`zhongjing score --rm DIR FILE...`: the reward of each (dialogue, answer) under a trained reward model.

Ranking files (Ranking JSONL, chosen/rejected pairs): every answer is scored, one line per item with its rewards;
when the item is ranked, the summary reports how many of its pairs the reward model orders like the annotators.
Dialogue files: every doctor turn is scored given the real history before it, one line per turn.
Lines go to stdout (or `-o FILE`, written atomically); a summary goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from zhongjing.config import non_negative_int, positive_int
from zhongjing.data.schema import group_pairs
from zhongjing.errors import ZhongjingError


def _items(paths: list[str], fmt: str | None):
    """(id, context messages, answers, ranking groups, turn) per thing to score."""
    from zhongjing.data.readers import kind_of, list_files, read_dialogues, read_rankings
    from zhongjing.data.readers.detect import detect_format

    for f in list_files(paths):
        kind = kind_of(fmt or detect_format(f))
        if kind == "ranking":
            for r in read_rankings(f, fmt):
                yield r.id, r.messages, r.responses, r.ranking, None
        elif kind == "dialogue":
            for d in read_dialogues(f, fmt):
                turn = 0
                for i, m in enumerate(d.messages):
                    if m.role == "assistant":
                        turn += 1
                        yield d.id, d.messages[:i], [m.content], [], turn
        else:
            raise ZhongjingError(f"{f}: holds {kind} data; score reads rankings or dialogues")


def score_file(rm: str, paths: list[str], fmt: str | None = None, *, batch_size: int = 16, max_length: int = 4096,
               normalize: bool = False) -> tuple[list[dict], dict]:
    from zhongjing.model.load import setup_torch
    from zhongjing.model.reward import RewardModelScorer

    setup_torch()
    scorer = RewardModelScorer(rm, max_length=max_length, batch_size=batch_size, normalize=normalize)
    items = list(_items(paths, fmt))
    contexts = [ctx for _, ctx, answers, _, _ in items for _ in answers]
    answers = [a for _, _, ans, _, _ in items for a in ans]
    rewards = [None if x != x else x for x in scorer.score(contexts, answers).tolist()] if answers else []
    rows, pos, pairs, agree = [], 0, 0, 0
    for id_, _, ans, groups, turn in items:
        r = rewards[pos:pos + len(ans)]
        pos += len(ans)
        row = {"id": id_}
        if turn is None:
            row["rewards"] = [None if x is None else round(x, 6) for x in r]
            if groups:
                row["ranking"] = groups
                for b, w in group_pairs(groups):
                    if r[b] is not None and r[w] is not None:
                        pairs += 1
                        agree += r[b] > r[w]
        else:
            row |= {"turn": turn, "reward": None if r[0] is None else round(r[0], 6)}
        rows.append(row)
    ok = [x for x in rewards if x is not None]
    summary = {"items": len(rows), "answers": len(answers), "unscored": len(rewards) - len(ok),
               "mean_reward": sum(ok) / len(ok) if ok else None}
    if pairs:
        summary |= {"pairs": pairs, "pairwise_accuracy": agree / pairs}
    return rows, summary


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="zhongjing score", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rm", required=True, help="reward-model folder written by `zhongjing train rm`")
    p.add_argument("files", nargs="+", help="ranking or dialogue files/folders (any supported format)")
    p.add_argument("--format", default=None, help="input format (default: detected per file)")
    p.add_argument("-o", "--output", default=None, help="write JSONL here instead of stdout")
    # 0 would leave every answer unscored (or loop forever) instead of saying why; -1 threads was torch's traceback
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--max-length", type=positive_int, default=4096)
    p.add_argument("--normalize", action="store_true", help="(r − mean)/std with the RM's validation statistics")
    p.add_argument("--threads", type=non_negative_int, default=0, help="torch CPU threads (0 = torch's default)")
    a = p.parse_args(argv)
    if a.output:  # before the model loads and every answer is scored
        from zhongjing.io import check_output

        check_output(a.output, folder=False)
    if a.threads:
        from zhongjing.model.load import setup_torch

        setup_torch(threads=a.threads)
    rows, summary = score_file(a.rm, a.files, a.format, batch_size=a.batch_size, max_length=a.max_length,
                               normalize=a.normalize)
    if a.output:
        from zhongjing.io import write_jsonl

        write_jsonl(Path(a.output), rows)
    else:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(json.dumps(summary, ensure_ascii=False), file=sys.stderr)
    return 0
