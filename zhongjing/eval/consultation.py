"""The `consultation` test kind: each local model interviews the simulated patient of every case (consult/), greedy,
for up to `max_turns` doctor turns, and is measured as a doctor who should ask before advising:

  facts elicited        share of the case's hidden facts the patient revealed
  questions             doctor turns that asked something before the advice
  asked before advice   share of episodes with at least one question before the advice
  premature advice      share of episodes whose first doctor turn already advised (nothing asked)
  advised               share of episodes that ended with advice (a doctor who only asks never advises)
  turns                 doctor turns used
  final advice          the target's final advice vs each baseline's on the same case, by the eval judge (win/tie/lose),
                        which reads the patient's whole case (opening + every hidden fact) and judges the advice as
                        the end of a consultation: a question there earns no credit for asking

95% intervals: percentile bootstrap over cases. Only local models play (an endpoint model is listed as skipped).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zhongjing.config import at_least
from zhongjing.consult.patients import PatientSettings

METRICS = ("facts_elicited", "questions", "asked_before_advice", "premature_advice", "advised", "turns")


@dataclass
class ConsultationConfig:
    cases: str = ""  # `zhongjing data cases` output (held-out dialogues!); empty = no consultation test
    dialogues: list[str] = field(default_factory=list)  # ...or held-out dialogue files, made into cases here
    limit: int = 0  # first N cases (0 = all)
    max_turns: int = 4
    max_new_tokens: int = 96
    max_length: int = 1024
    batch_size: int = 16
    temperature: float = 0.0  # 0 = greedy; > 0 samples (seeded by eval's seed): a weak model's greedy mode may never ask
    target: str = ""  # whose final advice is judged against every other model's (default: eval's target)
    system: str = ""  # doctor system prompt (a model's own `system` wins)
    patient: PatientSettings = field(default_factory=PatientSettings)

    def __post_init__(self):
        at_least(self, 0, "limit")
        at_least(self, 1, "max_turns")


def play(cfg: ConsultationConfig, spec, cases, patient, seed: int):
    from zhongjing.consult.episodes import EpisodeSettings, run_episodes
    from zhongjing.data.render import Renderer
    from zhongjing.model.load import end_of_turn_ids, load_model, load_tokenizer

    tok = load_tokenizer(spec.path)
    model = load_model(spec.path, dtype=spec.dtype)
    s = EpisodeSettings(max_turns=cfg.max_turns, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                        batch_size=cfg.batch_size)
    eps, _ = run_episodes(model, tok, cases, patient, s, renderer=Renderer(tok, max_length=cfg.max_length), seed=seed,
                          stop_ids=end_of_turn_ids(tok, model), system=spec.system or cfg.system or None)
    return eps


def run_consultation(cfg: ConsultationConfig, models, target: str, baselines: list[str], judge, *, n_boot: int,
                     seed: int, log=print) -> dict:
    from zhongjing.consult.cases import CasesConfig, build_cases, read_cases
    from zhongjing.consult.episodes import playable
    from zhongjing.consult.patients import make_patient
    from zhongjing.data.render import Renderer
    from zhongjing.model.load import load_tokenizer
    from zhongjing.eval.judge import PairTask, judge_pairs
    from zhongjing.eval.stats import accuracy_ci, summarize

    cases = read_cases(cfg.cases) if cfg.cases else build_cases(CasesConfig(inputs=list(cfg.dialogues),
                                                                             skip_empty=True))[0]
    cases = cases[: cfg.limit] if cfg.limit else cases
    n_read = len(cases)
    for spec in models:  # every model plays the same cases: those whose opening fits each one's context
        if spec.path:
            fit = {id(c) for c in playable(cases, Renderer(load_tokenizer(spec.path), max_length=cfg.max_length),
                                           cfg.max_new_tokens, spec.system or cfg.system or None)}
            cases = [c for c in cases if id(c) in fit]
    p = cfg.patient
    patient = make_patient(p.kind, path=p.path, max_facts=p.max_facts, endpoint=p.endpoint, cache=p.cache)
    episodes, rows, skipped = {}, [], []
    for spec in models:
        if not spec.path:
            skipped.append(spec.name)
            continue
        eps = play(cfg, spec, cases, patient, seed)
        episodes[spec.name] = eps
        per = [e.stats() for e in eps]
        row = {"model": spec.name, "n": len(eps)}
        for k in METRICS:
            vals = [x[k] for x in per]
            row[k] = sum(vals) / max(len(vals), 1)
            row[f"{k}_ci"] = accuracy_ci(vals, n_boot, seed)
        rows.append(row)
        log(f"consultation {spec.name}: facts elicited {row['facts_elicited']:.2f}, asked before advice "
            f"{row['asked_before_advice']:.2f}, turns {row['turns']:.2f}")
    advice = []
    if judge is not None and target in episodes:
        for b in [b for b in baselines if b in episodes and b != target]:
            tasks = [PairTask(c.id, c.id, [{"role": "user", "content": c.account()}], ta.advice, tb.advice, final=True)
                     for c, ta, tb in zip(cases, episodes[target], episodes[b])]
            judged, _ = judge_pairs(judge, tasks)
            rates = summarize(judged, judge.dimensions, n_boot=n_boot, seed=seed)
            advice.append({"target": target, "baseline": b, "n": len(tasks),
                           "dimensions": {d: r.to_dict() for d, r in rates.items()}})
    return {"cases": len(cases), "left_out_too_long": n_read - len(cases), "file": cfg.cases or ", ".join(cfg.dialogues),
            "patient": p.kind, "max_turns": cfg.max_turns, "temperature": cfg.temperature, "models": rows,
            "advice": advice, "skipped": skipped}


def figure(result: dict, path) -> None:
    """Bars with 95% intervals: facts elicited, asked before advice, premature advice and advised per model."""
    import numpy as np

    from zhongjing.eval.plots import _plt, _save

    plt = _plt()
    keys = ("facts_elicited", "asked_before_advice", "premature_advice", "advised")
    rows = result["models"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    w = 0.8 / max(len(rows), 1)
    x = np.arange(len(keys))
    for i, r in enumerate(rows):
        vals = [r[k] for k in keys]
        err = np.array([[r[k] - r[f"{k}_ci"][0] for k in keys], [r[f"{k}_ci"][1] - r[k] for k in keys]])
        ax.bar(x + i * w, vals, w, yerr=np.clip(err, 0, None), capsize=3, label=r["model"])
    ax.set_xticks(x + w * (len(rows) - 1) / 2, [k.replace("_", " ") for k in keys])
    ax.set_ylim(0, 1)
    ax.set_title(f"consultation against the {result['patient']} patient ({result['cases']} cases)")
    ax.legend(fontsize=8)
    _save(fig, path)


def blocks(results: dict, figs: dict) -> list[tuple]:
    """Report blocks (eval/report.py's format)."""
    c = results.get("consultation")
    if not c:
        return []
    pm = lambda r, k: f"{r[k]:.2f} [{r[f'{k}_ci'][0]:.2f}, {r[f'{k}_ci'][1]:.2f}]"  # noqa: E731
    b = [("h", 2, "Consultation (interactive)"),
         ("p", f"Each model interviews the {c['patient']} patient of {c['cases']} cases ({c['file']}), "
               + ("greedy" if not c.get("temperature") else f"sampled at temperature {c['temperature']} (seeded)")
               + ", at most "
               f"{c['max_turns']} doctor turns; the last turn or the first that asks nothing is the advice. 95% "
               "intervals: bootstrap over cases."
               + (f" {c['left_out_too_long']} cases left out: their opening is too long for max_length."
                  if c.get("left_out_too_long") else "")
               + " *Ended with advice*: the last doctor turn asks nothing (a doctor that "
               "only asks until the turns run out never advises).")]
    if "consultation" in figs:
        b.append(("img", figs["consultation"], "consultation metrics"))
    b.append(("table", ["model", "cases", "facts elicited", "questions before advice", "asked before advice",
                        "premature advice", "ended with advice", "turns"],
              [[r["model"], str(r["n"]), *[pm(r, k) for k in METRICS[:2]], *[pm(r, k) for k in METRICS[2:]]]
               for r in c["models"]]))
    for a in c["advice"]:
        cell = lambda r, o: f"{r[o + '_rate']:.0%}" + (  # noqa: E731
            f" [{r['ci'][o][0]:.0%}, {r['ci'][o][1]:.0%}]" if r.get("ci", {}).get(o) else "")
        rows = [[d, str(r["n"]), cell(r, "win"), cell(r, "tie"), cell(r, "lose")] for d, r in a["dimensions"].items()]
        b += [("p", f"Final advice, {a['target']} vs {a['baseline']} (judge, {a['n']} cases; the judge reads the "
                    "patient's whole case, and a final turn that still asks earns no credit for asking):"),
              ("table", ["dimension", "n", "win", "tie", "lose"], rows)]
    if c["skipped"]:
        b.append(("p", f"Not played (no local folder): {', '.join(c['skipped'])}."))
    return b
