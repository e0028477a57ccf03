// Contract test: starts the real nodestate binary, sends real requests that
// reach every path, method, status and media type openapi.yaml lists, and
// judges every answer against the spec (checker.mjs). Prints
// "N passed, M failed" and exits non-zero on any failure.
//
// Environment: NODESTATE_BIN (the binary), NODESTATE_SOURCE_DIR (for
// openapi.yaml; default ../..), TMPDIR for the scratch databases.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Contract, PROBE_METHODS } from './checker.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const sourceDir = process.env.NODESTATE_SOURCE_DIR ?? path.resolve(here, '../..');
const bin = process.env.NODESTATE_BIN;
if (!bin) {
  console.error('contract: NODESTATE_BIN is not set');
  process.exit(2);
}

// Responses the spec lists that no honest request from outside can cause.
// Each needs a reason; checkCoverage fails if an entry goes stale (matches
// nothing in the spec) or if the status turns out to be exercised after all.
const NOT_TRIGGERABLE = [
  {
    status: '500',
    reason: 'internal-error: only when reading SQLite through the read-only ' +
      'connection fails or memory runs out; neither can be caused over HTTP ' +
      'without corrupting the database file under a live server.',
  },
  {
    status: '503',
    template: '/healthz',
    reason: 'not-alive: only when the writer thread has died, which no ' +
      'request can cause.',
  },
  {
    status: '501',
    template: '/backup',
    reason: 'backup-unsupported: only a store without a streamed backup ' +
      '(PostgreSQL) answers it; this test runs the SQLite store.',
  },
  {
    status: '503',
    template: '/backup',
    reason: 'backup-busy: needs --max-backups answers still being sent while ' +
      'another arrives; a small database goes out at once (tests/it_backup.c ' +
      'and tests/test_engine.c hold one open to prove it).',
  },
];

const TOKEN = 'contract-test-token';
const scratch = mkdtempSync(path.join(os.tmpdir(), 'nodestate-contract-'));
const servers = [];
const contract = new Contract(path.join(sourceDir, 'openapi.yaml'));

/* ---- the server ---- */

// Starts the binary on a free port; resolves with {base, proc, log()}.
function startServer(name, extraArgs = []) {
  const db = path.join(scratch, `${name}.db`);
  const proc = spawn(bin, ['--listen', '127.0.0.1:0', '--db', db, ...extraArgs],
    { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  const srv = { name, proc, log: () => stderr, exited: null };
  servers.push(srv);
  return new Promise((resolve, reject) => {
    // A bound for a busy machine; the listening line itself ends the wait.
    const timer = setTimeout(() => reject(new Error(`${name}: no "msg=listening" within 30 s:\n${stderr}`)), 30000);
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (chunk) => {
      stderr += chunk;
      const m = /msg=listening\b.*\baddr=(\S+)/.exec(stderr);
      if (m && !srv.base) {
        clearTimeout(timer);
        srv.base = `http://${m[1]}`;
        srv.port = Number(m[1].split(':').pop());
        resolve(srv);
      }
    });
    proc.on('exit', (code, signal) => {
      srv.exited = { code, signal };
      clearTimeout(timer);
      if (!srv.base) reject(new Error(`${name} exited (${code ?? signal}) before listening:\n${stderr}`));
    });
  });
}

async function stopServer(srv) {
  if (srv.exited) return;
  const done = new Promise((r) => srv.proc.once('exit', r));
  srv.proc.kill('SIGTERM');
  const timer = setTimeout(() => srv.proc.kill('SIGKILL'), 15000);
  await done;
  clearTimeout(timer);
}

/* ---- HTTP ---- */

// One request on a fresh connection; body is a string/Buffer or an object (sent as JSON).
function send(srv, method, url, { headers = {}, body } = {}) {
  let payload = body;
  const h = { ...headers };
  if (payload !== undefined && typeof payload !== 'string' && !Buffer.isBuffer(payload)) {
    payload = JSON.stringify(payload);
    if (!Object.keys(h).some((k) => k.toLowerCase() === 'content-type')) h['Content-Type'] = 'application/json';
  }
  if (payload !== undefined) h['Content-Length'] = Buffer.byteLength(payload);
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1', port: srv.port, method, path: url, headers: h, agent: false, timeout: 20000,
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error('no answer within 20 s')));
    req.on('error', reject);
    if (payload !== undefined) req.write(payload);
    req.end();
  });
}

