"""Fake personal identifiers to plant in the raw demo material (so de-identification has work to do).

Everything is invented: names from common characters, resident ID numbers with a valid GB 11643
check digit (a real de-identifier must not skip them), mobile numbers, e-mails on the reserved
example.* domains, record numbers, addresses with made-up house numbers, birth dates.
"""

from __future__ import annotations

import random

REFERENCE_YEAR = 2024  # ages in the demo are relative to this year, so output never depends on the clock
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾田董潘袁蔡蒋余杜叶程魏苏吕丁沈姚卢姜崔钟谭陆汪范金廖贾夏韦方白邹孟熊秦邱江尹薛"
GIVEN = ("建国 秀英 志强 丽娟 海燕 晓明 文静 俊杰 桂兰 德华 玉梅 永刚 春花 子涵 雨桐 浩然 思远 佳怡 明轩 淑芬 "
         "红霞 立新 晓东 雪梅 家豪 欣怡 宏伟 美玲 振华 凤英 嘉怡 梓萱 宇航 静怡 成龙 慧敏 少伟 翠兰 一鸣 若曦").split()
PINYIN = ("wang li zhang liu chen yang huang zhao wu zhou xu sun ma zhu hu guo he gao lin luo "
          "xiaoming jianguo lili haiyan wenjing junjie mingxuan xinyi hongwei meiling").split()
REGIONS = ("110105", "310104", "440106", "330106", "420102", "510107", "320102", "370102", "610113", "430104")
MOBILE_PREFIXES = ("130", "131", "135", "136", "137", "138", "139", "150", "151", "152", "158", "159",
                   "177", "180", "186", "187", "188", "189", "199")
PLACES = (("浙江省杭州市", "西湖区"), ("广东省广州市", "天河区"), ("湖北省武汉市", "武昌区"), ("四川省成都市", "锦江区"),
          ("江苏省南京市", "玄武区"), ("山东省济南市", "历下区"), ("陕西省西安市", "雁塔区"), ("湖南省长沙市", "芙蓉区"),
          ("北京市", "朝阳区"), ("上海市", "徐汇区"))
ROADS = ("文三路", "建设路", "人民路", "解放路", "中山路", "和平路", "长江路", "新华街", "青年路", "育才路")
MRN_LABELS = (("病历号", "MZ"), ("住院号", "ZY"), ("门诊号", "MZ"), ("病案号", "BA"))
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)

TYPES = ("name", "id_card", "mobile", "email", "medical_record_no", "address", "birth_date")


def id_check_digit(first17: str) -> str:
    return "10X98765432"[sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS)) % 11]


class Faker:
    """Seeded source of unique fake identifiers."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def _unique(self, make) -> str:
        for _ in range(1000):
            value = make()
            if value not in self.used:
                self.used.add(value)
                return value
        raise RuntimeError("could not make a unique fake identifier")

    def name(self) -> str:
        return self._unique(lambda: self.rng.choice(SURNAMES) + self.rng.choice(GIVEN))

    def birth(self, age: int) -> tuple[int, int, int]:
        return REFERENCE_YEAR - age, self.rng.randint(1, 12), self.rng.randint(1, 28)

    def id_card(self, birth: tuple[int, int, int], sex: str) -> str:
        y, m, d = birth
        def make() -> str:
            seq = self.rng.randint(10, 99) * 10 + self.rng.choice((1, 3, 5, 7, 9) if sex == "男" else (0, 2, 4, 6, 8))
            first17 = f"{self.rng.choice(REGIONS)}{y:04d}{m:02d}{d:02d}{seq:03d}"
            return first17 + id_check_digit(first17)
        return self._unique(make)

    def mobile(self) -> str:
        return self._unique(lambda: self.rng.choice(MOBILE_PREFIXES) + f"{self.rng.randint(0, 99999999):08d}")

    def email(self) -> str:
        return self._unique(lambda: f"{self.rng.choice(PINYIN)}{self.rng.randint(10, 9999)}@example.{self.rng.choice(('com', 'net', 'org'))}")

    def medical_record_no(self) -> tuple[str, str]:
        label, prefix = self.rng.choice(MRN_LABELS)
        return label, self._unique(lambda: f"{prefix}{REFERENCE_YEAR - self.rng.randint(0, 3)}{self.rng.randint(0, 9999999):07d}")

    def address(self) -> str:
        def make() -> str:
            city, district = self.rng.choice(PLACES)
            return (f"{city}{district}{self.rng.choice(ROADS)}{self.rng.randint(1, 300)}号"
                    f"{self.rng.randint(1, 30)}栋{self.rng.randint(1, 6)}单元{self.rng.randint(1, 30)}0{self.rng.randint(1, 4)}室")
        return self._unique(make)

    def birth_date(self, birth: tuple[int, int, int]) -> str:
        y, m, d = birth  # not forced unique: two patients may share a birthday
        style = self.rng.random()
        return f"{y}年{m}月{d}日" if style < 0.5 else f"{y}-{m:02d}-{d:02d}" if style < 0.8 else f"{y}.{m}.{d}"

    def plant(self, kind: str, birth: tuple[int, int, int], sex: str) -> tuple[str, str]:
        """(value, sentence that carries it) for one identifier type; `birth` keeps a record's
        ID number and birth date consistent with each other and with the stated age."""
        r = self.rng
        if kind == "name":
            v = self.name()
            return v, r.choice((f"我叫{v}，", f"患者{v}，", f"患者姓名：{v}，"))
        if kind == "id_card":
            v = self.id_card(birth, sex)
            return v, r.choice((f"身份证号{v}，", f"身份证：{v}，", f"我的身份证号码是{v}，"))
        if kind == "mobile":
            v = self.mobile()
            return v, r.choice((f"我的电话是{v}，", f"手机{v}，方便的话回个电话，", f"联系电话：{v}，"))
        if kind == "email":
            v = self.email()
            return v, r.choice((f"检查报告可以发我邮箱{v}，", f"邮箱：{v}，", f"我的邮箱是{v}，"))
        if kind == "medical_record_no":
            label, v = self.medical_record_no()
            return v, r.choice((f"{label}{v}，", f"{label}：{v}，"))
        if kind == "address":
            v = self.address()
            return v, r.choice((f"家住{v}，", f"住址：{v}，", f"现住{v}，"))
        if kind == "birth_date":
            v = self.birth_date(birth)
            return v, r.choice((f"我是{v}出生的，", f"出生日期：{v}，", f"生日{v}，"))
        raise ValueError(kind)
