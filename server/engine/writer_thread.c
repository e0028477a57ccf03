#include "writer_thread.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "logfmt.h"
#include "retention.h"

static void deadline_to_timespec(int64_t ns, struct timespec *ts)
{
    ts->tv_sec = (time_t)(ns / 1000000000ll);
    ts->tv_nsec = (long)(ns % 1000000000ll);
}

/*
 * Whether a commit failing since failing_since should be given up for the
 * sidecar now: only once the shutdown budget runs (drain_started_ns), when
 * the failures have lasted SPILL_STALL_NS (the flush makes no progress) or
 * the budget is nearly spent. Lock held.
 */
static bool flush_stalled(const engine *e, int64_t failing_since, int64_t now)
{
    lockcheck_assert_held(&e->lock);
    return e->drain_started_ns &&
           (now >= e->give_up_ns || now - failing_since >= SPILL_STALL_NS);
}

/*
 * Waits out one retry backoff of a failing commit on the writer's condvar,
 * so engine_drain and engine_close cut it short. Returns false once the
 * flush is stalled (flush_stalled: the caller gives up and spills). Called
 * without the lock.
 */
static bool backoff_wait(engine *e, int64_t backoff, int64_t failing_since)
{
    lockcheck_assert_not_held(&e->lock);
    int64_t until = model_mono_ns() + backoff;
    bool go_on = true;
    lockcheck_lock(&e->lock);
    for (;;) {
        int64_t now = model_mono_ns();
        if (flush_stalled(e, failing_since, now)) {
            go_on = false;
            break;
        }
        int64_t end = until;
        if (e->drain_started_ns) {
            if (e->give_up_ns < end)
                end = e->give_up_ns;
            if (failing_since + SPILL_STALL_NS < end)
                end = failing_since + SPILL_STALL_NS;
        }
        if (now >= end)
            break;
        struct timespec ts;
        deadline_to_timespec(end, &ts);
        lockcheck_timedwait(&e->wake, &e->lock, &ts);
    }
    lockcheck_unlock(&e->lock);
    return go_on;
}

/*
 * Keeps a row the store left out of the batch (isolated, or superseded in
 * a shared store), so that once the batch is released its run goes stale
 * and its seqs are reported as refused. Out of memory: isolated_lost says
 * some were not kept. Writer thread.
 */
static void remember_refused(engine *e, const ns_row *row, engine_refusal why)
{
    if (e->n_isolated == e->cap_isolated) {
        size_t cap = e->cap_isolated ? e->cap_isolated * 2 : 16;
        refused_row *grown = realloc(e->isolated, cap * sizeof *grown);
        if (!grown) {
            e->isolated_lost = true;
            return;
        }
        e->isolated = grown;
        e->cap_isolated = cap;
    }
    e->isolated[e->n_isolated++] = (refused_row){ row, why };
}

/*
 * store_batch.on_isolated (writer thread): a row SQLite will never take.
 * Counted and logged now; remembered so that, once its batch is released,
 * the node's run is dropped from the cache (disk is its truth again) and its
 * seqs are reported as refused instead of durable (mark_refused).
 */
static void on_isolated(void *ctx, const ns_row *row, const char *why)
{
    engine *e = ctx;
    char quoted[512];
    logfmt_quote(quoted, sizeof quoted, why);
    atomic_fetch_add_explicit(&e->stats.rows_isolated, 1, memory_order_relaxed);
    engine_log(e, NS_LOG_ERROR, "row-isolated",
          "run_id=%s node_id=%s seq=%lld error=%s", row->run_id, row->node_id,
          (long long)row->seq, quoted);
    remember_refused(e, row, ENGINE_REFUSED_ISOLATED);
}

/*
 * store_batch.on_superseded (writer thread): a shared store refused the
 * row because the stored state of its node is newer (another instance
 * wrote it since this one read it). Handled like an isolated row: once the
 * batch is released the run goes stale, so the next request reads the
 * store's state again, and the update's seqs are reported as refused.
 */
