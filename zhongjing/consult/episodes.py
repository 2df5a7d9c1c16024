"""Episodes: the doctor policy converses with a patient simulator for up to `max_turns` doctor turns and ends by
giving advice (a turn that asks nothing, or the last allowed turn).

All active episodes decode together each turn (one batched `sample` call), the patient answers them as a batch, and
finished episodes drop out. For training, an episode is rendered once through the chat template (data/render.py's
Renderer, strategy "all"): the doctor's tokens in every turn are the actions, the system prompt, the opening and the
patient's replies are context — the same exact token masks as SFT. Rows are laid out as rollout.py's: the row's
"answer" starts at its first doctor token and `action_mask` has holes where the patient speaks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields, replace

import torch

from zhongjing.consult.cases import Case
from zhongjing.consult.patients import State
from zhongjing.data.render import IGNORE, Renderer
from zhongjing.data.text import asks_question
from zhongjing.errors import RangeError, ZhongjingError
from zhongjing.model.decoder import check_sampling
from zhongjing.train.rollout import Rollout


@dataclass
class EpisodeSettings:
    max_turns: int = 4  # doctor turns; the last one is advice whatever it says
    max_new_tokens: int = 96  # per doctor turn
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 16

    def __post_init__(self):
        check_sampling(self)
        if self.max_turns < 1:
            raise RangeError(f"max_turns must be ≥ 1, got {self.max_turns}")


@dataclass
class Episode:
    case: Case
    messages: list[dict]  # system (if any) + opening + alternating doctor / patient turns, ending with the doctor
    revealed: list[int] = field(default_factory=list)  # fact indices, in the order the patient revealed them
    asked: list[bool] = field(default_factory=list)  # per doctor turn: did it ask something
    doctor_tokens: int = 0  # generated
    finished: bool = True  # every doctor turn ended with a stop token

    @property
    def turns(self) -> int:
        return len(self.asked)

    @property
    def advice(self) -> str:
        return self.messages[-1]["content"]

    @property
    def questions_before_advice(self) -> int:
        return sum(self.asked[:-1])

    @property
    def premature(self) -> bool:  # advised in the first turn although facts were still hidden
        return not self.asked[0] if self.asked else True

    @property
    def advised(self) -> bool:  # the consultation ended with advice: its last doctor turn asks nothing
        return bool(self.asked) and not self.asked[-1]

    @property
    def elicited(self) -> float:
        return len(self.revealed) / max(len(self.case.facts), 1)

    def stats(self) -> dict[str, float]:
        """The consultation measures (trainer logs, eval's consultation kind)."""
        return {"facts_elicited": self.elicited, "questions": float(self.questions_before_advice),
                "asked_before_advice": float(self.questions_before_advice > 0),
                "premature_advice": float(self.premature), "advised": float(self.advised), "turns": float(self.turns)}


def opening_messages(case: Case, system: str | None = None) -> list[dict]:
    """System prompt (the case's own, else `system`, if any) + the patient's opening."""
    head = [{"role": "system", "content": case.system or system}] if (case.system or system) else []
    return head + [{"role": "user", "content": case.opening}]


def playable(cases: list[Case], renderer: Renderer, reserve: int, system: str | None = None) -> list[Case]:
    """The cases whose opening leaves room for a doctor turn of `reserve` tokens within the renderer's max_length
    (a long real opening does not; callers count and report the rest)."""
    out = []
    for c in cases:
        try:
            renderer.prompt_ids(opening_messages(c, system), reserve=reserve)
        except ZhongjingError:
            continue
        out.append(c)
    return out


def run_episodes(policy, tok, cases: list[Case], patient, s: EpisodeSettings, *, renderer: Renderer, seed: int,
                 stop_ids: set[int] | None = None, system: str | None = None) -> tuple[list[Episode], dict]:
    """One episode per case (repeat a case K times for a group). → episodes, timing {seconds, doctor_tokens}."""
    from zhongjing.model.generation import derive_seed, sample

    t0 = time.perf_counter()
    eps = [Episode(c, opening_messages(c, system)) for c in cases]
    active = list(range(len(eps)))
    for turn in range(s.max_turns):
        if not active:
            break
        prompts, fits = [], []
        for i in active:
            try:
                prompts.append(renderer.prompt_ids(eps[i].messages, reserve=s.max_new_tokens))
                fits.append(i)
            except ZhongjingError:  # a patient reply too long for max_length ends that consultation
                if turn == 0:
                    raise ZhongjingError(f"case {eps[i].case.id}: the opening is too long for max_length; "
                                         "play consult.episodes.playable(cases) only") from None
        active = fits
        if not active:
            break
        gens = sample(policy, tok, prompts, max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                      top_k=s.top_k, seed=derive_seed(seed, turn), batch_size=s.batch_size, stop_ids=stop_ids)
        asking = []
        for i, g in zip(active, gens):
            ep, text = eps[i], g.text.strip()
            ep.messages.append({"role": "assistant", "content": text})
            ep.doctor_tokens += len(g.token_ids)
            ep.finished &= bool(g.token_ids) and (stop_ids is None or g.token_ids[-1] in stop_ids)
            ep.asked.append(asks_question(text))
            if ep.asked[-1] and turn + 1 < s.max_turns:
                asking.append(i)
        if asking and patient is not None:
            states = [State(eps[i].case, [m for m in eps[i].messages if m["role"] != "system"],
                            set(eps[i].revealed)) for i in asking]
            for i, r in zip(asking, patient.replies(states)):
                eps[i].messages.append({"role": "user", "content": r.text})
                eps[i].revealed += [k for k in r.facts if k not in eps[i].revealed]
        active = asking if patient is not None else []
    return eps, {"seconds": time.perf_counter() - t0, "doctor_tokens": sum(e.doctor_tokens for e in eps)}


def episode_ids(renderer: Renderer, messages: list[dict]) -> tuple[list[int], list[bool]]:
    """Token ids of the whole episode and, per token, whether it is a doctor token (an action)."""
    r = renderer.render(messages)
    if r is None:
        raise ValueError("episode does not fit in max_length")
    return r.input_ids, [lab != IGNORE for lab in r.labels]


class EpisodeRollout(Rollout):
    """A Rollout whose action masks have holes (the patient's turns): trimmed to the last action, not the count."""

    def select(self, idx: torch.Tensor) -> "EpisodeRollout":
        width = int(self.action_mask[idx].nonzero()[:, 1].max().item()) + 1 if self.action_mask[idx].any() else 1
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v[idx]
                if f.name == "sequences":
                    v = v[:, : int((self.prompt_lens[idx] + width).max().item())]
                elif v.dim() == 2:
                    v = v[:, :width]
            elif f.name == "texts":
                v = [v[i] for i in idx.tolist()]
            out[f.name] = v
        return replace(self, **out)


def pack(renderer: Renderer, episodes: list[Episode], pad_id: int) -> dict:
    """Episodes → sequences (B, L), prompt_lens (B,), action_mask (B, R) with holes; see the module docstring."""
    rows = [episode_ids(renderer, e.messages) for e in episodes]
    starts = [m.index(True) for _, m in rows]
    L = max(len(ids) for ids, _ in rows)
    R = max(len(ids) - s for (ids, _), s in zip(rows, starts))
    seq = torch.full((len(rows), L), pad_id, dtype=torch.long)
    act = torch.zeros(len(rows), R)
    for i, ((ids, mask), s) in enumerate(zip(rows, starts)):
        seq[i, :len(ids)] = torch.tensor(ids)
        act[i, :len(ids) - s] = torch.tensor(mask[s:], dtype=torch.float32)
    return {"sequences": seq, "prompt_lens": torch.tensor(starts), "action_mask": act}


@torch.no_grad()
def score_packed(model, packed: dict, *, temperature: float = 1.0, forward_batch: int = 16) -> dict:
    """log π_old, log π_ref (adapter off) and critic values on the action tokens (B, R), `forward_batch` rows a pass."""
    from zhongjing.model.wrappers import unwrap
    from zhongjing.train.rollout import reference_mode

    device = next(unwrap(model.policy).parameters()).device
    seq, plens, act = (packed[k].to(device) for k in ("sequences", "prompt_lens", "action_mask"))
    was = model.training
    model.eval()
    lps, refs, vals = [], [], []
    try:
        for i in range(0, len(seq), forward_batch):
            s, p, a = seq[i:i + forward_batch], plens[i:i + forward_batch], act[i:i + forward_batch]
            lp, v, _ = model(s, p, a, temperature=temperature, with_entropy=False)
            with reference_mode(model.policy):
                ref, _, _ = model(s, p, a, temperature=temperature, with_entropy=False)
            lps.append(lp), refs.append(ref)
            if v is not None:
                vals.append(v)
    finally:
        model.train(was)
    lp, ref = torch.cat(lps), torch.cat(refs)
    return {"sequences": seq, "prompt_lens": plens, "action_mask": act, "logprobs": lp, "ref_logprobs": ref,
            "values": torch.cat(vals) if vals else None, "kl": (lp - ref) * act}