/*
 * Sends one request, judges the answer against the spec, and checks what
 * this scenario expects (status, problem slug, extra assertions). Returns
 * {res, body}, body being the parsed JSON if any.
 */
async function call(srv, label, method, url, { expect, slug, assert, ...opts } = {}) {
  let res;
  try {
    res = await send(srv, method, url, opts);
  } catch (e) {
    contract.fail(`${label} (${method} ${url})`, `request failed: ${e.message}`);
    return {};
  }
  const pathOnly = url.split('?')[0];
  const body = contract.check(label, { method, path: pathOnly }, res);
  const wrong = [];
  if (expect !== undefined && res.status !== expect) wrong.push(`expected status ${expect}, got ${res.status}: ${res.body.toString('utf8').slice(0, 300)}`);
  if (slug && body?.type !== `urn:nodestate:problem:${slug}`) wrong.push(`expected problem ${slug}, got ${body?.type}`);
  if (assert && !wrong.length) {
    let why;
    try {
      why = assert(body, res);
    } catch (e) {
      why = `assertion threw ${e.message}`;
    }
    if (why) wrong.push(why);
  }
  if (wrong.length) contract.fail(`${label} (${method} ${url}) scenario`, wrong.join('; '));
  else contract.passed++;
  return { res, body };
}

// A concrete path for a template: every {param} gets a valid id.
function concrete(template, values = {}) {
  return template.replace(/\{([^}]+)\}/g, (_, name) => values[name] ?? 'r1');
}

/* ---- scenarios ---- */

const LONG_ID = 'x'.repeat(129); // one byte past the id limit
const NO_NODE = '/runs/r1/nodes/no-such-node/state';

