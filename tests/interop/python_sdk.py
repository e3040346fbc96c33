"""Calls the sandbox gateway with Alipay's official Python SDK (PyPI
alipay-sdk-python), which verifies every answer's signature itself, in UTF-8
and GBK, with RSA2 and RSA. It sends absolute-form request targets
(`POST http://host:port/gateway.do?... HTTP/1.1`).

Usage: python3 python_sdk.py                     (starts `zhima-worker sandbox` itself)
       SANDBOX_URL=http://127.0.0.1:8480 python3 python_sdk.py
The SDK always connects to port 80 (and fails on a URL with a port), so the
connection helper is patched to honour the port; the request target it sends
is unchanged.
"""

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

from alipay.aop.api.AlipayClientConfig import AlipayClientConfig
from alipay.aop.api.DefaultAlipayClient import DefaultAlipayClient
from alipay.aop.api.util import WebUtils

ROOT = Path(__file__).resolve().parents[2]
KEYS = ROOT / "config" / "keys"
APP_ID = "2014072300007148"
METHOD = "zhima.credit.relation.query"


def connection_with_port(url, query_string, timeout):
    parsed = urllib.parse.urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=timeout)
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path}?{query_string}", connection


WebUtils.get_http_connection = connection_with_port


def key_body(path):
    lines = Path(path).read_text().strip().splitlines()
    return "".join(line for line in lines if not line.startswith("-----"))


class RelationQuery:
    """The SDK has no request class for this method; this is the minimal one."""

    need_encrypt = False

    def __init__(self, biz):
        self.biz = biz

    def get_params(self):
        return {
            "method": METHOD,
            "version": "1.0",
            "biz_content": json.dumps(self.biz, ensure_ascii=False, separators=(",", ":")),
        }

    def get_multipart_params(self):
        return {}


def client(url, charset="utf-8", sign_type="RSA2"):
    config = AlipayClientConfig()
    config.server_url = f"{url}/gateway.do"
    config.app_id = APP_ID
    config.charset = charset
    config.sign_type = sign_type
    # The same key as config/keys/test_merchant_private.pem, as PKCS#1 (the SDK needs it).
    config.app_private_key = key_body(ROOT / "tests" / "vectors" / "keys" / "merchant_private_pkcs1.pem")
    config.alipay_public_key = key_body(KEYS / "test_sandbox_public.pem")
    return DefaultAlipayClient(config)


def biz(transaction_id, **changes):
    content = {
        "product_code": "w1010100001000001200",
        "transaction_id": transaction_id,
        "cert_no": "640202199007164686",
        "name": "张三",
        "relation_phone": "15843991158",
        "relation_name": "李四",
        "relation": "family",
    }
    content.update(changes)
    return {k: v for k, v in content.items() if v is not None}


def start_sandbox():
    if os.environ.get("SANDBOX_URL"):
        return os.environ["SANDBOX_URL"], None
    binary = os.environ.get("ZHIMA_WORKER_BIN", str(ROOT / "target" / "debug" / "zhima-worker"))
    child = subprocess.Popen(
        [binary, "sandbox", "--listen", "127.0.0.1:0",
         "--app", f"{APP_ID}={KEYS / 'test_merchant_public.pem'}",
         "--private-key", str(KEYS / "test_sandbox_private.pem")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = child.stdout.readline().strip()
    if not line.startswith("listening on http://"):
        child.kill()
        raise SystemExit(f"unexpected first line from the sandbox: {line!r}")
    return line.removeprefix("listening on "), child


def main():
    url, child = start_sandbox()
    run = format(int(time.time() * 1000), "x")
    cases = [
        ("utf-8, RSA2", client(url), biz(f"py_{run}_u8"), ("10000", None)),
        ("utf-8, RSA2, replay", client(url), biz(f"py_{run}_u8"), ("10000", None)),
        ("GBK, RSA2", client(url, "GBK"), biz(f"py_{run}_gbk"), ("10000", None)),
        ("GB18030, RSA", client(url, "gb18030", "RSA"), biz(f"py_{run}_rsa"), ("10000", None)),
        ("GBK, repeat with other params", client(url, "GBK"), biz(f"py_{run}_gbk", relation_name="王五"),
         ("40004", "TRANSACTION_ID_REPEAT")),
        ("GBK, bad name", client(url, "GBK"), biz(f"py_{run}_bad", name="张|三"), ("40004", "INVALID_PARAMETER")),
    ]
    failures = 0
    try:
        for name, sdk, content, (code, sub_code) in cases:
            try:
                node = json.loads(sdk.execute(RelationQuery(content)))
                ok = node.get("code") == code and node.get("sub_code") == sub_code
                print(f"{'ok  ' if ok else 'FAIL'} verified  {name}: {node.get('code')} {node.get('sub_code') or node.get('biz_no')}")
            except Exception as error:  # the SDK raises on a signature that does not verify
                ok = False
                print(f"FAIL {name}: {error}")
            failures += 0 if ok else 1
    finally:
        if child:
            child.terminate()
            child.wait()
    print("interop (python): every answer verified with alipay-sdk-python" if failures == 0
          else f"interop (python): {failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