static void on_superseded(void *ctx, const ns_row *row)
{
    engine *e = ctx;
    atomic_fetch_add_explicit(&e->stats.store_conflicts, 1, memory_order_relaxed);
    engine_log(e, NS_LOG_WARN, "row-superseded",
          "run_id=%s node_id=%s seq=%lld detail=\"the stored state is newer\"",
          row->run_id, row->node_id, (long long)row->seq);
    remember_refused(e, row, ENGINE_REFUSED_SUPERSEDED);
}

/*
 * store_batch.on_expire_kept (writer thread, without the lock): a shared
 * store kept a run retention had queued for deletion (delete seq `seq`),
 * since another instance wrote it in the meantime. That commit's
 * notification makes this instance read the run again; the delete its
 * cached run remembers (engine_deleted_seq) never happened, so it goes.
 */
static void on_expire_kept(void *ctx, const char *run_id, int64_t seq)
{
    engine *e = ctx;
    lockcheck_lock(&e->lock);
    cache_run *run = cache_run_find(e->cache, run_id);
    if (run && seq && run->deleted_seq == seq)
        run->deleted_seq = 0;
    lockcheck_unlock(&e->lock);
    engine_log(e, NS_LOG_INFO, "expire-kept",
          "run_id=%s detail=\"written meanwhile, or deleted already: not expired\"", run_id);
}

/*
 * After a commit (the batch's ops written, its waiters not yet resumed): a
 * refusal is settled once every op queued before it is written, since a
 * batch whose items straddle commits asks only when its last item is; it is
 * forgotten REFUSED_KEEP_NS after that, by when its waiters have asked.
 * Refusals come in seq order, so both go from the front. Lock held.
 */
static void forget_old_refusals(engine *e, int64_t now)
{
    lockcheck_assert_held(&e->lock);
    const ns_op *oldest = queue_peek(e->queue);
    size_t n = atomic_load_explicit(&e->n_refused, memory_order_relaxed), old = 0;
    while (e->n_refused_settled < n &&
           (!oldest || oldest->enqueued_ns > e->refused[e->n_refused_settled].at_ns))
        e->refused[e->n_refused_settled++].settled_ns = now;
    while (old < e->n_refused_settled && now - e->refused[old].settled_ns > REFUSED_KEEP_NS)
        old++;
    if (old == 0)
        return;
    memmove(e->refused, e->refused + old, (n - old) * sizeof *e->refused);
    e->n_refused_settled -= old;
    atomic_store(&e->n_refused, n - old);
}

/* Orders refused rows by (run_id, node_id), for bsearch from each op. */
static int refused_by_key(const void *a, const void *b)
{
    const ns_row *x = ((const refused_row *)a)->row, *y = ((const refused_row *)b)->row;
    int c = strcmp(x->run_id, y->run_id);
    return c ? c : strcmp(x->node_id, y->node_id);
}

/*
 * Remembers a seq whose update will never be on disk, and why, after the
 * `*added` ones this commit remembered so far (mark_refused counts them at
 * the end; they come in seq order, above every earlier commit's). Out of
 * memory it is logged: a waiter on it would be told "durable". Lock held.
 */
static void refuse(engine *e, int64_t seq, engine_refusal why, int64_t now, size_t *added)
{
    lockcheck_assert_held(&e->lock);
    size_t n = atomic_load_explicit(&e->n_refused, memory_order_relaxed) + *added;
    if (n == e->cap_refused) {
        size_t cap = e->cap_refused ? e->cap_refused * 2 : 64;
        refused_seq *grown = realloc(e->refused, cap * sizeof *grown);
        if (!grown) {
            engine_log(e, NS_LOG_ERROR, "refusal-not-remembered",
                       "seq=%lld error=\"out of memory\"", (long long)seq);
            return;
        }
        e->refused = grown;
        e->cap_refused = cap;
    }
    e->refused[n] = (refused_seq){ .seq = seq, .at_ns = now, .why = why };
    (*added)++;
}

