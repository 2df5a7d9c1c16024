"""Knowledge check: doctor turns against a medical knowledge graph.

Finds disease, drug and food mentions (one trie over all dictionaries, longest match wins, so
感冒灵颗粒 is a drug and not the disease 感冒), decides whether each doctor mention is a
recommendation (cue words, negation, questions), and flags
  - `unlinked_drug`: a recommended drug the graph does not link to any disease discussed, and
  - configurable contradictions, e.g. recommending a food the graph lists as 忌吃 for the disease.
Nothing is deleted here silently: flags go into `meta["kg"]`; in the builder (zhongjing.dataset.kg_check) a
policy per flag kind decides keep / review (separate file) / drop. The simulated annotator reads the same index.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

from zhongjing.data.matcher import DictMatcher
from zhongjing.data.readers import load_kg
from zhongjing.data.schema import Dialogue
from zhongjing.errors import ConfigError, DataError

Action = Literal["keep", "review", "drop"]


@dataclass
class ContradictionRule:
    name: str  # flag kind, e.g. avoid_food_recommended
    kg_field: str  # list field of the disease record naming things to avoid (avoid_food, ...)
    kind: Literal["drug", "food"] = "food"  # which mentions the rule looks at


@dataclass
class KGConfig:
    path: str = ""  # KG file or folder; empty = step skipped
    loader: str = "xywy"  # "xywy" or "package.module:function" returning an iterable of disease dicts
    extra_drug_lists: list[str] = field(default_factory=list)  # plain files, one drug/product name a line
    contradictions: list[ContradictionRule] = field(
        default_factory=lambda: [ContradictionRule("avoid_food_recommended", "avoid_food", "food")])
    policy: dict[str, Action] = field(default_factory=lambda: {"unlinked_drug": "review", "avoid_food_recommended": "review"})
    default_action: Action = "review"  # for flag kinds missing from `policy`
    min_term_len: int = 2

    def __post_init__(self):
        if self.min_term_len < 1:  # 0 let an empty name match everywhere
            raise ConfigError(f"kg.min_term_len must be ≥ 1, got {self.min_term_len}")


# dosage forms stripped to get the generic name a doctor actually says (阿莫西林胶囊 → 阿莫西林)
_FORMS = re.compile(
    r"(?:缓释片|控释片|肠溶片|分散片|泡腾片|咀嚼片|口腔崩解片|含片|薄膜衣片|糖衣片|软胶囊|肠溶胶囊|缓释胶囊|胶囊|片|"
    r"颗粒|冲剂|口服液|口服溶液|合剂|糖浆|注射液|注射剂|针剂|滴眼液|眼药水|滴耳液|滴鼻液|喷雾剂|气雾剂|软膏|乳膏|"
    r"凝胶|栓|贴剂|贴|膏药|水丸|蜜丸|丸|散|酊|洗剂|搽剂|溶液|混悬液|干混悬剂|粉剂|粉)$")
_PACKAGING = re.compile(r"\([^)]*\)|（[^）]*）|\d+(?:\.\d+)?(?:mg|g|ml|毫克|克|毫升|片|粒|袋|支)\S*$")
_NEGATION = re.compile(r"不要|不用|不必|别|不建议|不推荐|避免|禁止|禁用|慎用|忌|停用|停掉|停药|不能|不宜|不可|少吃|少喝|不吃|不喝|戒")
_RECOMMEND = re.compile(r"建议|可以|可|推荐|服用|口服|吃|喝|用|涂|外用|含服|注射|输液|静滴|试试|配合|加用|改用|开|多")
_QUESTION = re.compile(r"[？?]|吗|呢")


def drug_key(name: str) -> str:
    """Canonical drug key: packaging and dosage form removed (kept whole when too little is left)."""
    base = _PACKAGING.sub("", name.strip())
    base = re.sub(r"^注射用", "", base)
    stripped = _FORMS.sub("", base)
    return stripped if len(stripped) >= 2 else base


def _import(spec: str) -> Callable[[str], Iterable[dict]]:
    if spec == "xywy":
        return load_kg
    mod, _, fn = spec.partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"kg.loader: cannot import {spec!r} ({e})") from None


class KGIndex:
    """Diseases with their linked drugs and list fields, plus one matcher over every name."""

    def __init__(self, records: Iterable[dict], extra_drugs: Iterable[str] = (), min_len: int = 2):
        self.diseases: dict[str, dict] = {}
        self.disease_drugs: dict[str, set[str]] = {}
        self.matcher = DictMatcher(min_len=min_len)
        self._generic_keys: set[str] = set()
        foods: set[str] = set()
        for rec in records:
            name = str(rec.get("name") or "").strip()
            if not name:
                continue
            self.diseases[name] = rec
            drugs = {drug_key(d) for key in ("drugs", "recommended_drugs", "common_drugs") for d in rec.get(key) or []}
            self.disease_drugs.setdefault(name, set()).update(drugs)
            for d in (x for key in ("drugs", "recommended_drugs", "common_drugs") for x in rec.get(key) or []):
                self._add_drug(d)
            foods.update(rec.get("good_food") or [])
            foods.update(rec.get("avoid_food") or [])
        for d in extra_drugs:
            self._add_drug(d)
        # a generic key that starts a disease name is an organ or nutrient (甲状腺片 → 甲状腺), not a drug
        prefixes = {n[:k] for n in self.diseases for k in range(2, len(n) + 1)}
        for key in self._generic_keys - prefixes:
            self.matcher.add(key, ("drug", key))
        for f in foods:
            self.matcher.add(f, ("food", f))
        for name in self.diseases:
            self.matcher.add(name, ("disease", name))

    def _add_drug(self, name: str) -> None:
        key = drug_key(name)
        self.matcher.add(name, ("drug", key))
        if key != name and len(key) >= 3:  # 2-character leftovers (维C) are too ambiguous to match alone
            self._generic_keys.add(key)

    def field_keys(self, disease: str, kg_field: str, kind: str) -> set[str]:
        items = self.diseases.get(disease, {}).get(kg_field) or []
        return {drug_key(x) if kind == "drug" else x for x in items}

    @property
    def n_drugs(self) -> int:
        return len({v[1] for v in _walk_values(self.matcher.root) if v[0] == "drug"})


def _walk_values(node: dict) -> Iterable[tuple]:
    stack = [node]
    while stack:
        n = stack.pop()
        for k, v in n.items():
            if k == "":
                yield from v
            else:
                stack.append(v)


_INDEX_CACHE: dict[tuple, KGIndex] = {}


def load_index(cfg: KGConfig) -> KGIndex:
    """The KG index for a config, built once per process (the rewrite step reuses it for drug names)."""
    key = (cfg.loader, cfg.path, tuple(cfg.extra_drug_lists), cfg.min_term_len)
    if key not in _INDEX_CACHE:
        if not Path(cfg.path).exists():
            raise ConfigError(f"kg.path: {cfg.path} not found")
        records = list(_import(cfg.loader)(cfg.path))
        if not records:
            raise DataError("knowledge graph has no disease records", cfg.path)
        extra: list[str] = []
        for p in cfg.extra_drug_lists:
            try:
                extra += [line.strip() for line in Path(p).read_text(encoding="utf-8").splitlines() if line.strip()]
            except OSError as e:
                raise ConfigError(f"kg.extra_drug_lists: cannot read {p} ({e.strerror})") from None
        _INDEX_CACHE[key] = KGIndex(records, extra, cfg.min_term_len)
    return _INDEX_CACHE[key]


def stance(text: str, start: int) -> str:
    """How a doctor turn mentions the term at `start`: negated, asked, recommended or mentioned."""
    sent_start = max(text.rfind(c, 0, start) for c in "。！!？?；;\n") + 1
    clause_start = max(sent_start, max(text.rfind(c, 0, start) for c in "，,、") + 1)
    sent_end = min([i for i in (text.find(c, start) for c in "。！!？?；;\n") if i >= 0] or [len(text)])
    if _NEGATION.search(text, clause_start, start):
        return "negated"
    if _QUESTION.search(text, start, sent_end + 1):
        return "asked"
    return "recommended" if _RECOMMEND.search(text, sent_start, start) else "mentioned"


def check_dialogue(d: Dialogue, index: KGIndex, cfg: KGConfig) -> dict:
    """Mentions and flags of one dialogue (KG terms only, no patient text)."""
    diseases: list[str] = []
    for tag_key in ("disease", "diseases", "disease_tag"):
        tags = d.meta.get(tag_key)
        for t in [tags] if isinstance(tags, str) else (tags or []):
            if t in index.diseases and t not in diseases:
                diseases.append(t)
    recommended: list[tuple[int, str, str]] = []  # (turn, kind, key)
    drugs_seen: list[str] = []
    for ti, m in enumerate(d.messages):
        for match in index.matcher.find(m.content):
            for kind, key in match.values:
                if kind == "disease" and key not in diseases:
                    diseases.append(key)
                if m.role == "assistant" and kind in ("drug", "food"):
                    if kind == "drug" and key not in drugs_seen:
                        drugs_seen.append(key)
                    if stance(m.content, match.start) == "recommended":
                        recommended.append((ti, kind, key))
    flags = []
    for ti, kind, key in recommended:
        if kind == "drug" and diseases and not any(key in index.disease_drugs.get(x, ()) for x in diseases):
            flags.append({"kind": "unlinked_drug", "turn": ti, "term": key, "diseases": diseases[:5]})
        for rule in cfg.contradictions:
            if rule.kind != kind:
                continue
            hits = [x for x in diseases if key in index.field_keys(x, rule.kg_field, kind)]
            if hits:
                flags.append({"kind": rule.name, "turn": ti, "term": key, "diseases": hits[:5]})
    return {"diseases": diseases, "drugs": drugs_seen, "flags": flags}
