"""`zhongjing export --merge ADAPTER_DIR -o OUT`: fold a LoRA adapter (or a chain of them) into its base and
write a standalone model folder that plain `transformers` loads, with the tokenizer and chat template."""

from __future__ import annotations

import argparse
from pathlib import Path

from zhongjing.errors import ZhongjingError
from zhongjing.io import atomic_path, check_output, write_json


def merge_adapter(adapter_dir: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    from zhongjing.model.load import is_adapter_dir, load_model, load_tokenizer, read_meta
    from zhongjing.model.identity import code_version, model_fingerprint

    src = Path(adapter_dir)
    if not is_adapter_dir(src):
        raise ZhongjingError(f"{src}: not a LoRA adapter folder (no adapter_config.json); nothing to merge")
    out = check_output(out, folder=True)  # before the model loads: no file in the way
    if out.exists() and any(out.iterdir()) and read_meta(out).get("stage") != "export":
        # replacing the adapter itself or a model it stands on (its base) would destroy it — or silently apply the
        # adapter twice for everything trained over that base; only an earlier export may be replaced
        what = read_meta(out).get("stage")
        raise ZhongjingError(f"{out}: already exists ({what or 'not an export'}); choose a new folder for -o")
    model = load_model(src, dtype=dtype).merge_and_unload()  # (refuses a reward model: its score head would be lost)
    tokenizer = load_tokenizer(src)
    src_meta = read_meta(src)
    with atomic_path(out, folder=True) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        write_json(tmp / "meta.json", {
            "stage": "export",
            "kind": "full",
            "parent": str(src.resolve()),
            "base_model": None,
            "merged_from": {"stage": src_meta.get("stage"), "base_model": src_meta.get("base_model")},
            "inputs_hash": model_fingerprint(src),  # same adapter → same merged model
            "dtype": dtype,
            "code": code_version(),
            "metrics": src_meta.get("metrics", {}),
        })
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="zhongjing export", description=__doc__)
    p.add_argument("--merge", required=True, metavar="ADAPTER_DIR", help="LoRA adapter folder written by a stage")
    p.add_argument("-o", "--output", required=True, help="folder for the merged model")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16 for the saved weights")
    a = p.parse_args(argv)
    from zhongjing.model.load import setup_torch

    setup_torch()
    out = merge_adapter(a.merge, a.output, a.dtype)
    print(f"merged {a.merge} → {out}")
    return 0