/*
 * After a commit that isolated rows: every op of ops[0..n) for an isolated
 * node (the newest, and the older ones coalesced into it) is refused, and
 * its run goes stale; with forget, the node's refused row leaves the cache
 * (not while spilling: durable_seq no longer moves, and reads of the run
 * would take the node for evicted after it forever). Lock held, before
 * release_ops. Returns how many ops were refused.
 */
static size_t mark_refused(engine *e, const ns_op *ops, size_t n, bool forget)
{
    lockcheck_assert_held(&e->lock);
    /* Most commits refuse nothing and remember nothing: no clock for them. */
    bool any = e->n_isolated > 0 || atomic_load_explicit(&e->n_refused, memory_order_relaxed) > 0;
    int64_t now = any ? model_mono_ns() : 0;
    size_t added = 0, refused = 0;
    if (any)
        forget_old_refusals(e, now);
    if (e->isolated_lost) {
        /* Which rows went is not known: let every run of the batch reload from disk. */
        for (size_t i = 0; i < n; i++)
            ops[i].run->stale = true;
        e->isolated_lost = false;
    }
    /* Sorted by key, so each op finds its node's refusal (if any) in O(log) even in bulk. */
    if (e->n_isolated > 1)
        qsort(e->isolated, e->n_isolated, sizeof *e->isolated, refused_by_key);
    for (size_t i = 0; i < n && e->n_isolated > 0; i++) {
        const ns_row *r = ops[i].row;
        if (!r)
            continue;
        refused_row key = { .row = r };
        const refused_row *bad = bsearch(&key, e->isolated, e->n_isolated, sizeof *e->isolated,
                                         refused_by_key);
        if (!bad)
            continue;
        ops[i].run->stale = true;
        refuse(e, ops[i].seq, bad->why, now, &added);
        refused++;
        /*
         * Its run may stay (other writes of it are queued): the node alone
         * goes, so that nothing is judged against a row the store does not
         * have (unless a newer one is queued).
         */
        if (r == bad->row && forget)
            cache_node_forget(e->cache, ops[i].run, r);
    }
    /* Published at once: the ops came in seq order, so the array stays sorted. */
    if (added)
        atomic_store(&e->n_refused, atomic_load_explicit(&e->n_refused, memory_order_relaxed) +
                                        added);
    e->n_isolated = 0;
    return refused;
}

/* The sidecar's path, quoted for a log line. */
const char *writer_thread_spill_qpath(engine *e, char *out, size_t outlen)
{
    return logfmt_quote(out, outlen, store_spill_file(e->store));
}

/*
 * From now on the writer sends everything to the sidecar, to the end: an
 * op committed to the database after an older one was spilled would be
 * overwritten by it at replay (a spilled delete has no seq to compare).
 * Writer thread, lock held or not.
 */
static void spill_start(engine *e, const char *reason, size_t updates)
{
    char qpath[4300];
    e->spilling = true;
    engine_log(e, NS_LOG_WARN, "spill-started", "reason=%s updates=%zu path=%s", reason,
          updates, writer_thread_spill_qpath(e, qpath, sizeof qpath));
}

/*
 * Writes ops[0..n) in one transaction, retrying with capped backoff until it
 * commits. Only during shutdown, once the flush is stalled (flush_stalled),
 * does it give up: it starts the spill (spill_start) and returns -1. Called
 * without the lock.
 */