async function mainServer(s) {
  const a = '/runs/r1/nodes/a/state';
  const ok = (cond, msg) => (cond ? null : msg);

  // POST: every outcome of an update.
  await call(s, 'new node is queued', 'POST', a, { body: { status: 'running' }, expect: 202,
    assert: (b) => ok(b.durable === false && b.status === 'running', 'want durable:false status:running') });
  await call(s, 'duplicate', 'POST', a, { body: { status: 'running' }, expect: 200 });
  await call(s, 'wait for the commit', 'POST', '/runs/r1/nodes/b/state?wait=true', { body: { status: 'scheduled' }, expect: 200,
    assert: (b) => ok(b.durable === true, 'want durable:true') });
  await call(s, 'lower rank', 'POST', a, { body: { status: 'scheduled' }, expect: 409, slug: 'illegal-transition',
    assert: (b) => ok(b.current?.status === 'running', 'want current.status running') });
  await call(s, 'new attempt', 'POST', a, { body: { status: 'running', attempt: 2 }, expect: 202 });
  await call(s, 'stale attempt', 'POST', a, { body: { status: 'completed', attempt: 1 }, expect: 409, slug: 'stale-attempt' });
  await call(s, 'no Content-Type is JSON', 'POST', a, { body: Buffer.from('{"status":"running","attempt":2}'), expect: 200 });
  await call(s, 'not JSON', 'POST', a, { body: 'nope', headers: { 'Content-Type': 'application/json' }, expect: 400, slug: 'invalid-json' });
  await call(s, 'bad node id', 'POST', `/runs/r1/nodes/${LONG_ID}/state`, { body: { status: 'running' }, expect: 400, slug: 'invalid-id' });
  await call(s, 'bad wait', 'POST', `${a}?wait=maybe`, { body: { status: 'running' }, expect: 400, slug: 'invalid-query' });
  await call(s, 'unknown member', 'POST', a, { body: { status: 'running', colour: 'red' }, expect: 422, slug: 'invalid-update' });
  await call(s, 'not JSON media type', 'POST', a, { body: 'status=running', headers: { 'Content-Type': 'text/plain' }, expect: 415, slug: 'unsupported-media-type' });

  // GET/HEAD of a node, durable first: a queued state's ETag changes at the commit.
  await call(s, 'durable duplicate', 'POST', `${a}?wait=true`, { body: { status: 'running', attempt: 2 }, expect: 200,
    assert: (b) => ok(b.durable === true, 'want durable:true') });
  const { res } = await call(s, 'node state', 'GET', a, { expect: 200,
    assert: (b, r) => ok(r.headers.etag === `"${b.seq}"`, `ETag ${r.headers.etag} is not the quoted seq ${b.seq} of a durable state`) });
  const etag = res?.headers.etag ?? '"0"';
  await call(s, 'not modified', 'GET', a, { headers: { 'If-None-Match': etag }, expect: 304 });
  await call(s, 'unknown node', 'GET', NO_NODE, { expect: 404, slug: 'not-found' });
  await call(s, 'bad run id', 'GET', `/runs/${LONG_ID}/nodes/a/state`, { expect: 400, slug: 'invalid-id' });
  await call(s, 'percent-encoded run id', 'GET', '/runs/r1%00/nodes/a/state', { expect: 400, slug: 'invalid-id' });
  await call(s, 'percent-encoded node id', 'POST', '/runs/r1/nodes/%61/state', { body: { status: 'running' }, expect: 400, slug: 'invalid-id' });
  await call(s, 'node state', 'HEAD', a, { expect: 200 });
  await call(s, 'not modified', 'HEAD', a, { headers: { 'If-None-Match': etag }, expect: 304 });
  await call(s, 'unknown node', 'HEAD', NO_NODE, { expect: 404 });
  await call(s, 'bad run id', 'HEAD', `/runs/${LONG_ID}/nodes/a/state`, { expect: 400 });

  // The nodes of a run.
  await call(s, 'list', 'GET', '/runs/r1/nodes', { expect: 200,
    assert: (b) => ok(b.nodes.map((n) => n.node_id).join() === 'a,b' && b.next === null, 'want nodes a,b and next null') });
  await call(s, 'filter', 'GET', '/runs/r1/nodes?status=scheduled,paused', { expect: 200,
    assert: (b) => ok(b.nodes.map((n) => n.node_id).join() === 'b', 'want node b only') });
  await call(s, 'page', 'GET', '/runs/r1/nodes?limit=1', { expect: 200,
    assert: (b) => ok(b.nodes.length === 1 && b.next === 'a', 'want one node and next "a"') });
  await call(s, 'next page', 'GET', '/runs/r1/nodes?limit=1&after=a', { expect: 200 });
  await call(s, 'limit 0', 'GET', '/runs/r1/nodes?limit=0', { expect: 400, slug: 'invalid-query' });
  await call(s, 'unknown status', 'GET', '/runs/r1/nodes?status=sleeping', { expect: 400, slug: 'invalid-query' });
  await call(s, 'encoded filter', 'GET', '/runs/r1/nodes?status=scheduled%2Cpaused&limit=%31', { expect: 200,
    assert: (b) => ok(b.nodes.map((n) => n.node_id).join() === 'b', 'want node b only, as for the plain filter') });
  await call(s, 'encoded NUL in a value', 'GET', '/runs/r1/nodes?after=a%00z', { expect: 400, slug: 'invalid-query' });
  await call(s, 'bad run id', 'GET', `/runs/${LONG_ID}/nodes`, { expect: 400, slug: 'invalid-id' });
  await call(s, 'unknown run', 'GET', '/runs/no-such-run/nodes', { expect: 404, slug: 'not-found' });
  await call(s, 'list', 'HEAD', '/runs/r1/nodes', { expect: 200 });
  await call(s, 'limit 0', 'HEAD', '/runs/r1/nodes?limit=0', { expect: 400 });
  await call(s, 'unknown run', 'HEAD', '/runs/no-such-run/nodes', { expect: 404 });

  // Run summary.
  const { res: sum } = await call(s, 'summary', 'GET', '/runs/r1', { expect: 200,
    assert: (b, r) => ok(b.nodes === 2 && b.counts.running === 1 && b.counts.scheduled === 1 &&
      r.headers.etag === `"${b.last_seq}"`, 'want 2 nodes: 1 running, 1 scheduled, ETag the quoted last_seq') });
  const runTag = sum?.headers.etag ?? '"0"';
  await call(s, 'not modified', 'GET', '/runs/r1', { headers: { 'If-None-Match': runTag }, expect: 304 });
  await call(s, 'not modified', 'HEAD', '/runs/r1', { headers: { 'If-None-Match': runTag }, expect: 304 });
  await call(s, 'bad run id', 'GET', `/runs/${LONG_ID}`, { expect: 400, slug: 'invalid-id' });
  await call(s, 'unknown run', 'GET', '/runs/no-such-run', { expect: 404, slug: 'not-found' });
  await call(s, 'summary', 'HEAD', '/runs/r1', { expect: 200 });
  await call(s, 'bad run id', 'HEAD', `/runs/${LONG_ID}`, { expect: 400 });
  await call(s, 'unknown run', 'HEAD', '/runs/no-such-run', { expect: 404 });

  // Deleting runs.
  await call(s, 'setup r2', 'POST', '/runs/r2/nodes/a/state', { body: { status: 'idle' }, expect: 202 });
  await call(s, 'setup r3', 'POST', '/runs/r3/nodes/a/state', { body: { status: 'idle' }, expect: 202 });
  await call(s, 'delete', 'DELETE', '/runs/r2', { expect: 202,
    assert: (b) => ok(b.deleted === 1 && b.durable === false, 'want deleted:1 durable:false') });
  await call(s, 'delete and wait', 'DELETE', '/runs/r3?wait=true', { expect: 200,
    assert: (b) => ok(b.durable === true, 'want durable:true') });
  await call(s, 'delete unknown', 'DELETE', '/runs/no-such-run', { expect: 404, slug: 'not-found' });
  await call(s, 'delete bad id', 'DELETE', `/runs/${LONG_ID}`, { expect: 400, slug: 'invalid-id' });
  await call(s, 'delete bad timeout', 'DELETE', '/runs/r1?wait=true&timeout=soon', { expect: 400, slug: 'invalid-query' });

  // Many updates in one request.
  const B = '/runs/rb/nodes';
  await call(s, 'batch queued', 'POST', B, { body: { updates: [{ node_id: 'a', status: 'scheduled' }, { node_id: 'a', status: 'running' }] }, expect: 202,
    assert: (b) => ok(b.accepted === 2 && b.results.map((r) => r.code).join() === '202,202' && b.durable === false, 'want two 202 items, durable:false') });
  await call(s, 'batch mixed, waited for', 'POST', `${B}?wait=true`, {
    body: { updates: [{ node_id: 'a', status: 'running' }, { node_id: 'a', status: 'scheduled' }, { node_id: 'a', status: 'running', attempt: 0 }, { node_id: 'c', status: 'idle' }] }, expect: 200,
    assert: (b) => ok(b.results.map((r) => r.code).join() === '200,409,422,202' && b.durable === true &&
      b.results[1].problem.current?.status === 'running', 'want 200,409,422,202 and durable:true') });
  await call(s, 'batch not JSON', 'POST', B, { body: '[', headers: { 'Content-Type': 'application/json' }, expect: 400, slug: 'invalid-json' });
  await call(s, 'batch bad run id', 'POST', `/runs/${LONG_ID}/nodes`, { body: { updates: [{ node_id: 'a', status: 'idle' }] }, expect: 400, slug: 'invalid-id' });
  await call(s, 'batch not JSON media type', 'POST', B, { body: 'updates=1', headers: { 'Content-Type': 'text/plain' }, expect: 415, slug: 'unsupported-media-type' });
  await call(s, 'batch empty', 'POST', B, { body: { updates: [] }, expect: 422, slug: 'invalid-update' });
  // Watching a run: a stream the run's delete ends, HEAD, bad input, long polls.
  await call(s, 'setup rw', 'POST', '/runs/rw/nodes/a/state', { body: { status: 'running' }, expect: 202 });
  const stream = call(s, 'event stream', 'GET', '/runs/rw/events?since=0', { expect: 200,
    assert: (b, r) => ok(/event: synced/.test(r.body) && /event: deleted/.test(r.body) && /event: node/.test(r.body),
      'want a node event, synced and deleted') });
  for (const until = Date.now() + 30000; Date.now() < until;) {
    const st = await send(s, 'GET', '/stats?format=json');
    if (JSON.parse(st.body.toString('utf8')).watchers >= 1) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  await call(s, 'end the stream', 'DELETE', '/runs/rw', { expect: 202 });
  await stream;
  await call(s, 'events', 'HEAD', '/runs/r1/events', { expect: 200 });
  await call(s, 'bad since', 'GET', '/runs/r1/events?since=x', { expect: 400, slug: 'invalid-query' });
  await call(s, 'bad since', 'HEAD', '/runs/r1/events?since=-1', { expect: 400 });
  await call(s, 'bad run id', 'GET', `/runs/${LONG_ID}/events`, { expect: 400, slug: 'invalid-id' });
  await call(s, 'unknown run', 'GET', '/runs/no-such-run/events', { expect: 404, slug: 'not-found' });
  await call(s, 'unknown run', 'HEAD', '/runs/no-such-run/events', { expect: 404 });
  const both = await call(s, 'nodes since', 'GET', '/runs/r1/nodes?since=0', { expect: 200,
    assert: (b) => ok(b.nodes.length === 2 && b.nodes[0].seq < b.nodes[1].seq, 'want both nodes in seq order') });
  const lastSeq = both.body?.nodes?.[1]?.seq ?? 0;
  await call(s, 'long poll times out', 'GET', `/runs/r1/nodes?since=${lastSeq}&wait=0.2`, { expect: 200,
    assert: (b) => ok(b.nodes.length === 0, 'want no nodes') });
  await call(s, 'bad poll wait', 'GET', '/runs/r1/nodes?since=0&wait=soon', { expect: 400, slug: 'invalid-query' });

  // Counters and probes.
  await call(s, 'stats text', 'GET', '/stats', { expect: 200 });
  await call(s, 'stats json', 'GET', '/stats?format=json', { expect: 200,
    assert: (b) => ok(b.last_seq >= 1, 'want last_seq >= 1') });
  await call(s, 'stats by Accept', 'GET', '/stats', { headers: { Accept: 'application/json' }, expect: 200,
    assert: (b) => ok(b !== undefined, 'want a JSON body') });
  await call(s, 'stats bad format', 'GET', '/stats?format=xml', { expect: 400, slug: 'invalid-query' });
  await call(s, 'stats', 'HEAD', '/stats', { expect: 200 });
  await call(s, 'stats bad format', 'HEAD', '/stats?format=xml', { expect: 400 });
  await call(s, 'metrics', 'GET', '/metrics', { expect: 200 });
  await call(s, 'metrics', 'HEAD', '/metrics', { expect: 200 });
  await call(s, 'alive', 'GET', '/healthz', { expect: 200 });
  await call(s, 'alive', 'HEAD', '/healthz', { expect: 200 });
  await call(s, 'ready', 'GET', '/readyz', { expect: 200 });
  await call(s, 'ready', 'HEAD', '/readyz', { expect: 200 });
  await call(s, 'backup', 'GET', '/backup', { expect: 200,
    assert: (b, r) => (r.body.subarray(0, 16).toString('latin1') === 'SQLite format 3\0' ? null : 'want an SQLite file') });
  await call(s, 'backup', 'HEAD', '/backup', { expect: 200 });

  // Every path, every method the spec does not give it: 405 with Allow.
  for (const template of Object.keys(contract.spec.paths)) {
    const declared = contract.declaredMethods(template);
    for (const m of PROBE_METHODS.filter((x) => !declared.includes(x)))
      await call(s, 'undeclared method', m, concrete(template, { node_id: 'a' }), { expect: 405, slug: 'method-not-allowed' });
  }
  await call(s, 'no route', 'GET', '/no/such/path', { expect: 404, slug: 'not-found' });
}

// Holds an exclusive SQLite lock on db (through the sqlite3 CLI) until
// release() is called, so the server's writer cannot commit meanwhile.
function holdLock(db) {
  const p = spawn('sqlite3', [db], { stdio: ['pipe', 'pipe', 'pipe'] });
  p.stdin.write("PRAGMA busy_timeout=10000;\nBEGIN EXCLUSIVE;\nSELECT 'locked';\n");
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('sqlite3 did not take the lock within 15 s')), 15000);
    p.on('error', (e) => { clearTimeout(timer); reject(e); });
    p.stdout.setEncoding('utf8');
    p.stdout.on('data', (d) => {
      if (!/locked/.test(d)) return;
      clearTimeout(timer);
      resolve({ release: () => new Promise((r) => { p.once('exit', r); p.stdin.end('COMMIT;\n'); }) });
    });
  });
}

