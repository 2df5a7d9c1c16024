"""fit() for the preference stages (`train rm`, `train dpo`): their meta.json, the start line, and the best
validation record's accuracy and margin added to OUT/meta.json afterwards."""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

from zhongjing.io import write_json
from zhongjing.model.identity import data_record, training_meta
from zhongjing.model.load import read_meta
from zhongjing.model.lora import TrainedIO, count_params
from zhongjing.train.loop import fit
from zhongjing.train.pref_batches import RankingBatches


def fit_prefs(stage: str, cfg, model, tokenizer, data: RankingBatches, counts: Counter, loss_fn, on_eval, *,
              accelerator, meta: dict, best_extra=None):
    """fit() with the meta.json every preference stage writes; afterwards the best validation record's accuracy and
    margin (and best_extra(record), e.g. the RM's reward statistics) are added to OUT/meta.json."""
    t0 = time.time()
    trainable, total = count_params(model)
    parent = str(Path(cfg.model).resolve())
    records = [data_record(p) for p in list(cfg.data) + list(cfg.val_data)]
    meta = training_meta(stage, cfg, parent, records,
                         kind="full" if getattr(cfg, "finetune", "lora") == "full" else "adapter",
                         counts=dict(counts), params={"trainable": trainable, "total": total}) | meta
    if accelerator.is_main_process:
        left = {"too_long": "too long for max_length", "unranked": "unranked", "all_tied": "all tied"}
        left = ", ".join(f"{counts[k]} {why}" for k, why in left.items() if counts[k])
        print(f"{stage}: {counts['train']} rankings ({counts['train_pairs']} pairs) train, {counts['val']} val"
              + (f" (left out: {left})" if left else "") + f"; {trainable:,}/{total:,} trainable parameters",
              file=sys.stderr)
    result = fit(model, data, loss_fn, cfg.train, cfg.output, accelerator=accelerator,
                 io=TrainedIO(tokenizer, parent), meta=meta, on_eval=on_eval)
    out = Path(cfg.output)
    if accelerator.is_main_process:
        final = read_meta(out)
        best = next((h for h in result.history if h["step"] == result.best_step), None)
        if best is not None:
            final["metrics"] |= {"val_accuracy": best["val_accuracy"], "val_margin": best["val_margin"]}
            longer = best.get("val_longer_wins")  # the RM's trivial baseline (absent for DPO; NaN without lengths)
            if longer is not None and longer == longer:
                final["metrics"]["val_longer_wins"] = longer
            final |= best_extra(best) if best_extra else {}
        final["seconds"] = round(time.time() - t0, 1)
        write_json(out / "meta.json", final)
    accelerator.wait_for_everyone()
    return out