static int commit_ops(engine *e, const ns_op *ops, size_t n)
{
    lockcheck_assert_not_held(&e->lock);
    writer_plan plan;
    int64_t backoff = BACKOFF_FIRST_NS;
    bool planned = false;
    int64_t t0, failing_since = 0;
    for (;;) {
        if (!planned) {
            planned = writer_plan_build(ops, n, &plan) == 0;
            plan.batch.on_isolated = on_isolated;
            plan.batch.on_superseded = on_superseded;
            plan.batch.isolated_ctx = e;
            /* Instances sharing the store drop what they cache of these runs. */
            plan.batch.notify_id = e->listener ? e->instance_id : NULL;
            plan.batch.on_expire_kept = on_expire_kept;
        }
        if (planned && plan.batch.n_deletes && e->cfg.retention > 0) {
            /* Judged at this commit, on the clock retention's sweep uses. */
            int64_t now_ms = e->cfg.clock_ms ? e->cfg.clock_ms(e->cfg.clock_ctx) : model_now_ms();
            int64_t cutoff = now_ms - (int64_t)(e->cfg.retention * 1000.0);
            if (plan.batch.expiring)
                plan.batch.expire_cutoff_ms = cutoff;
            /* Delete records live as long as the runs retention keeps (store.h run_deletes). */
            plan.batch.forget_deletes_before_ms = cutoff;
        }
        t0 = model_mono_ns();
        if (planned && store_write(e->store, &plan.batch) == 0)
            break;
        if (!failing_since)
            failing_since = t0;
        atomic_fetch_add_explicit(&e->stats.errors, 1, memory_order_relaxed);
        atomic_store(&e->store_failing, true);
        char why[512];
        logfmt_quote(why, sizeof why, planned ? store_errmsg(e->store) : "out of memory");
        engine_log(e, NS_LOG_ERROR, "commit-failed",
              "updates=%zu error=%s retry_in_ms=%lld", n, why,
              (long long)(backoff / 1000000));
        if (!backoff_wait(e, backoff, failing_since)) {
            if (planned)
                writer_plan_free(&plan);
            spill_start(e, "commits-failing", n);
            return -1;
        }
        backoff = backoff * 2 > BACKOFF_CAP_NS ? BACKOFF_CAP_NS : backoff * 2;
    }
    int64_t done = model_mono_ns();
    atomic_store(&e->store_failing, false);
    ns_stats *s = &e->stats;
    atomic_store_explicit(&s->wal_frames, (uint64_t)store_wal_frames(e->store),
                          memory_order_relaxed);
    atomic_fetch_add_explicit(&s->batches_written, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->rows_written,
                              plan.batch.n_rows - plan.batch.n_isolated - plan.batch.n_superseded,
                              memory_order_relaxed);
    /* Every accepted delete, even one its batch merged with another of the same run. */
    atomic_fetch_add_explicit(&s->runs_deleted, plan.run_deletes, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->runs_expired, plan.run_expires - plan.batch.n_expire_kept,
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&s->updates_coalesced, plan.coalesced, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->updates_processed, n, memory_order_relaxed);
    stats_observe(&s->commit_seconds, (double)(done - t0) / 1e9);
    stats_observe(&s->batch_updates, (double)n);
    ns_hist_batch waits = { { 0 }, 0, 0 };
    for (size_t i = 0; i < n; i++)
        stats_batch_observe(&s->enqueue_to_commit_seconds, &waits,
                            (double)(done - ops[i].enqueued_ns) / 1e9);
    stats_batch_add(&s->enqueue_to_commit_seconds, &waits);
    writer_plan_free(&plan);
    return 0;
}

