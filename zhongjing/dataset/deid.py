"""De-identification: find personal identifiers and replace them with typed placeholders.

Runs on every turn (patient and doctor) before any other step sees the text. Structured
identifiers are found by pattern + validation (ID checksum, Luhn, calendar dates); names and
addresses only where the context marks them (我叫…, 王医生, 患者…, 家住…). The audit keeps a
count per type — never a value: nothing matched is logged, cached in clear or reported.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from zhongjing.dataset.report import StepReport
from zhongjing.data.schema import Dialogue, Message
from zhongjing.errors import ConfigError

PLACEHOLDERS = {
    "email": "[邮箱]",
    "id_card": "[身份证号]",
    "bank_card": "[银行卡号]",
    "phone": "[电话]",
    "account": "[账号]",
    "record_no": "[病历号]",
    "birth_date": "[出生日期]",
    "address": "[地址]",
    "name": "[姓名]",
}
STRUCTURED = ("email", "id_card", "bank_card", "phone", "account", "record_no", "birth_date")


@dataclass
class CustomPattern:
    name: str
    pattern: str  # Python regex; group 1 (if any) is the part replaced, else the whole match
    placeholder: str = ""  # default "[<name>]"


@dataclass
class DeidConfig:
    types: list[str] = field(default_factory=lambda: list(PLACEHOLDERS))
    patterns: list[CustomPattern] = field(default_factory=list)
    roles: list[str] = field(default_factory=lambda: ["system", "user", "assistant"])
    # an 18/15-digit number failing the checksum/date test still counts as an ID next to "身份证"
    id_context_fallback: bool = True


@dataclass(frozen=True)
class Span:
    type: str
    start: int
    end: int


H = r"\u4e00-\u9fff"
_D = r"(?<![0-9])"  # numbers must not be part of a longer digit run (letters may touch: "证号110…QQ号")
_E = r"(?![0-9])"
# common single-character surnames (plus compound ones); used only next to a title or a cue
SURNAMES = set(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶程苏魏吕丁任沈"
    "姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔"
    "向汤常温康施文牛樊葛邢安齐易乔伍庞颜倪庄聂章鲁岳翟殷詹申欧耿关兰焦俞左柳甘祝包宁尚符舒阮柯纪梅童"
    "凌毕单季裴霍涂成苗谷盛曲翁冉骆蓝路游辛靳管柴蒙鲍华喻祁蒲房滕屈饶解牟艾尤阳时穆农司卓古吉缪简车项"
    "连芦麦褚娄窦戚岑景党宫费卜冷晏席卫米柏宗瞿桂全佟应臧闵苟邬边卞姬师和仇栾隋商刁沙荣巫寇桑郎甄丛仲"
    "虞敖巩明佘池查麻苑迟邝"
)
COMPOUND_SURNAMES = ["欧阳", "司马", "上官", "诸葛", "东方", "皇甫", "尉迟", "公孙", "慕容", "长孙", "宇文", "司徒", "令狐", "夏侯"]
# words that look like "surname + title" but are not names (谢谢医生, 主治医生, 各位老师…)
_NOT_NAME_BIGRAMS = {"谢谢", "感谢", "多谢", "检查", "复查", "了解", "康复", "包括", "麻烦", "解惑", "时候", "这边", "那边", "排查", "筛查", "审查", "调查", "主任", "主治", "专科", "当地", "家庭", "值班", "管床", "接诊", "住院", "门诊",
                     "全科", "中医", "西医", "好的", "问问", "请问", "一位", "各位", "这位", "那位", "哪位"}
_NOT_NAME_SINGLE = set("和向与于时全有成明应祝")  # surnames that are far more often function words
# characters that (almost) never occur in a given name but often between a surname-like char and 医生
_NOT_GIVEN = set("在告知许多要问下您你我他她查说了是的让请和给跟向对把被去来看找就都也还再又不没很太能会可以这那些个吗呢吧啊呀哦嗯烦惑么候")
_NAME_BOUNDARY = set("是找挂了问请和跟给向谢好的位叫您哦啊嗯吧呀呢么嘛对让见喊烦")
_TITLES = "医生|大夫|主任|教授|院长|护士长|护士|医师|先生|女士|小姐|老师"
_SURNAME_RE = "(?:" + "|".join(COMPOUND_SURNAMES) + "|[" + "".join(sorted(SURNAMES)) + "])"

_PROVINCES = (
    "北京|天津|上海|重庆|河北|山西|辽宁|吉林|黑龙江|江苏|浙江|安徽|福建|江西|山东|河南|湖北|湖南|广东|海南|"
    "四川|贵州|云南|陕西|甘肃|青海|台湾|内蒙古|广西|西藏|宁夏|新疆|香港|澳门"
)
_PLACE = f"(?:(?![在住是的了我你他她到从往与或为去来说想要也还就医院])[{H}])"  # no function words
_NUM = r"(?:[0-9一二三四五六七八九十百零]+(?:号楼|号院|号|弄|栋|幢|座|单元|楼|层|室|户|组))"
_STREET = "(?:大街|大道|胡同|小区|花园|公寓|大厦|社区|新村|路|街|巷|弄|村|苑)"
_ADDRESS_RE = re.compile(
    f"(?P<prov>(?:{_PROVINCES})(?:省|市|自治区|壮族自治区|回族自治区|维吾尔自治区|特别行政区)?)?"
    f"(?P<city>{_PLACE}{{1,6}}?(?:市|州|盟))?(?P<dist>{_PLACE}{{1,6}}?(?:区|县|旗))?"
    f"(?P<town>{_PLACE}{{1,6}}?(?:镇|乡|街道))?(?P<street>{_PLACE}{{1,8}}?{_STREET})(?P<num>{_NUM}+)?"
)
_ADDRESS_CUE = re.compile(r"(?:住址|地址|家住|住在|现住|居住在|居住地|户籍地|户籍所在地|籍贯)(?:是|为|在)?[:：]?\s*")
_ADDRESS_TAIL = re.compile(f"{_NUM}|[省市区县镇乡村路街道巷弄号栋室]|{_STREET}")

_DATE = r"(?:(?:19|20)\d{2}\s*[年./-]\s*\d{1,2}\s*[月./-]\s*\d{1,2}\s*[日号]?|(?:19|20)\d{2}年\d{1,2}月|(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]))"

# (type, regex, group to replace)
_PATTERNS: list[tuple[str, re.Pattern, int]] = [
    ("email", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), 0),
    ("record_no", re.compile(
        r"(?:住院号|病历号|门诊号|病案号|就诊号|就诊卡号|诊疗卡号|医保卡号|医保号|社保卡号|检查号|登记号|影像号|"
        r"挂号单号|病人ID|患者ID|住院ID|ID号)\s*(?:是|为)?\s*[:：#]?\s*([A-Za-z]{0,4}[-_]?[0-9][0-9A-Za-z-]{2,})"), 1),
    ("account", re.compile(r"(?:微信号?|QQ号?|qq号?|支付宝账?号?)\s*(?:是|为)?\s*[:：]?\s*([A-Za-z0-9_-]{5,20})" + _E), 1),
    ("birth_date", re.compile(
        f"(?:出生日期|出生年月日?|生日|出生于|生于|出生在|出生时间|DOB)\\s*(?:是|为)?\\s*[:：]?\\s*({_DATE})"), 1),
    ("birth_date", re.compile(f"({_DATE})\\s*(?:出生|生人|生的)"), 1),
    ("phone", re.compile(_D + r"((?:\+|00)?86[- ]?)?1[3-9]\d(?:[- ]?\d{4}){2}" + _E), 0),
    ("phone", re.compile(_D + r"(?:\(0\d{2,3}\)|（0\d{2,3}）|0\d{2,3})[- ]?[2-9]\d{6,7}(?:-\d{1,4})?" + _E), 0),
    ("phone", re.compile(_D + r"[48]00[- ]?\d{3}[- ]?\d{4}" + _E), 0),
    ("phone", re.compile(r"(?:电话|手机|联系方式|联系电话|座机|手机号码?|电话号码?)\s*(?:是|为)?\s*[:：]?\s*(\d[\d -]{5,14}\d)" + _E), 1),
    ("name", re.compile(f"(?:我叫|我的名字是|我名字叫|我的名字叫|本人叫|名叫)\\s*({_SURNAME_RE}[{H}]{{1,2}}?)(?=[，,。.！!？?、\\s；;]|$|今年|男|女|\\d)"), 1),
    ("name", re.compile(f"(?:姓名|患者姓名|病人姓名|名字)\\s*[:：]\\s*([{H}]{{2,4}}?)(?=[，,。.\\s；;、]|$|男|女|\\d)"), 1),
    # "患者张三，男，45岁": a cue word, then a name followed by sex or age
    # a full three-character name set off by punctuation ("患者杜某某，手上…")
    ("name", re.compile(f"(?:患者|病人|患儿)\\s*[:：]?\\s*({_SURNAME_RE}[{H}]{{2}})(?=[，,。；;])"), 1),
    # …or by another identifier field ("患者熊某某，身份证：…")
    ("name", re.compile(f"(?:患者|病人|患儿)\\s*[:：]?\\s*({_SURNAME_RE}[{H}]{{1,2}}?)(?=\\s*[，,、（(]?\\s*(?:男|女|\\d{{1,3}}岁|"
                        f"身份证|电话|手机|联系方式|住址|家住|出生|年龄|性别|病历号|住院号|门诊号))"), 1),
]
_TITLE_RE = re.compile(f"(?:{_TITLES})")
_ID18 = re.compile(_D + r"([1-9]\d{5})[ -]?((?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]))[ -]?(\d{3}[\dXx])" + _E)
_ID15 = re.compile(_D + r"[1-9]\d{5}\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}" + _E)
_LONG_DIGITS = re.compile(_D + r"\d(?:[ -]?\d){11,18}" + _E)
_ID_CUE = re.compile(r"身份证|证件号|公民身份")
_CARD_CUE = re.compile(r"卡号|银行卡|储蓄卡|信用卡|账号|帐号")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def id_checksum_ok(id18: str) -> bool:
    """GB 11643 check digit of an 18-character resident ID."""
    if len(id18) != 18 or not id18[:17].isdigit():
        return False
    s = sum(int(c) * w for c, w in zip(id18[:17], _ID_WEIGHTS))
    return "10X98765432"[s % 11] == id18[17].upper()


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _valid_date(y: int, m: int, d: int) -> bool:
    try:
        _dt.date(y, m, d)
        return True
    except ValueError:
        return False


def _cue_before(cue: re.Pattern, text: str, start: int, window: int = 12) -> bool:
    return bool(cue.search(text, max(0, start - window), start))


class Deidentifier:
    """Compiled detectors for one config. `find(text)` gives non-overlapping spans; `redact` replaces them."""

    def __init__(self, cfg: DeidConfig | None = None):
        self.cfg = cfg or DeidConfig()
        unknown = [t for t in self.cfg.types if t not in PLACEHOLDERS]
        if unknown:
            raise ConfigError(f"deid.types: unknown type {unknown[0]!r} (valid: {', '.join(PLACEHOLDERS)})")
        self.types = set(self.cfg.types)
        self.placeholders = dict(PLACEHOLDERS)
        self.custom: list[tuple[str, re.Pattern]] = []
        for p in self.cfg.patterns:
            try:
                rx = re.compile(p.pattern)
            except re.error as e:
                raise ConfigError(f"deid.patterns: pattern {p.name!r} is not a valid regex ({e})") from None
            self.custom.append((p.name, rx))
            self.placeholders[p.name] = p.placeholder or f"[{p.name}]"

    def _candidates(self, text: str) -> Iterator[Span]:
        t = self.types
        if "id_card" in t:
            for m in _ID18.finditer(text):
                raw = re.sub(r"[ -]", "", m.group(0))
                ok = id_checksum_ok(raw) and _valid_date(int(raw[6:10]), int(raw[10:12]), int(raw[12:14]))
                if ok or (self.cfg.id_context_fallback and _cue_before(_ID_CUE, text, m.start())):
                    yield Span("id_card", m.start(), m.end())
            for m in _ID15.finditer(text):
                s = m.group(0)
                if _valid_date(1900 + int(s[6:8]), int(s[8:10]), int(s[10:12])):
                    yield Span("id_card", m.start(), m.end())
        if "bank_card" in t:
            for m in _LONG_DIGITS.finditer(text):
                digits = re.sub(r"[ -]", "", m.group(0))
                if 16 <= len(digits) <= 19 and (luhn_ok(digits) or _cue_before(_CARD_CUE, text, m.start())):
                    yield Span("bank_card", m.start(), m.end())
        for type_, rx, group in _PATTERNS:
            if type_ not in t:
                continue
            for m in rx.finditer(text):
                value = m.group(group)
                if type_ == "name" and not text[m.start():m.end()].startswith(("姓名", "患者姓名", "病人姓名", "名字")) \
                        and (value[0] in _NOT_NAME_SINGLE or _NOT_GIVEN & set(value[1:])):
                    continue  # 患者应当在60岁…: a verb phrase, not a name
                if value:
                    yield Span(type_, m.start(group), m.end(group))
        if "name" in t:
            yield from self._titled_names(text)
        if "address" in t:
            yield from self._addresses(text)
        for name, rx in self.custom:
            for m in rx.finditer(text):
                g = 1 if rx.groups else 0
                if m.end(g) > m.start(g):
                    yield Span(name, m.start(g), m.end(g))

    @staticmethod
    def _titled_names(text: str) -> Iterator[Span]:
        """王医生 / 王建国医生 / 欧阳主任: the shortest surname-initial name right before a title."""
        for m in _TITLE_RE.finditer(text):
            p = m.start()
            for k in (1, 2, 3, 4):
                if p - k < 0 or not re.match(f"[{H}]", text[p - k]):
                    break
                name = text[p - k:p]
                compound = name[:2] in COMPOUND_SURNAMES or text[p - k - 1:p - k + 1] in COMPOUND_SURNAMES
                if not (name[0] in SURNAMES or compound) or (k == 4 and name[:2] not in COMPOUND_SURNAMES):
                    continue
                if name[0] in _NOT_NAME_SINGLE:
                    continue
                if text[max(0, p - 2):p] in _NOT_NAME_BIGRAMS or "某" in name or _NOT_GIVEN & set(name[1:]):
                    break
                before = text[p - k - 1] if p - k > 0 else ""
                if re.match(f"[{H}]", before or " ") and before not in _NAME_BOUNDARY and not compound:
                    continue  # a name starts after punctuation or a cue word (谢谢王医生), not inside a word (检查医生)
                if p - k - 1 >= 0 and text[p - k - 1:p - k + 1] in COMPOUND_SURNAMES:
                    k += 1  # 欧阳娜娜: 阳 is a surname too, but 欧阳 is the one meant
                yield Span("name", p - k, p)
                break

    def _addresses(self, text: str) -> Iterator[Span]:
        for m in _ADDRESS_RE.finditer(text):
            # a street needs a house number or an administrative level before it (中山路 alone is not an address)
            if m.group("num") or any(m.group(g) for g in ("prov", "city", "dist", "town")):
                yield Span("address", m.start(), m.end())
        for m in _ADDRESS_CUE.finditer(text):
            stop = re.search(r"[，,。.；;！!？?\n（(]|$", text[m.end():m.end() + 40])
            chunk_end = m.end() + (stop.start() if stop else 0)
            last = None
            for t in _ADDRESS_TAIL.finditer(text, m.end(), chunk_end):
                last = t
            if last is not None and last.end() - m.end() >= 3:
                yield Span("address", m.end(), last.end())

    def find(self, text: str) -> list[Span]:
        """Non-overlapping spans; on overlap the structured type (earlier in PLACEHOLDERS) and then the longer wins."""
        order = {k: i for i, k in enumerate(self.placeholders)}
        cands = sorted(set(self._candidates(text)), key=lambda s: (order[s.type], -(s.end - s.start), s.start))
        taken: list[Span] = []
        for s in cands:
            if all(s.end <= o.start or s.start >= o.end for o in taken):
                taken.append(s)
        return sorted(taken, key=lambda s: s.start)

    def redact(self, text: str) -> tuple[str, Counter]:
        spans = self.find(text)
        if not spans:
            return text, Counter()
        out, pos = [], 0
        for s in spans:
            out += [text[pos:s.start], self.placeholders[s.type]]
            pos = s.end
        out.append(text[pos:])
        return "".join(out), Counter(s.type for s in spans)


def deidentify_dialogue(d: Dialogue, deid: Deidentifier, report: StepReport) -> Dialogue:
    msgs = []
    changed = False
    for m in d.messages:
        if m.role in deid.cfg.roles:
            text, counts = deid.redact(m.content)
            for k, v in counts.items():
                report.add(f"{k}:{m.role}", v)
            changed |= bool(counts)
            msgs.append(Message(m.role, text))
        else:
            msgs.append(m)
    meta: dict = {}
    for key, value in d.meta.items():
        if key in META_LINKS:  # a link to the source page leads straight back to the identifiable record
            report.add("meta_link_removed")
            continue
        meta[key], counts = _redact_value(value, deid)
        for k, v in counts.items():
            report.add(f"{k}:meta", v)
        changed |= bool(counts)
    if changed:
        report.add("dialogues_changed")
    meta["deidentified"] = True
    return Dialogue(d.id, msgs, meta)


# Readers keep some source fields beside the turns: free text (a site's diagnosis summary naming the
# doctor or patient) is redacted like a turn; a link back to the source consultation is dropped.
META_LINKS = ("url",)


def _redact_value(value, deid: Deidentifier) -> tuple[object, Counter]:
    if isinstance(value, str):
        return deid.redact(value)
    total: Counter = Counter()
    if isinstance(value, list):
        out = []
        for v in value:
            v, c = _redact_value(v, deid)
            out.append(v)
            total += c
        return out, total
    if isinstance(value, dict):
        out_d = {}
        for k, v in value.items():
            out_d[k], c = _redact_value(v, deid)
            total += c
        return out_d, total
    return value, total
