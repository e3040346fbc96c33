// Certificate mode (公钥证书模式): Alipay's official Node SDK (npm alipay-sdk,
// appCertPath / alipayPublicCertPath / alipayRootCertPath, validateSign: true)
// against `zhima-worker sandbox --cert-dir`, which issues the certificates.
// Every answer must verify and carry the expected code.
//
// Usage: node node-sdk-cert.js
// ZHIMA_WORKER_BIN overrides the binary (default: ../../target/debug/zhima-worker).
'use strict';

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');
const { AlipaySdk } = require('alipay-sdk');

const ROOT = path.resolve(__dirname, '..', '..');
const KEYS = path.join(ROOT, 'config', 'keys');
const APP_ID = '2014072300007148';
const METHOD = 'zhima.credit.relation.query';

async function startSandbox(certDir) {
  const bin = process.env.ZHIMA_WORKER_BIN || path.join(ROOT, 'target', 'debug', 'zhima-worker');
  const child = spawn(bin, [
    'sandbox', '--listen', '127.0.0.1:0',
    '--app', `${APP_ID}=${path.join(KEYS, 'test_merchant_public.pem')}`,
    '--cert-dir', certDir,
  ], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  const firstLine = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('sandbox did not start within 30 s')), 30000);
    child.on('exit', (code) => reject(new Error(`sandbox exited with ${code}`)));
    readline.createInterface({ input: child.stdout }).once('line', (line) => {
      clearTimeout(timer);
      resolve(line);
    });
  });
  const match = /^listening on (http:\/\/\S+)$/.exec(firstLine);
  if (!match) throw new Error(`unexpected first line: ${firstLine}`);
  return { url: match[1], stop: () => child.kill('SIGTERM') };
}

function client(url, certDir, overrides = {}) {
  return new AlipaySdk({
    appId: APP_ID,
    privateKey: fs.readFileSync(path.join(KEYS, 'test_merchant_private.pem'), 'ascii'),
    keyType: 'PKCS8',
    appCertPath: path.join(certDir, `appCertPublicKey_${APP_ID}.crt`),
    alipayPublicCertPath: path.join(certDir, 'alipayCertPublicKey_RSA2.crt'),
    alipayRootCertPath: path.join(certDir, 'alipayRootCert.crt'),
    gateway: `${url}/gateway.do`,
    camelcase: false,
    ...overrides,
  });
}

function bizContent(transactionId, changes = {}) {
  return {
    product_code: 'w1010100001000001200',
    transaction_id: transactionId,
    cert_no: '640202199007164686',
    name: '张三',
    relation_phone: '15843991158',
    relation_name: '李四',
    relation: 'family',
    ...changes,
  };
}

async function main() {
  const certDir = fs.mkdtempSync(path.join(os.tmpdir(), 'zhima-interop-cert-'));
  const sandbox = await startSandbox(certDir);
  const run = Date.now().toString(36);
  const id = (name) => `interop_cert_${run}_${name}`;
  const sdk = client(sandbox.url, certDir);
  const exec = (biz, which = sdk) => which.exec(METHOD, { bizContent: biz }, { validateSign: true });
  const scenarios = [
    ['success (certificate mode)', () => exec(bizContent(id('ok'))), '10000', undefined],
    ['same id, same params: replayed', () => exec(bizContent(id('ok'))), '10000', undefined],
    ['bad cert_no', () => exec(bizContent(id('bad'), { cert_no: '640202199007164687' })), '40004', 'INVALID_PARAMETER'],
    ['bad transaction_id', () => exec(bizContent('bad-id')), '40004', 'INVALID_TRANSACTION_ID'],
    ['key mode for a certificate-mode app', () => exec(bizContent(id('km')), new AlipaySdk({
      appId: APP_ID,
      privateKey: fs.readFileSync(path.join(KEYS, 'test_merchant_private.pem'), 'ascii'),
      keyType: 'PKCS8',
      // The Alipay certificate's key verifies the refusal.
      alipayPublicKey: sdk.config.alipayPublicKey,
      gateway: `${sandbox.url}/gateway.do`,
      camelcase: false,
    })), '40002', 'isv.missing-app-cert-sn'],
  ];
  let failures = 0;
  try {
    for (const [name, call, code, subCode] of scenarios) {
      try {
        const result = await call();
        const ok = result.code === code && result.sub_code === subCode;
        if (!ok) failures += 1;
        console.log(`${ok ? 'ok  ' : 'FAIL'} verified  ${name}: ${result.code} ${result.sub_code ?? result.biz_no}`);
      } catch (error) {
        failures += 1;
        console.log(`FAIL ${name}: ${error.message}`);
      }
    }
  } finally {
    sandbox.stop();
    fs.rmSync(certDir, { recursive: true, force: true });
  }
  console.log(failures === 0
    ? 'interop: every certificate-mode answer verified with alipay-sdk'
    : `interop (certificate mode): ${failures} failure(s)`);
  process.exitCode = failures === 0 ? 0 : 1;
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
