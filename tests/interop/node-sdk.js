// Calls the sandbox gateway with Alipay's official Node SDK (npm alipay-sdk,
// validateSign: true) and checks that every signed answer verifies.
//
// Usage: node node-sdk.js            (starts `zhima-worker sandbox` itself)
//        SANDBOX_URL=http://127.0.0.1:8480 node node-sdk.js   (uses a running one)
// ZHIMA_WORKER_BIN overrides the binary (default: ../../target/debug/zhima-worker).
'use strict';

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const readline = require('node:readline');
const { AlipaySdk } = require('alipay-sdk');

const ROOT = path.resolve(__dirname, '..', '..');
const KEYS = path.join(ROOT, 'config', 'keys');
const APP_ID = '2014072300007148';
const APP_WITHOUT_CONTRACT = '2021000000000002';
const METHOD = 'zhima.credit.relation.query';
const key = (name) => fs.readFileSync(path.join(KEYS, name), 'ascii');

async function startSandbox() {
  if (process.env.SANDBOX_URL) return { url: process.env.SANDBOX_URL, stop() {} };
  const bin = process.env.ZHIMA_WORKER_BIN || path.join(ROOT, 'target', 'debug', 'zhima-worker');
  const child = spawn(bin, [
    'sandbox', '--listen', '127.0.0.1:0',
    '--app', `${APP_ID}=${path.join(KEYS, 'test_merchant_public.pem')}`,
    '--app-without-contract', `${APP_WITHOUT_CONTRACT}=${path.join(KEYS, 'test_merchant_public.pem')}`,
    '--private-key', path.join(KEYS, 'test_sandbox_private.pem'),
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

function client(url, overrides = {}) {
  return new AlipaySdk({
    appId: APP_ID,
    privateKey: key('test_merchant_private.pem'),
    keyType: 'PKCS8',
    alipayPublicKey: key('test_sandbox_public.pem'),
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
    linked_merchant_id: '2088721630869411',
    ...changes,
  };
}

async function putFaults(url, faults) {
  const response = await fetch(`${url}/admin/faults`, { method: 'PUT', body: JSON.stringify(faults) });
  if (response.status !== 200) throw new Error(`PUT /admin/faults: ${response.status}`);
}

// Each scenario: the SDK call, and the code/sub_code the answer must carry.
function scenarios(url) {
  const run = Date.now().toString(36);
  const id = (name) => `interop_${run}_${name}`;
  const sdk = client(url);
  const exec = (biz, options = {}, which = sdk) =>
    which.exec(METHOD, { bizContent: biz }, { validateSign: true, ...options });
  return [
    ['success (RSA2, utf-8)', () => exec(bizContent(id('ok'))), '10000', undefined],
    ['same id, same params: replayed', () => exec(bizContent(id('ok'))), '10000', undefined],
    ['same id, other params', () => exec(bizContent(id('ok'), { relation_phone: '13900000000' })), '40004', 'TRANSACTION_ID_REPEAT'],
    ['legacy RSA (SHA1withRSA)', () => exec(bizContent(id('rsa')), {}, client(url, { signType: 'RSA' })), '10000', undefined],
    ['no relation', () => exec(bizContent(id('norel'), { relation: undefined })), '10000', undefined],
    ['bad cert_no', () => exec(bizContent(id('bad'), { cert_no: '640202199007164687' })), '40004', 'INVALID_PARAMETER'],
    ['bad transaction_id', () => exec(bizContent('bad-id')), '40004', 'INVALID_TRANSACTION_ID'],
    ['no product_code', () => exec(bizContent(id('np'), { product_code: undefined })), '40004', 'PRODUCT_CODE_IS_NULL'],
    ['other product_code', () => exec(bizContent(id('op'), { product_code: 'x' })), '40004', 'API_PRODUCT_NOT_MATCH'],
    ['app without contract', () => exec(bizContent(id('nc')), {}, client(url, { appId: APP_WITHOUT_CONTRACT })), '40004', 'NO_VALID_ARRANGEMENT'],
    ['request signed with the wrong key', () => exec(bizContent(id('wk')), {}, client(url, { privateKey: key('test_sandbox_private.pem') })), '40002', 'isv.invalid-signature'],
    ['injected SYSTEM_ERROR (20000)', async () => {
      await putFaults(url, { system_error_rate: 1 });
      try { return await exec(bizContent(id('se'))); } finally { await putFaults(url, {}); }
    }, '20000', 'isp.unknow-error'],
  ];
}

async function main() {
  const sandbox = await startSandbox();
  let failures = 0;
  try {
    for (const [name, call, code, subCode] of scenarios(sandbox.url)) {
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
    failures += await checkBrokenSignatureIsRejected(sandbox.url);
    failures += await checkUnsignedAnswer(sandbox.url);
  } finally {
    sandbox.stop();
  }
  console.log(failures === 0 ? 'interop: every answer verified with alipay-sdk' : `interop: ${failures} failure(s)`);
  process.exitCode = failures === 0 ? 0 : 1;
}

// The other direction: a tampered answer must make the SDK throw.
async function checkBrokenSignatureIsRejected(url) {
  await putFaults(url, { broken_sign_rate: 1 });
  try {
    await client(url).exec(METHOD, { bizContent: bizContent(`interop_broken_${Date.now()}`) }, { validateSign: true });
    console.log('FAIL a broken signature was accepted');
    return 1;
  } catch (error) {
    console.log(`ok   rejected  broken signature: ${error.message.slice(0, 40)}…`);
    return 0;
  } finally {
    await putFaults(url, {});
  }
}

// The gateway leaves unknown-app answers unsigned; the SDK reads them without validateSign.
async function checkUnsignedAnswer(url) {
  const result = await client(url, { appId: '1' }).exec(METHOD, { bizContent: bizContent('x') });
  const ok = result.code === '40002' && result.sub_code === 'isv.invalid-app-id';
  console.log(`${ok ? 'ok  ' : 'FAIL'} unsigned  unknown app_id: ${result.code} ${result.sub_code}`);
  return ok ? 0 : 1;
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
