"""A generated test set with planted identifiers, and recall/precision of a Deidentifier on it.

Carrier sentences are written here (no real patient text); identifiers are random but valid
(ID checksums, Luhn card numbers, real-looking phone formats). Hard negatives — lab values,
doses, visit dates, "谢谢医生" — are mixed in so precision means something.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

from zhongjing.dataset.deid import COMPOUND_SURNAMES, STRUCTURED, Deidentifier, Span, luhn_ok

_PATIENT = [
    "最近一周总是头晕，早上起来更明显。", "孩子发烧两天了，最高到38.9℃。", "我胃胀不舒服，吃完饭就想吐。",
    "上个月体检发现转氨酶偏高。", "晚上咳嗽得厉害，有白色的痰。", "血压一直在150/95mmHg左右。",
    "空腹血糖7.8mmol/L，需要吃药吗？", "2021年5月做过一次胃镜，说是浅表性胃炎。", "去年3月12日复查过，结果正常。",
    "身高172厘米，体重68公斤。", "白细胞12.3×10^9/L，中性粒细胞偏高。", "吃了三天阿莫西林，效果不明显。",
    "膝盖疼了半年多，上下楼梯更疼。", "脸上起了很多小红疹，有点痒。", "月经推迟了10天，测了是阴性。",
]
_DOCTOR = [
    "您好，根据您的描述，建议先查一下血常规。", "这种情况一般不用太担心，注意休息。", "布洛芬每次1片，每日不超过3次。",
    "建议您到医院消化内科就诊，做个胃镜看看。", "平时饮食清淡一些，少吃辛辣刺激的食物。", "请问您有没有药物过敏史？",
    "谢谢医生！", "主治医生建议两周后复查。", "如果持续高热不退，请及时就医。", "可以先用生理盐水清洗，每天2次。",
    "复查时间定在下周三上午9点。", "这个药需要连续吃14天，不能随便停。",
]
_GIVEN = list("伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰红建国文辉鹏飞宇浩婷雪梅琳晨阳斌凯峰慧颖倩瑶鑫波")
_SURN = list("王李张刘陈杨黄赵吴周徐孙马朱胡郭林罗高郑梁宋唐韩冯邓曹彭曾肖田董袁潘蒋蔡杜叶程苏魏吕丁沈")
_PROV = ["浙江省", "江苏省", "广东省", "四川省", "湖北省", "山东省", "河南省"]
_CITY = ["杭州市", "南京市", "广州市", "成都市", "武汉市", "济南市", "郑州市", "宁波市"]
_DIST = ["西湖区", "鼓楼区", "天河区", "武侯区", "江汉区", "历下区", "金水区", "海曙区", "余杭区"]
_ROAD = ["文三路", "中山路", "解放大道", "人民路", "建设街", "东风路", "和平巷", "长江大道", "幸福小区"]
_DOMAINS = ["qq.com", "163.com", "126.com", "gmail.com", "hospital.org.cn", "sina.cn"]


@dataclass
class PlantedText:
    text: str
    spans: list[Span]


def _id18(rng: random.Random) -> str:
    region = f"{rng.randint(1, 6)}{rng.randint(0, 99999):05d}"
    birth = f"{rng.randint(1940, 2015)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    body = region + birth + f"{rng.randint(0, 999):03d}"
    w = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    return body + "10X98765432"[sum(int(c) * x for c, x in zip(body, w)) % 11]


def _card(rng: random.Random) -> str:
    n = rng.choice((16, 19))
    while True:
        digits = "62" + "".join(str(rng.randint(0, 9)) for _ in range(n - 2))
        if luhn_ok(digits):
            break
    return " ".join(digits[i:i + 4] for i in range(0, n, 4)) if rng.random() < 0.3 else digits


def _mobile(rng: random.Random) -> str:
    d = f"1{rng.choice('3456789')}{rng.randint(0, 9)}" + "".join(str(rng.randint(0, 9)) for _ in range(8))
    style = rng.random()
    if style < 0.2:
        return f"{d[:3]}-{d[3:7]}-{d[7:]}"
    if style < 0.35:
        return f"{d[:3]} {d[3:7]} {d[7:]}"
    if style < 0.45:
        return "+86 " + d
    return d


def _landline(rng: random.Random) -> str:
    area = rng.choice(["010", "021", "0571", "020", "028", "0531"])
    num = f"{rng.randint(2, 8)}" + "".join(str(rng.randint(0, 9)) for _ in range(7 if len(area) == 3 else rng.choice((6, 7))))
    return rng.choice([f"{area}-{num}", f"({area}){num}", f"{area} {num}", f"400-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"])


def _name(rng: random.Random) -> tuple[str, str]:
    surname = rng.choice(COMPOUND_SURNAMES[:4]) if rng.random() < 0.05 else rng.choice(_SURN)
    return surname, surname + "".join(rng.choice(_GIVEN) for _ in range(rng.choice((1, 2))))


def _planted(rng: random.Random) -> tuple[str, str, str, str]:
    """(type, text before, value, text after) — only `value` must be replaced."""
    kind = rng.choice(["id_card", "phone", "phone", "email", "record_no", "bank_card", "account",
                       "birth_date", "address", "name", "name"])
    if kind == "id_card":
        v = _id18(rng) if rng.random() < 0.85 else _id18(rng)[:6] + _id18(rng)[8:14] + f"{rng.randint(0, 999):03d}"
        if len(v) == 15:  # legacy: 6-digit region, yyMMdd, 3-digit sequence
            v = f"{rng.randint(1, 6)}{rng.randint(0, 99999):05d}{rng.randint(40, 99)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
        return kind, rng.choice(["身份证号：", "我的身份证是", "证件号码", "身份证 "]), v, rng.choice(["。", "，麻烦帮我查一下。", " "])
    if kind == "phone":
        v = _mobile(rng) if rng.random() < 0.7 else _landline(rng)
        return kind, rng.choice(["我的电话是", "联系方式：", "有事打", "手机", "您可以拨打"]), v, rng.choice(["。", "，谢谢！", "联系我。"])
    if kind == "email":
        user = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(4, 10)))
        return kind, rng.choice(["报告发到我邮箱", "邮箱：", "请发到"]), f"{user}@{rng.choice(_DOMAINS)}", "，谢谢。"
    if kind == "record_no":
        v = rng.choice([f"ZY{rng.randint(10**7, 10**9)}", f"{rng.randint(10**5, 10**9)}", f"MZ-{rng.randint(2015, 2024)}{rng.randint(1000, 99999)}"])
        return kind, rng.choice(["住院号：", "病历号", "门诊号是", "病案号："]), v, rng.choice(["。", "，您可以调出来看看。"])
    if kind == "bank_card":
        return kind, rng.choice(["银行卡号", "退款请打到卡号：", "我的储蓄卡"]), _card(rng), "。"
    if kind == "account":
        v = "wxid_" + "".join(rng.choice("abcdefghjkmnpqrstuvwxyz23456789") for _ in range(8))
        return kind, rng.choice(["我的微信号：", "加我微信", "QQ号是"]), v if rng.random() < 0.6 else str(rng.randint(10**6, 10**10)), "。"
    if kind == "birth_date":
        y, m, d = rng.randint(1940, 2020), rng.randint(1, 12), rng.randint(1, 28)
        v = rng.choice([f"{y}年{m}月{d}日", f"{y}-{m:02d}-{d:02d}", f"{y}.{m}.{d}"])
        if rng.random() < 0.5:
            return kind, rng.choice(["出生日期：", "孩子生日是", "我出生于"]), v, "。"
        return kind, "患者", v, "出生，"
    if kind == "address":
        parts = [rng.choice(_PROV) if rng.random() < 0.5 else "", rng.choice(_CITY), rng.choice(_DIST), rng.choice(_ROAD)]
        v = "".join(parts) + f"{rng.randint(1, 999)}号" + (f"{rng.randint(1, 30)}栋{rng.randint(1, 6)}单元{rng.randint(101, 2804)}室" if rng.random() < 0.5 else "")
        return kind, rng.choice(["我家住在", "地址：", "寄到", "现住"]), v, rng.choice(["。", "，离医院比较远。"])
    surname, name = _name(rng)
    style = rng.randint(0, 4)
    if style == 0:
        return "name", "您好，我叫", name, "，今年45岁。"
    if style == 1:
        return "name", "", surname, rng.choice(["医生您好，", "主任，", "大夫，请问"])
    if style == 2:
        return "name", "姓名：", name, "，性别：女。"
    if style == 3:
        return "name", "患者", name, "，男，62岁，"
    return "name", "谢谢", name, "医生的耐心解答！"


def make_planted_set(n: int = 1000, seed: int = 0) -> list[PlantedText]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        text, spans = "", []
        k = rng.choice((0, 1, 1, 2, 3))
        for _ in range(rng.randint(1, 3)):
            text += rng.choice(_PATIENT + _DOCTOR)
        for _ in range(k):
            kind, before, value, after = _planted(rng)
            text += before
            spans.append(Span(kind, len(text), len(text) + len(value)))
            text += value + after
            text += rng.choice(_PATIENT + _DOCTOR) if rng.random() < 0.6 else ""
        out.append(PlantedText(text, spans))
    return out


def score(deid: Deidentifier, samples: list[PlantedText]) -> dict[str, dict]:
    """Per type: planted, recalled (covered by a detection of that type), detected, correct → recall, precision.

    `removed` counts planted values covered by a detection of any type (what privacy needs).
    """
    stats: dict[str, dict] = defaultdict(lambda: {"planted": 0, "recalled": 0, "removed": 0, "detected": 0, "correct": 0})
    for s in samples:
        found = deid.find(s.text)
        for p in s.spans:
            st = stats[p.type]
            st["planted"] += 1
            covering = [f for f in found if f.start <= p.start and f.end >= p.end]
            st["recalled"] += any(f.type == p.type for f in covering)
            st["removed"] += bool(covering)
        for f in found:
            st = stats[f.type]
            st["detected"] += 1
            st["correct"] += any(p.type == f.type and f.start < p.end and p.start < f.end for p in s.spans)
    for st in stats.values():
        st["recall"] = st["recalled"] / st["planted"] if st["planted"] else None
        st["precision"] = st["correct"] / st["detected"] if st["detected"] else None
    return dict(sorted(stats.items()))


def structured_recall(stats: dict[str, dict]) -> float:
    planted = sum(stats[t]["planted"] for t in STRUCTURED if t in stats)
    return sum(stats[t]["recalled"] for t in STRUCTURED if t in stats) / max(planted, 1)
