// Watches a live nodestate (NODESTATE_URL) with a real SSE client, the
// eventsource package: 8 concurrent writers walk 1,000 nodes through three
// statuses while EventSource clients watch the run. Every client must get
// every node's final state, ids rising (seq order), data equal to the node
// at that id; one client drops its connection in the middle of the burst
// and reconnects with Last-Event-ID; a ?durable=true client must only ever
// see durable states; deleting the run ends every stream with
// "event: deleted"; a client that resumes after missing a delete (the run
// written anew meanwhile) is told "deleted" first, and the EventSource's own
// reconnect then gets the new run. Prints "N passed, M failed"; exits
// non-zero on failure.
import { EventSource } from 'eventsource';

const base = process.env.NODESTATE_URL;
if (!base) {
  console.error('sse: NODESTATE_URL is not set');
  process.exit(2);
}
const NODES = 1000;
const WRITERS = 8;
const BOUND_MS = 60000; // a bound, not an expectation
let passed = 0;
const failures = [];
const check = (cond, what) => (cond ? passed++ : failures.push(what));

async function post(run, node, body) {
  const r = await fetch(`${base}/runs/${run}/nodes/${node}/state`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  });
  await r.arrayBuffer();
  return r.status;
}

// A watcher of run: one EventSource, or a chain of them when reconnectAfter drops the first.
function watch(run, { durable = false, reconnectAfter = 0 } = {}) {
  const w = { seq: new Map(), status: new Map(), last: 0, events: 0, outOfOrder: 0, mismatched: 0,
    notDurable: 0, synced: 0, deleted: 0, connections: 0, errors: 0 };
  const url = `${base}/runs/${run}/events${durable ? '?durable=true' : ''}`;
  let onDeleted;
  w.deletedP = new Promise((r) => { onDeleted = r; });
  let onSynced;
  w.syncedP = new Promise((r) => { onSynced = r; });
  const open = (lastId) => {
    w.connections++;
    let mine = 0;
    const opts = lastId ? {
      fetch: (u, init) => fetch(u, { ...init, headers: { ...init.headers, 'Last-Event-ID': String(lastId) } }),
    } : {};
    const es = new EventSource(url, opts);
    w.es = es;
    es.addEventListener('synced', () => { w.synced++; onSynced(); });
    es.addEventListener('node', (e) => {
      if (w.es !== es) return; // closed: events of its last chunk may still come
      const id = Number(e.lastEventId);
      let node;
      try { node = JSON.parse(e.data); } catch { w.mismatched++; return; }
      if (node.seq !== id || node.run_id !== run) w.mismatched++;
      if (id <= w.last) w.outOfOrder++;
      if (durable && node.durable !== true) w.notDurable++;
      w.last = id;
      w.events++;
      if (!w.seq.has(node.node_id) || w.seq.get(node.node_id) < node.seq) {
        w.seq.set(node.node_id, node.seq);
        w.status.set(node.node_id, node.status);
      }
      if (reconnectAfter && ++mine === reconnectAfter && w.connections === 1) {
        es.close();
        open(w.last);
      }
    });
    es.addEventListener('deleted', () => { w.deleted++; es.close(); onDeleted(); });
    es.addEventListener('error', () => { w.errors++; });
  };
  open(0);
  return w;
}

const within = (p, what) => Promise.race([p, new Promise((_, rej) => setTimeout(() => rej(new Error(`${what}: not within ${BOUND_MS} ms`)), BOUND_MS))]);

