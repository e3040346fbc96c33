#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/seeds/<target>/ from the test vectors
and examples (run from anywhere; `make fuzz` runs it when seeds/ is absent).
Each seed is in its target's input format (see the doc comment atop each
fuzz_targets/*.rs)."""
import hashlib
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHARSETS = {"utf-8": 0, "gbk": 1, "gb2312": 2, "gb18030": 3}
PY_CODEC = {"utf-8": "utf-8", "gbk": "gbk", "gb2312": "gbk", "gb18030": "gb18030"}


def put(target, data):
    folder = os.path.join(HERE, "seeds", target)
    os.makedirs(folder, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(folder, name), "wb") as out:
        out.write(data)


vectors = json.load(open(os.path.join(ROOT, "tests/vectors/signature-vectors.json"), encoding="utf-8"))

# response: raw bodies (the vectors, platform key) and the signed templates,
# bare and with a few edits around the node.
for vector in vectors["response_vectors"]:
    charset = vector["charset"].lower()
    mode = CHARSETS[charset] | (4 if vector["sign_type"] == "RSA" else 0)
    put("response", bytes([mode]) + vector["body"].encode(PY_CODEC[charset]))


def edit(offset, delete, insert):
    return struct.pack("<HBB", offset, delete, len(insert)) + insert


for template in range(8):
    put("response", bytes([0x80 | template]))
    put("response", bytes([0x80 | template]) + edit(1, 0, b'"sig\\u006e":"x",'))
    put("response", bytes([0x80 | template]) + edit(1, 0, b'"a":"\\"{}",'))
    put("response", bytes([0x80 | template]) + edit(1, 0, b'"zhima_credit_relation_query_respons\\u0065":{},'))
    put("response", bytes([0x80 | template]) + edit(65535, 0, b" "))

# job: the example messages, one per seed.
with open(os.path.join(ROOT, "examples/contacts.jsonl"), "rb") as lines:
    for line in lines:
        put("job", line.rstrip(b"\n"))
put("job", b'{"transaction_id":"t_1","cert_no":"11010519491231002X","name":"\\u5f20\\u4e09",'
           b'"relation_phone":"15843991158","relation_name":"\\u674e\\u56db","relation":null,'
           b'"product_code":"w1010100001000001200","external_ref":""}')

# statement: the sandbox's /bill and Alipay's GBK layout, each encoding choice.
bill = b"\xef\xbb\xbfbiz_no,transaction_id,app_id,billed_at\r\nZM1,t1,app,2024-05-21 00:30:00\r\n" \
       b"ZM2,\"t_2\",app,2024/05/21 08:00:00\n"
alipay = ("#支付宝业务明细查询\n#账号：[20881234]\n业务流水号,商户订单号,备注,计费时间\n"
          "ZM9\t,t9\t,联系人验证,2024/05/21 08:00:00\n\"ZM10\",\"t\n10\",\"引号\"\"\",2024-05-21T08:00:00\n"
          "#-----业务明细列表结束-----\n")
for choice in range(3):
    put("statement", bytes([choice]) + bill)
    put("statement", bytes([choice | 4]) + alipay.encode("gbk"))
    put("statement", bytes([choice | 4]) + alipay.encode("utf-8"))

# signing: each request vector's parameters, key NUL value NUL ...
for number, vector in enumerate(vectors["request_vectors"]):
    parts = []
    for key, value in vector["params"].items():
        if key != "charset":
            parts += [key.encode(), str(value).encode()]
    put("signing", bytes([number * 37 % 256]) + b"\0".join(parts))
put("signing", b"\x55" + b"\0".join([b"a+b", b"c&d=e", b"%41", b"%zz", "表".encode(), "😀".encode(), b"", b"x"]))
