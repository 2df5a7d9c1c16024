"""Consultation episodes per second and doctor tokens per second: consult/episodes.py (all episodes of a turn decode
together in zhongjing's batched decoder) next to plain `transformers` `generate`, one episode after another, one
doctor turn per call — what a simple environment loop does.

    python benchmarks/bench_consult.py [--model DIR] [--episodes 32] [--turns 3] [--max-new-tokens 32] [--repeat 2]

Both sides play the same demo cases against the same retrieval patient, greedy, with the same stop tokens, so they
speak the same doctor turns (up to float ties) and their token counts compare like for like. Each side runs --repeat
times, interleaved; the fastest run is reported. Without --model the tiny demo model (init-model defaults trained on the
demo corpus) is built in a temp folder. Report CPU time (user+sys) too on a shared machine: `/usr/bin/time -v`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zhongjing.consult.cases import CasesConfig, build_cases  # noqa: E402
from zhongjing.consult.episodes import Episode, EpisodeSettings, run_episodes  # noqa: E402
from zhongjing.consult.patients import RetrievalPatient, State  # noqa: E402
from zhongjing.data.render import Renderer  # noqa: E402
from zhongjing.data.text import asks_question  # noqa: E402
from zhongjing.model.load import end_of_turn_ids, load_model, load_tokenizer, setup_torch  # noqa: E402


def plain_loop(model, tok, cases, patient, s: EpisodeSettings, renderer, stop_ids) -> tuple[list[Episode], float]:
    t0 = time.perf_counter()
    eps = []
    for c in cases:
        ep = Episode(c, [{"role": "user", "content": c.opening}])
        for turn in range(s.max_turns):
            ids = torch.tensor([renderer.prompt_ids(ep.messages, reserve=s.max_new_tokens)])
            with torch.no_grad():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=s.max_new_tokens,
                                     do_sample=False, eos_token_id=sorted(stop_ids), pad_token_id=tok.pad_token_id)
            new = out[0, ids.shape[1]:].tolist()
            ep.doctor_tokens += len(new)
            text = tok.decode([t for t in new if t not in stop_ids], skip_special_tokens=True).strip()
            ep.messages.append({"role": "assistant", "content": text})
            ep.asked.append(asks_question(text))
            if not ep.asked[-1] or turn + 1 == s.max_turns:
                break
            r = patient.replies([State(c, ep.messages, set(ep.revealed))])[0]
            ep.messages.append({"role": "user", "content": r.text})
            ep.revealed += r.facts
        eps.append(ep)
    return eps, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="")
    ap.add_argument("--episodes", type=int, default=32)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args()
    setup_torch()
    model_dir = a.model
    if not model_dir:
        from zhongjing.model.init_model import InitModelConfig, init_model

        model_dir = str(init_model(InitModelConfig(output=str(Path(tempfile.mkdtemp()) / "tiny"))))
    tok, model = load_tokenizer(model_dir), load_model(model_dir)
    model.eval()
    cases = build_cases(CasesConfig(inputs=["zhongjing/demo/dialogues.jsonl"], skip_empty=True,
                                    limit=a.episodes))[0]
    s = EpisodeSettings(max_turns=a.turns, max_new_tokens=a.max_new_tokens, temperature=0.0, batch_size=a.batch_size)
    renderer, stop, patient = Renderer(tok, max_length=1024), end_of_turn_ids(tok, model), RetrievalPatient()
    best = {"zhongjing episodes": None, "plain generate loop": None}
    for _ in range(a.repeat):
        eps, timing = run_episodes(model, tok, cases, patient, s, renderer=renderer, seed=0, stop_ids=stop)
        run = (len(eps), timing["doctor_tokens"], timing["seconds"], eps)
        if best["zhongjing episodes"] is None or run[2] < best["zhongjing episodes"][2]:
            best["zhongjing episodes"] = run
        peps, secs = plain_loop(model, tok, cases, patient, s, renderer, stop)
        run = (len(peps), sum(e.doctor_tokens for e in peps), secs, peps)
        if best["plain generate loop"] is None or run[2] < best["plain generate loop"][2]:
            best["plain generate loop"] = run
    print(f"model {model_dir}: {a.episodes} episodes, ≤{a.turns} doctor turns, ≤{a.max_new_tokens} tokens per turn, "
          f"greedy, torch threads {torch.get_num_threads()}")
    print(f"{'':24}{'episodes/s':>12}{'doctor tok/s':>14}{'seconds':>10}{'turns':>8}")
    for name, (n, toks, secs, eps) in best.items():
        print(f"{name:24}{n / secs:12.2f}{toks / secs:14.1f}{secs:10.2f}{sum(e.turns for e in eps):8d}")
    z, p = best["zhongjing episodes"], best["plain generate loop"]
    # texts can differ in how a cut multi-byte character decodes; the tokens spoken are the like-for-like check
    same = sum((x.turns, x.doctor_tokens) == (y.turns, y.doctor_tokens) for x, y in zip(z[3], p[3]))
    print(f"speed-up (episodes/s): {(z[0] / z[2]) / (p[0] / p[2]):.2f}×; episodes with the same turns and doctor "
          f"tokens on both sides: {same}/{len(z[3])}")


if __name__ == "__main__":
    main()