async function waitFor(cond, what) {
  for (const until = Date.now() + BOUND_MS; Date.now() < until;) {
    if (cond()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  failures.push(`${what}: not within ${BOUND_MS} ms`);
  return false;
}

// A client away while its run is deleted and written anew: resumed from its
// last id it hears "deleted" (the delete's id), and EventSource reconnects on
// its own with that id, so it then gets the new run only.
async function missedDelete() {
  const run = 'es-again';
  const first = await (await fetch(`${base}/runs/${run}/nodes/old/state?wait=true`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"status":"idle"}',
  })).json();
  const del = await (await fetch(`${base}/runs/${run}`, { method: 'DELETE' })).json();
  check(await post(run, 'new', { status: 'idle' }) === 202, 'missed delete: post new');
  const seen = { deleted: [], nodes: [], synced: 0 };
  let done;
  const doneP = new Promise((r) => { done = r; });
  let connections = 0;
  const es = new EventSource(`${base}/runs/${run}/events`, {
    fetch: (u, init) => {
      connections++;
      // The first connection resumes from the old node; EventSource sets the header itself after that.
      const headers = connections === 1 ? { ...init.headers, 'Last-Event-ID': String(first.seq) } : init.headers;
      return fetch(u, { ...init, headers });
    },
  });
  es.addEventListener('deleted', (e) => { seen.deleted.push(Number(e.lastEventId)); });
  es.addEventListener('node', (e) => { seen.nodes.push(JSON.parse(e.data).node_id); });
  es.addEventListener('synced', () => { seen.synced++; done(); });
  try {
    await within(doneP, 'missed delete: synced after the reconnect');
  } finally {
    es.close();
  }
  check(seen.deleted.length === 1 && seen.deleted[0] === del.seq,
    `missed delete: want one deleted event with id ${del.seq}, got [${seen.deleted}]`);
  check(seen.nodes.join() === 'new', `missed delete: want only the new node, got [${seen.nodes}]`);
  check(connections === 2, `missed delete: want 2 connections, got ${connections}`);
}

async function main() {
  const run = 'es-run';
  check(await post(run, 'n0000', { status: 'idle' }) === 202, 'setup post');
  const plain = watch(run);
  const resumed = watch(run, { reconnectAfter: 300 });
  const durable = watch(`${run}`, { durable: true });
  await within(Promise.all([plain.syncedP, resumed.syncedP, durable.syncedP]), 'synced');

  const steps = [{ status: 'scheduled' }, { status: 'running' }, { status: 'completed', outputs: { ok: true } }];
  let refused = 0;
  await Promise.all([...Array(WRITERS).keys()].map(async (w) => {
    for (const body of steps)
      for (let i = w; i < NODES; i += WRITERS)
        if (await post(run, `n${String(i).padStart(4, '0')}`, body) !== 202) refused++;
  }));
  check(refused === 0, `${refused} posts not answered 202`);

  const list = await (await fetch(`${base}/runs/${run}/nodes?limit=10000`)).json();
  const want = new Map(list.nodes.map((n) => [n.node_id, n.seq]));
  check(want.size === NODES, `want ${NODES} nodes listed, got ${want.size}`);
  const complete = (w) => [...want].every(([node, seq]) => w.seq.get(node) === seq);
  for (const [name, w] of [['plain', plain], ['reconnected', resumed], ['durable', durable]]) {
    await waitFor(() => complete(w), `${name}: every node's final state`);
    check(complete(w), `${name}: a node's final state is missing`);
    check([...w.status.values()].every((s) => s === 'completed') && w.status.size === NODES, `${name}: not every node ends completed`);
    check(w.outOfOrder === 0, `${name}: ${w.outOfOrder} ids out of seq order`);
    check(w.mismatched === 0, `${name}: ${w.mismatched} events whose data is not the node at that id`);
  }
  check(resumed.connections === 2, `reconnected: want 2 connections, got ${resumed.connections}`);
  check(durable.notDurable === 0, `durable: ${durable.notDurable} events not durable`);

  const del = await fetch(`${base}/runs/${run}`, { method: 'DELETE' });
  check(del.status === 202, `DELETE: ${del.status}`);
  await within(Promise.all([plain.deletedP, resumed.deletedP, durable.deletedP]), 'deleted on every stream');
  check(plain.deleted === 1 && resumed.deleted === 1 && durable.deleted === 1, 'every stream gets one deleted event');
}

try {
  await main();
  await missedDelete();
} catch (e) {
  failures.push(`crashed: ${e.stack}`);
}
for (const f of failures) console.log(`FAIL ${f}`);
console.log(`${passed} passed, ${failures.length} failed`);
process.exit(failures.length ? 1 : 0);