// With --queue-capacity 1 and the database locked by another process, the
// writer cannot commit, so the queue stays full: writes get 503 and
// /readyz says not ready until the lock goes.
async function fullQueueServer(s) {
  await call(s, 'before the lock', 'POST', '/runs/q/nodes/a/state', { body: { status: 'running' }, expect: 202 });
  const lock = await holdLock(path.join(scratch, `${s.name}.db`));
  // The writer may hold one update in its failing batch and one in the
  // queue; a few more posts (bounded) must reach a 503.
  let refused = false;
  for (let i = 0; i < 10 && !refused; i++) {
    const { res } = await call(s, 'filling the queue', 'POST', `/runs/q/nodes/f${i}/state`, { body: { status: 'running' } });
    refused = res?.status === 503;
  }
  if (!refused) contract.fail('queue full scenario', 'no 503 after 10 posts with the database locked');
  await call(s, 'queue full', 'POST', '/runs/q/nodes/b/state', { body: { status: 'running' }, expect: 503, slug: 'queue-full' });
  await call(s, 'queue full', 'DELETE', '/runs/q', { expect: 503, slug: 'queue-full' });
  await call(s, 'queue full', 'POST', '/runs/q/nodes', { body: { updates: [{ node_id: 'b', status: 'running' }] }, expect: 503, slug: 'queue-full' });
  await call(s, 'not ready', 'GET', '/readyz', { expect: 503, slug: 'not-ready' });
  await call(s, 'not ready', 'HEAD', '/readyz', { expect: 503 });
  await lock.release();
  // The writer retries with a backoff of up to 1 s: wait (bounded) for ready.
  for (let i = 0; i < 100; i++) {
    const res = await send(s, 'GET', '/readyz', {});
    if (res.status === 200) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  // Drained: a durable write goes through once the writer commits again.
  await call(s, 'after the lock', 'POST', '/runs/q/nodes/c/state?wait=true&timeout=20', { body: { status: 'running' }, expect: 200 });
}

async function noWatchersServer(s) {
  const a = await call(s, 'setup', 'POST', '/runs/r1/nodes/a/state', { body: { status: 'running' }, expect: 202 });
  await call(s, 'too many watchers', 'GET', '/runs/r1/events', { expect: 503, slug: 'too-many-watchers' });
  await call(s, 'too many long polls', 'GET', `/runs/r1/nodes?since=${a.body?.seq ?? 1}&wait=5`, { expect: 503, slug: 'too-many-watchers' });
}

async function smallBodyServer(s) {
  const body = JSON.stringify({ status: 'running', last_error: 'e'.repeat(80) });
  await call(s, 'body too large', 'POST', '/runs/r1/nodes/a/state', { body, headers: { 'Content-Type': 'application/json' }, expect: 413, slug: 'body-too-large' });
  // A batch has its own, larger limit: 80 bytes pass it, 300 do not.
  const item = { node_id: 'a', status: 'running' };
  await call(s, 'batch above --max-body-bytes', 'POST', '/runs/r1/nodes', { body: { updates: [item, item] }, expect: 202 });
  await call(s, 'batch too many', 'POST', '/runs/r1/nodes', { body: { updates: [item, item, item] }, expect: 413, slug: 'too-many-updates' });
  await call(s, 'batch body too large', 'POST', '/runs/r1/nodes', { body: JSON.stringify({ updates: [{ ...item, last_error: 'e'.repeat(300) }] }),
    headers: { 'Content-Type': 'application/json' }, expect: 413, slug: 'body-too-large' });
}

// With --token: every operation but /healthz's answers 401 without it.
async function tokenServer(s) {
  for (const template of Object.keys(contract.spec.paths)) {
    for (const m of contract.declaredMethods(template)) {
      const url = concrete(template, { node_id: 'a' });
      const opts = m === 'POST' ? { body: { status: 'running' } } : {};
      if (template === '/healthz') {
        await call(s, 'healthz needs no token', m, url, { ...opts, expect: 200 });
        continue;
      }
      await call(s, 'no token', m, url, { ...opts, expect: 401,
        assert: m === 'HEAD' ? undefined : (b) => (b.type === 'urn:nodestate:problem:unauthorized' ? null : `want unauthorized, got ${b.type}`) });
    }
  }
  await call(s, 'wrong token', 'GET', '/runs/r1', { headers: { Authorization: 'Bearer not-the-token' }, expect: 401, slug: 'unauthorized',
    assert: (b, r) => (/error="invalid_token"/.test(r.headers['www-authenticate']) ? null : 'want error="invalid_token" in WWW-Authenticate') });
  await call(s, 'right token', 'GET', '/stats?format=json', { headers: { Authorization: `Bearer ${TOKEN}` }, expect: 200 });
}

/* ---- main ---- */

async function scenario(name, args, fn, allowCommitFailures = false) {
  let srv;
  try {
    srv = await startServer(name, args);
  } catch (e) {
    contract.fail(`server ${name} (${args.join(' ')})`, e.message);
    return;
  }
  try {
    await fn(srv);
  } catch (e) {
    contract.fail(`scenario ${name}`, e.stack);
  }
  await stopServer(srv);
  if (srv.exited.code !== 0) contract.fail(`server ${name}`, `exited ${srv.exited.code ?? srv.exited.signal} on SIGTERM:\n${srv.log()}`);
  // Commit failures are expected only where a scenario locks the database.
  const errors = srv.log().split('\n').filter((l) => /level=error/.test(l) &&
    !(allowCommitFailures && /msg=commit-failed/.test(l)));
  if (errors.length) contract.fail(`server ${name}`, `logged errors:\n${errors.join('\n')}`);
}

async function main() {
  const started = Date.now();
  await Promise.all([
    scenario('main', [], mainServer),
    scenario('queue-full', ['--queue-capacity', '1', '--batch-interval', '30'], fullQueueServer, true),
    scenario('small-body', ['--max-body-bytes', '64', '--max-batch-body-bytes', '256', '--max-batch-updates', '2'], smallBodyServer),
    scenario('no-watchers', ['--max-watchers', '0'], noWatchersServer),
    scenario('token', ['--token', TOKEN], tokenServer),
  ]);
  const { listed, covered } = contract.checkCoverage(NOT_TRIGGERABLE);
  for (const f of contract.failures) console.log(`FAIL ${f}`);
  for (const a of NOT_TRIGGERABLE) console.log(`not triggerable: ${a.status} ${a.template ?? '(any path)'}: ${a.reason}`);
  console.log(`coverage: ${covered} of ${listed} listed (method, path, status, media type) exercised; ` +
    `${(Date.now() - started) / 1000} s`);
  console.log(`${contract.passed} passed, ${contract.failures.length} failed`);
  return contract.failures.length === 0;
}

let ok = false;
try {
  ok = await main();
} catch (e) {
  console.log(`FAIL contract test crashed: ${e.stack}`);
  console.log(`${contract.passed} passed, ${contract.failures.length + 1} failed`);
} finally {
  for (const s of servers) if (!s.exited) s.proc.kill('SIGKILL');
  rmSync(scratch, { recursive: true, force: true });
}
process.exit(ok ? 0 : 1);
