"""`zhongjing eval --config eval.yaml`: compare models on the test sets and write a report.

Steps (each cached on disk, so a killed run resumes where it stopped):
  1. test sets → items (every doctor turn given the gold history; safety prompts as their own set);
  2. every model answers every item (local folders/adapters, or OpenAI-compatible endpoints);
  3. the judge compares the target with each baseline, and after- vs before-RLHF, in both orders;
     on safety sets every model is also judged against the safe reference answer;
  4. single-model metrics (length, initiative, refusals, BLEU-4/ROUGE-L, gold perplexity), exams;
  5. results.json + report.md + report.html + PNG figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from zhongjing.data.rubric import PRIORITY
from zhongjing.config import at_least, parse_stage_args, to_dict, within
from zhongjing.errors import ConfigError
from zhongjing.io import check_output
from zhongjing.eval.answers import (GenerationConfig, LocalModel, ModelSpec, Throttle, endpoint_answers, local_answers,
                                    log)
from zhongjing.llm.cache import Cache
from zhongjing.llm.client import Endpoint, EndpointConfig
from zhongjing.eval.consultation import ConsultationConfig
from zhongjing.eval.exams import ExamConfig
from zhongjing.eval.leaderboard import LeaderboardConfig
from zhongjing.eval.rubric_grading import RubricConfig
from zhongjing.eval.testsets import TestSetConfig, load_testsets
from zhongjing.eval.validation import JudgeValidationConfig


@dataclass
class JudgeConfig:
    backend: Literal["openai", "reward_model", "rubric", "none"] = "openai"
    endpoint: EndpointConfig = field(default_factory=lambda: EndpointConfig(max_tokens=512))  # backend openai
    reward_model: str = ""  # backend reward_model: a `zhongjing train rm` folder
    margin: float = 0.0  # reward_model: score differences up to this are ties
    rubric_tie: float = 0.02  # rubric: per-dimension heuristic score differences below this are ties
    rubric_kg: str = ""  # rubric: optional knowledge graph for its drug check
    dimensions: list[str] = field(default_factory=lambda: list(PRIORITY))
    parse_retries: int = 2  # re-asks (with a correction note) before a reply is recorded as unparseable
    retry_failed: bool = False  # re-ask replies recorded as unparseable in an earlier run
    safety_vs_reference: bool = True  # on safety sets, judge each model against the safe reference answer

    def __post_init__(self):  # a NaN margin made every comparison false: no ties, silently
        within(self, 0.0, float("inf"), "margin", "rubric_tie")
        at_least(self, 0, "parse_retries")


@dataclass
class AblationConfig:
    before: str = ""  # model name before RLHF (e.g. the SFT model)
    after: str = ""  # model name after RLHF (e.g. the PPO model)


@dataclass
class ReportConfig:
    examples: int = 3  # side-by-side example dialogues in the report
    bootstrap: int = 2000  # resamples for the 95% intervals
    tokenizer: Literal["char", "jieba"] = "char"  # for BLEU / ROUGE

    def __post_init__(self):
        at_least(self, 0, "examples")
        at_least(self, 1, "bootstrap")


@dataclass
class EvalConfig:
    output: str = "runs/eval"
    cache: str = ""  # default <output>/cache.sqlite; share one file between runs to reuse answers and verdicts
    seed: int = 0
    models: list[ModelSpec] = field(default_factory=list)
    target: str = ""  # the model compared with every baseline (default: the first model)
    baselines: list[str] = field(default_factory=list)  # default: every other model
    testsets: list[TestSetConfig] = field(default_factory=list)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    exams: list[ExamConfig] = field(default_factory=list)
    perplexity: bool = True  # of the gold doctor turns, for local models (no generation)
    answers: bool = True  # generate answers and judge them; false: only perplexity and exams, nothing generated
    report: ReportConfig = field(default_factory=ReportConfig)
    judge_validation: JudgeValidationConfig = field(default_factory=JudgeValidationConfig)  # judge vs human labels
    validation_judges: list[JudgeConfig] = field(default_factory=list)  # more judges checked on the same labels only
    leaderboard: LeaderboardConfig = field(default_factory=LeaderboardConfig)  # Bradley–Terry over all comparisons
    rubric: RubricConfig = field(default_factory=RubricConfig)  # per-case criteria graded by an LLM (HealthBench style)
    consultation: ConsultationConfig = field(default_factory=ConsultationConfig)  # interactive: models vs a patient
    notes: list[str] = field(default_factory=list)  # extra lines for the report (e.g. where the RM's rankings came from)


def check(cfg: EvalConfig) -> None:
    if not cfg.models:
        raise ConfigError("eval: list at least one model under 'models'")
    names = [m.name for m in cfg.models]
    for i, m in enumerate(cfg.models):
        if not m.name:
            raise ConfigError(f"models[{i}]: give the model a name")
        if bool(m.path) == bool(m.endpoint):
            raise ConfigError(f"model {m.name!r}: set exactly one of 'path' (local folder) or 'endpoint'")
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ConfigError(f"two models are named {dup!r}")
    for key, n in [("target", cfg.target), *[("baselines", b) for b in cfg.baselines],
                   ("ablation.before", cfg.ablation.before), ("ablation.after", cfg.ablation.after),
                   ("consultation.target", cfg.consultation.target)]:
        if n and n not in names:
            raise ConfigError(f"{key}: no model named {n!r} (models: {', '.join(names)})")
    if bool(cfg.ablation.before) != bool(cfg.ablation.after):
        raise ConfigError("ablation: set both 'before' and 'after' (or neither)")
    for m in cfg.models:
        if m.endpoint and not (m.endpoint.base_url and m.endpoint.model):
            raise ConfigError(f"model {m.name!r}: endpoint needs base_url and model")
        if m.path:
            from zhongjing.model.load import refuse_reward_model  # torch: not before a config is checked

            refuse_reward_model(m.path)
    if cfg.testsets and cfg.judge.backend == "openai" and not (cfg.judge.endpoint.base_url and cfg.judge.endpoint.model):
        raise ConfigError("judge: set judge.endpoint.base_url and judge.endpoint.model "
                          "(or judge.backend: reward_model / none)")
    bad = [d for d in cfg.judge.dimensions if d not in PRIORITY]
    if bad:
        raise ConfigError(f"judge.dimensions: unknown {bad[0]!r} (one of {', '.join(PRIORITY)})")
    if cfg.validation_judges and not (cfg.judge_validation.files or cfg.judge_validation.if_present):
        raise ConfigError("validation_judges: list the human-labelled files under judge_validation.files")
    if (cfg.judge_validation.files or cfg.judge_validation.if_present) and cfg.judge.backend == "none":
        raise ConfigError("judge_validation: there is no judge to validate (judge.backend: none)")
    consulting = cfg.consultation.cases or cfg.consultation.dialogues
    if not cfg.testsets and not cfg.exams and not cfg.rubric.sets and not consulting:
        raise ConfigError("eval: nothing to do — add 'testsets' and/or 'exams'")


def build_judge(cfg: JudgeConfig, cache: Cache):
    from zhongjing.eval.judge import LLMJudge, RewardJudge, RubricJudge

    if cfg.backend == "none":
        return None
    if cfg.backend == "openai":
        return LLMJudge(Endpoint(cfg.endpoint, "judge"), cache, cfg.dimensions, cfg.parse_retries, cfg.retry_failed)
    if cfg.backend == "rubric":
        return RubricJudge(cfg.rubric_tie, cfg.rubric_kg or None)
    if not cfg.reward_model:
        raise ConfigError("judge.backend reward_model needs judge.reward_model (a reward-model folder)")
    from zhongjing.model.reward import RewardModelScorer

    scorer = RewardModelScorer(cfg.reward_model)
    return RewardJudge(lambda ctxs, answers: scorer.score(ctxs, answers).tolist(), cfg.margin,
                       f"reward model {cfg.reward_model} (margin {cfg.margin})")


def collect_answers(cfg: EvalConfig, sets, cache: Cache) -> tuple[dict, dict, dict, dict]:
    """Answers of every model (model → item id → text), failures, local perplexities and exam scores.

    A local model is loaded at most once, for whatever of answers / perplexity / exams is not cached."""
    from zhongjing.eval import exams as ex
    from zhongjing.eval.metrics import gold_perplexity

    items = [it for s in sets for it in s.items]
    exams = [ex.load_exam(e, cfg.seed) for e in cfg.exams]
    answers, failures, ppl, exam_scores = {}, {}, {}, {}
    for spec in cfg.models:
        t0 = time.time()
        if spec.is_local:
            lm = LocalModel(spec)
            answers[spec.name] = (local_answers(lm, items, cfg.generation, cache, Throttle(f"{spec.name} answers"))
                                  if cfg.answers else {})
            failures[spec.name] = {}
            if cfg.perplexity:
                ppl[spec.name] = {}
                for s in sets:
                    if not any(it.reference for it in s.items):
                        continue
                    key = f"ppl|{lm.fingerprint}|{s.name}|{len(s.dialogues)}|{cfg.generation.max_length}|{cfg.seed}"
                    hit = cache.get("ppl", key)
                    if hit is None:
                        model, tok = lm.load()
                        hit = gold_perplexity(model, tok, [d.messages for d in s.dialogues],
                                              max_length=lm.max_length(cfg.generation.max_length))
                        cache.put("ppl", key, hit)
                    ppl[spec.name][s.name] = hit
            for e in exams:
                for k in e.cfg.shots:
                    preds = ex.local_predictions(lm, e, k, cfg.seed, cache, cfg.generation.batch_size,
                                                 progress=Throttle(f"{spec.name} exam {e.name} ({k}-shot)"))
                    exam_scores.setdefault(spec.name, {}).setdefault(e.name, {})[k] = ex.score(
                        e, preds, cfg.seed, cfg.report.bootstrap)
            lm.unload()
        else:
            endpoint = Endpoint(spec.endpoint, spec.name)
            answers[spec.name], failures[spec.name] = (endpoint_answers(spec, endpoint, items, cache,
                                                                        Throttle(f"{spec.name} answers"))
                                                       if cfg.answers else ({}, {}))
            for e in exams:
                for k in e.cfg.shots:
                    preds = ex.endpoint_predictions(endpoint, e, k, cfg.seed, cache,
                                                    progress=Throttle(f"{spec.name} exam {e.name} ({k}-shot)"))
                    exam_scores.setdefault(spec.name, {}).setdefault(e.name, {})[k] = ex.score(
                        e, preds, cfg.seed, cfg.report.bootstrap)
        log(f"{spec.name}: ready ({len(answers[spec.name])}/{len(items)} answers"
            f"{', exams' if exams else ''}, {time.time() - t0:.1f}s)")
    return answers, failures, ppl, exam_scores


def validate_judge(cfg: EvalConfig, judge, cache: Cache) -> list[dict]:
    """Agreement with human preference labels (eval/validation.py), one row per (judge, file): the configured judge
    (`primary`, shown beside its comparisons) and each of `validation_judges` (validated only)."""
    from zhongjing.eval.judge import LLMJudge
    from zhongjing.eval.validation import run_validation

    rows = []
    for primary, j in [(True, judge)] + [(False, build_judge(jc, cache)) for jc in cfg.validation_judges]:
        if j is None:
            continue
        conc = j.endpoint.cfg.concurrency if isinstance(j, LLMJudge) else 1
        got = run_validation(cfg.judge_validation, j, seed=cfg.seed, n_boot=cfg.report.bootstrap, concurrency=conc,
                             log=log)
        rows += [{**r, "primary": primary} for r in got if primary or not r.get("missing")]
    return rows


def comparisons(cfg: EvalConfig) -> list[tuple[str, str, str]]:
    """(kind, target, baseline) pairs to judge."""
    target = cfg.target or cfg.models[0].name
    baselines = cfg.baselines or [m.name for m in cfg.models if m.name != target]
    out = [("baseline", target, b) for b in baselines if b != target]
    if cfg.ablation.before:
        out.append(("ablation", cfg.ablation.after, cfg.ablation.before))
    return out


def main(argv: list[str] | None = None) -> int:
    cfg = parse_stage_args("zhongjing eval", EvalConfig, list(argv or []),
                           "Pairwise judging, safety, metrics, exams and a report (Markdown, HTML, JSON, PNG).")
    paths = run(cfg)
    print(f"report: {paths['markdown']}  {paths['html']}  {paths['json']}")
    return 0


def run(cfg: EvalConfig) -> dict[str, Path]:
    from zhongjing.eval.evaluate import evaluate
    from zhongjing.eval.report import write_report
    from zhongjing.model.load import setup_torch
    from zhongjing.eval.rubric_grading import load_sets, run_rubric
    from zhongjing.eval.testsets import TestSet

    check(cfg)
    setup_torch(seed=cfg.seed)
    out = check_output(cfg.output, folder=True)  # the report is written last, after every answer
    sets = load_testsets(cfg.testsets, cfg.seed)
    for s in sets:
        log(f"test set {s.name}: {len(s.dialogues)} dialogues → {len(s.items)} items")
    with Cache(cfg.cache or out / "cache.sqlite") as cache:
        validating = bool(cfg.judge_validation.files or cfg.judge_validation.if_present)
        consulting = bool(cfg.consultation.cases or cfg.consultation.dialogues)
        judge = (build_judge(cfg.judge, cache) if (sets and cfg.answers) or validating
                 or (consulting and cfg.judge.backend != "none") else None)  # before generating: fail fast
        validation = validate_judge(cfg, judge, cache) if validating else []
        rubric_sets = load_sets(cfg.rubric, cfg.seed)
        answers, failures, ppl, exam_scores = collect_answers(
            cfg, sets + [TestSet(n, "", [c.item(n) for c in cases]) for n, cases in rubric_sets], cache)
        results = evaluate(cfg, sets, answers, failures, ppl, exam_scores, judge, comparisons(cfg))
        results["judge_validation"] = validation
        if consulting:
            from zhongjing.eval.consultation import run_consultation

            target = cfg.consultation.target or cfg.target or cfg.models[0].name
            others = [m.name for m in cfg.models if m.name != target]
            results["consultation"] = run_consultation(
                cfg.consultation, cfg.models, target, others if cfg.consultation.target else (cfg.baselines or others),
                judge, n_boot=cfg.report.bootstrap, seed=cfg.seed, log=log)
        results["rubric"] = run_rubric(cfg.rubric, rubric_sets, answers, cache, n_boot=cfg.report.bootstrap,
                                       seed=cfg.seed, log=log)
        results["meta"]["config"] = to_dict(cfg)
        results["meta"]["notes"] = list(cfg.notes) + results["meta"].get("notes", [])
        results["meta"]["cache"] = {"path": str(cache.path), "hits": cache.hits, "misses": cache.misses}
    paths = write_report(results, out)
    return paths