/* Sleeps until min(now + ns, end), on a clock nothing needs to wake. */
static void nap_until(int64_t ns, int64_t end)
{
    int64_t until = model_mono_ns() + ns;
    if (until > end)
        until = end;
    struct timespec ts;
    deadline_to_timespec(until, &ts);
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

/*
 * Appends ops[0..n) (oldest first) to the sidecar in pieces of at most
 * SPILL_PIECE_BYTES, each its own committed transaction, so a SIGKILL in
 * the middle loses only the piece being written. A failed piece is retried
 * with backoff until end_ns, and no piece is begun that would, at the pace
 * of the last one, end after end_ns. Returns how many ops, counted from the
 * first, are in the sidecar: n, or fewer when end_ns came first. Writer
 * thread, without the lock.
 */
static size_t spill_ops(engine *e, const ns_op *ops, size_t n, int64_t end_ns)
{
    lockcheck_assert_not_held(&e->lock);
    size_t done = 0;
    int64_t backoff = BACKOFF_FIRST_NS;
    while (done < n && model_mono_ns() + e->spill_piece_ns < end_ns) {
        int64_t t0 = model_mono_ns();
        size_t k = 1, bytes = ops[done].bytes;
        while (done + k < n && bytes + ops[done + k].bytes <= SPILL_PIECE_BYTES)
            bytes += ops[done + k++].bytes;
        char err[512] = "out of memory", why[600];
        int rc = -1;
        writer_plan plan;
        if (!e->sidecar)
            e->sidecar = store_spill_open_file(store_spill_file(e->store), err, sizeof err);
        if (e->sidecar && writer_plan_build(ops + done, k, &plan) == 0) {
            plan.batch.on_isolated = on_isolated;
            plan.batch.isolated_ctx = e;
            /* Instances sharing the store drop what they cache of these runs. */
            plan.batch.notify_id = e->listener ? e->instance_id : NULL;
            rc = store_spill_append(e->sidecar, &plan.batch, err, sizeof err);
            if (rc == 0) {
                e->spill_pieces++;
                engine_log(e, NS_LOG_DEBUG, "spill-piece",
                      "piece=%zu updates=%zu rows=%zu deletes=%zu last_seq=%lld",
                      e->spill_pieces, k, plan.batch.n_rows - plan.batch.n_isolated,
                      plan.batch.n_deletes, (long long)plan.batch.last_seq);
            }
            writer_plan_free(&plan);
        }
        if (rc == 0) {
            done += k;
            backoff = BACKOFF_FIRST_NS;
            e->spill_piece_ns = model_mono_ns() - t0;
            continue;
        }
        engine_log(e, NS_LOG_ERROR, "spill-failed", "updates=%zu error=%s retry_in_ms=%lld", k,
              logfmt_quote(why, sizeof why, err), (long long)(backoff / 1000000));
        /* Opened afresh on the next try, in case the handle is what is broken. */
        store_spill_close(e->sidecar);
        e->sidecar = NULL;
        nap_until(backoff, end_ns);
        backoff = backoff * 2 > BACKOFF_CAP_NS ? BACKOFF_CAP_NS : backoff * 2;
    }
    return done;
}

/* Drops what the queue held for ops[0..n) once they are written (or given up). Lock held. */
static void release_ops(engine *e, ns_op *ops, size_t n)
{
    lockcheck_assert_held(&e->lock);
    for (size_t i = 0; i < n; i++) {
        if (cache_unpin(e->cache, ops[i].run))
            engine_run_drop_if_idle(e, ops[i].run);
        model_row_unref(ops[i].row);
        free(ops[i].delete_run);
        e->queue_bytes -= ops[i].bytes;
    }
    atomic_store_explicit(&e->stats.queue_bytes, e->queue_bytes, memory_order_relaxed);
    if (n)
        atomic_store(&e->bytes_full, false);
}

/*
 * Gives up on everything still queued: past the end of the spill (or when
 * the writer is gone), it can go nowhere. Counted in unflushed, which
 * engine_close reports. Lock held.
 */
void writer_thread_drop_queue(engine *e)
{
    lockcheck_assert_held(&e->lock);
    size_t n;
    while ((n = queue_pop(e->queue, e->batch, e->cfg.batch_size)) > 0) {
        e->unflushed += n;
        release_ops(e, e->batch, n);
    }
    atomic_store_explicit(&e->stats.queue_depth, 0, memory_order_relaxed);
}

/*
 * Whether the writer should commit now rather than wait for more. When it
 * should not, *until is when it should at the latest (batch_interval after
 * the oldest op, or group_commit_delay after a waiter asked). A waiter whose
 * previous commit carried one update at most has no one to wait for (a lone
 * client posting one update at a time): its commit is due at once. Lock held.
 */
static bool batch_due(engine *e, int64_t now, int64_t *until)
{
    lockcheck_assert_held(&e->lock);
    const ns_op *oldest = queue_peek(e->queue);
    if (!oldest)
        return false;
    size_t len = queue_len(e->queue);
    if (state_of(e) >= ENGINE_CLOSING || len >= e->cfg.batch_size || len == queue_capacity(e->queue) ||
        engine_queue_bytes_high(e))
        return true;
    *until = oldest->enqueued_ns + (int64_t)(e->cfg.batch_interval * 1e9);
    if (oldest->seq <= e->flush_until) {
        /* Draining: no reason left to gather more. */
        if (state_of(e) >= ENGINE_DRAINING)
            return true;
        int64_t group = e->flush_asked_ns;
        if (e->last_batch_ops > 1)
            group += (int64_t)(e->cfg.group_commit_delay * 1e9);
        if (group < *until)
            *until = group;
    }
    return now >= *until;
}

/* After a commit of e->batch[0..n): counters, cache, waiters. Lock held (dropped for the callback). */
static void committed(engine *e, size_t n)
{
    lockcheck_assert_held(&e->lock);
    int64_t durable = e->batch[n - 1].seq;
    mark_refused(e, e->batch, n, true);
    /* On disk now: their nodes may be evicted (unless written again since). */
    for (size_t i = 0; i < n; i++)
        if (e->batch[i].row)
            cache_node_settle(e->cache, e->batch[i].run, e->batch[i].row);
    release_ops(e, e->batch, n);
    engine_evict(e, NULL); /* nodes just written may go now */
    atomic_store(&e->stats.durable_seq, durable);
    void (*fn)(void *, int64_t) = e->on_durable;
    void *ctx = e->on_durable_ctx;
    if (fn) {
        /* Called unlocked; engine_on_durable waits for it to return before swapping. */
        e->in_callback = true;
        lockcheck_unlock(&e->lock);
        fn(ctx, durable);
        lockcheck_lock(&e->lock);
        e->in_callback = false;
        pthread_cond_broadcast(&e->callback_done);
    }
}

/*
 * After e->batch[0..n) went to the sidecar, of which the first `spilled`
 * made it. The ops of rows it isolated are refused as a commit's are
 * (logged, counted in rows_isolated, answered to a waiter): neither spilled
 * nor unflushed. Returns false when some did not go (the spill is out of
 * time): the rest of the queue is dropped, counted in unflushed. Lock held.
 */
static bool spilled_ops(engine *e, size_t n, size_t spilled)
{
    lockcheck_assert_held(&e->lock);
    size_t isolated = mark_refused(e, e->batch, n, false);
    e->spilled += spilled - (isolated < spilled ? isolated : spilled);
    e->unflushed += n - spilled;
    release_ops(e, e->batch, n);
    if (spilled == n)
        return true;
    writer_thread_drop_queue(e);
    return false;
}

/*
 * Idle: whether a write could begin now. A database another process keeps
 * locked would otherwise show only when a write fails, and /readyz would say
 * ready meanwhile. Lock held; dropped while the store is tried (this thread
 * is the write connection's only user).
 */
static void probe_idle(engine *e)
{
    lockcheck_unlock(&e->lock);
    int rc = store_probe(e->store);
    lockcheck_lock(&e->lock);
    /* Twice in a row: one probe meeting another process's write is no lock kept. */
    e->probes_failed = rc != 0 ? e->probes_failed + 1 : 0;
    if (rc != 0 && e->probes_failed < PROBE_FAILURES)
        return;
    bool was = atomic_exchange(&e->store_failing, rc != 0);
    if (rc != 0 && !was)
        engine_log(e, NS_LOG_WARN, "store-unwritable",
                   "reason=%s", rc > 0 ? "locked-by-another-process" : "error");
    else if (rc == 0 && was)
        engine_log(e, NS_LOG_INFO, "store-writable", "%s", "");
}

/*
 * What engine_evict left over the bounds (evict_more), a step per hold of
 * the lock, so that the cache is back within them whether or not more
 * requests come. Lock held, dropped between steps.
 */
static void evict_rest(engine *e)
{
    while (e->evict_more) {
        lockcheck_unlock(&e->lock);
        lockcheck_lock(&e->lock);
        engine_evict(e, NULL);
    }
}

void *writer_thread_main(void *arg)
{
    engine *e = arg;
    lockcheck_lock(&e->lock);
    for (;;) {
        /* Between batches, also under a steady load that leaves no idle wait. */
        evict_rest(e);
        retention_run(e);
        int64_t probe_at = model_mono_ns() + PROBE_IDLE_NS;
        while (state_of(e) < ENGINE_CLOSING && queue_len(e->queue) == 0) {
            if (e->evict_more) {
                evict_rest(e);
                continue;
            }
            if (retention_run(e))
                continue;
            if (model_mono_ns() >= probe_at) {
                probe_idle(e);
                probe_at = model_mono_ns() + PROBE_IDLE_NS;
                continue;
            }
            int64_t due = retention_due_ns(e);
            struct timespec ts;
            deadline_to_timespec(due < probe_at ? due : probe_at, &ts);
            lockcheck_timedwait(&e->wake, &e->lock, &ts);
        }
        if (queue_len(e->queue) == 0)
            break; /* closing and drained */
        int64_t deadline = 0;
        while (!batch_due(e, model_mono_ns(), &deadline)) {
            if (retention_run(e))
                continue;
            int64_t due = retention_due_ns(e);
            struct timespec ts;
            deadline_to_timespec(due < deadline ? due : deadline, &ts);
            lockcheck_timedwait(&e->wake, &e->lock, &ts);
        }
        size_t n = queue_pop(e->queue, e->batch, e->cfg.batch_size);
        e->last_batch_ops = n;
        atomic_store_explicit(&e->stats.queue_depth, queue_len(e->queue), memory_order_relaxed);
        /* Nearly out of budget with work left (slow commits): the rest goes to the sidecar. */
        if (!e->spilling && e->drain_started_ns && model_mono_ns() >= e->give_up_ns)
            spill_start(e, "budget-spent", n + queue_len(e->queue));
        lockcheck_unlock(&e->lock);

        bool ok = !e->spilling && commit_ops(e, e->batch, n) == 0;
        size_t spilled = 0;
        if (!ok) {
            /* Spilling happens only once the shutdown budget runs, which has set spill_end_ns. */
            lockcheck_lock(&e->lock);
            int64_t spill_end = e->spill_end_ns;
            lockcheck_unlock(&e->lock);
            spilled = spill_ops(e, e->batch, n, spill_end);
        }

        lockcheck_lock(&e->lock);
        if (ok)
            committed(e, n);
        else if (!spilled_ops(e, n, spilled))
            break;
    }
    size_t spilled = e->spilled;
    lockcheck_unlock(&e->lock);
    store_spill_close(e->sidecar);
    e->sidecar = NULL;
    if (e->spilling) {
        /* Every piece is committed: what was spilled is safe from here on, SIGKILL or not. */
        char qpath[4300];
        engine_log(e, NS_LOG_WARN, "spilled", "updates=%zu pieces=%zu path=%s", spilled,
              e->spill_pieces, writer_thread_spill_qpath(e, qpath, sizeof qpath));
    }
    lockcheck_lock(&e->lock);
    state_advance(e, ENGINE_CLOSED);
    lockcheck_unlock(&e->lock);
    return NULL;
}
