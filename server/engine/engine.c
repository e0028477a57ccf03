#include "engine.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../lockcheck.h"
#include "cache.h"
#include "dblock.h"
#include "logfmt.h"
#include "queue.h"
#include "rules.h"
#include "store.h"
#include "writer.h"

/* Refused seqs remembered for engine_refused. */
#define REFUSED_RING 256
/* Retries of a failed commit wait this long at first, doubling up to the cap. */
#define BACKOFF_FIRST_NS 10000000ll   /* 10 ms */
#define BACKOFF_CAP_NS 1000000000ll   /* 1 s: a locked database is retried at least once a second */
/* How often one load of a run is retried when runs are removed meanwhile. */
#define LOAD_TRIES 8
/* nodestate_meta keys of seq_start. */
#define META_RUNNING "running"
#define META_SEQ_SLACK "seq_slack"
/*
 * Shutdown (see engine_close_counted). The flush gives up on the database
 * and spills what is left once commits have failed for SPILL_STALL_NS, or
 * SPILL_RESERVE_NS before the end of the budget; the spill may run
 * SPILL_OVERRUN_NS past that end, what is not in the sidecar by then is
 * lost (and logged), so the process is gone within the budget plus 1 s.
 */
#define SPILL_STALL_NS 500000000ll    /* 0.5 s */
#define SPILL_RESERVE_NS 1000000000ll /* 1 s */
#define SPILL_OVERRUN_NS 500000000ll  /* 0.5 s */
/* Most bytes of queued rows in one piece of the sidecar (one transaction). */
#define SPILL_PIECE_BYTES ((size_t)4 << 20)
/* Replaying a sidecar at start is tried this often, BACKOFF_FIRST_NS doubling between tries (~5 s). */
#define REPLAY_TRIES 9

/*
 * Where the engine is in its life (the diagram is in engine.h). It only
 * moves forward (state_advance), one step or more at a time: the writer may
 * go from DRAINING straight to CLOSED when its spill runs out of time.
 */
typedef enum engine_state {
    ENGINE_OPENING,   /* engine_open: the writer thread does not run yet */
    ENGINE_RUNNING,   /* engine_open returned: serving */
    ENGINE_DRAINING,  /* engine_drain: not ready, the shutdown budget runs */
    ENGINE_CLOSING,   /* engine_close: the writer flushes (then spills) and exits */
    ENGINE_CLOSED     /* writer_main returned: nothing more is written */
} engine_state;

struct engine {
    engine_config cfg;            /* db_path points at db_path below */
    char *db_path;
    dblock *dblock;               /* held from before the store opens until after it closes */
    ns_stats stats;
    store_reader *reader;         /* read-through connection, locks itself */
    store *store;                 /* the write connection: writer thread only */
    ns_op *batch;                 /* writer thread only: batch_size ops */
    const ns_row **isolated;      /* writer thread only: rows isolated in this batch */
    size_t n_isolated, cap_isolated;
    bool isolated_lost;           /* writer thread only: one did not fit (out of memory) */
    bool spilling;                /* writer thread only: the flush gave up on the database
                                   * (a mode of the writer within DRAINING/CLOSING, not a state) */
    store_sidecar *sidecar;       /* writer thread only: open once spilling */
    size_t spill_pieces;          /* writer thread only: pieces committed to the sidecar */
    int64_t spill_piece_ns;       /* writer thread only: how long the last piece took */
    pthread_t writer;             /* joined by engine_close once started (state past OPENING) */
    /*
     * An engine_state. Written only with lock held (state_advance), so the
     * writer's waits on `wake` see every change; _Atomic so that
     * engine_alive and engine_ready may read it without the lock.
     */
    _Atomic int state;
    _Atomic bool store_failing;   /* the last commit attempt failed */
    _Atomic bool bytes_full;      /* a write was refused for queue_max_bytes; cleared as bytes are freed */

    lockcheck_mutex lock;         /* guards every field below; lockcheck_assert_held where required */
    void (*on_durable)(void *ctx, int64_t durable_seq);
    void *on_durable_ctx;
    pthread_cond_t wake;          /* the writer sleeps on it (CLOCK_MONOTONIC) */
    cache *cache;
    queue *queue;
    int64_t last_seq;             /* last seq assigned */
    size_t queue_bytes;           /* queue_op_bytes of the ops accepted and not yet released */
    int64_t flush_until;          /* commit without waiting while seqs <= this are queued */
    int64_t drain_started_ns;     /* engine_drain (or close): the shutdown budget starts; 0 before */
    int64_t give_up_ns;           /* set with it: no more commit retries after this, spill */
    int64_t spill_end_ns;         /* set with it: nothing more goes to the sidecar after this */
    uint64_t drain_processed;     /* updates_processed then, for engine_closing.flushed */
    size_t spilled;               /* ops written to the sidecar */
    size_t unflushed;             /* ops that reached neither the database nor the sidecar */
    bool in_callback;             /* the writer is calling on_durable (unlocked) */
    int64_t refused[REFUSED_RING]; /* seqs isolated for good, newest at refused_next - 1 */
    size_t refused_next;
    pthread_cond_t callback_done; /* signalled when that call returns */
};


static void logf_(engine *e, int level, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void logf_(engine *e, int level, const char *msg, const char *fmt, ...)
{
    if (!e->cfg.log)
        return;
    char fields[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(fields, sizeof fields, fmt, ap);
    va_end(ap);
    e->cfg.log(e->cfg.log_ctx, level, msg, fields);
}

static engine_state state_of(engine *e)
{
    return (engine_state)atomic_load(&e->state);
}

/* Moves the state forward to `to`; a later state already reached stays. Lock held. */
static void state_advance(engine *e, engine_state to)
{
    lockcheck_assert_held(&e->lock);
    if (state_of(e) < to)
        atomic_store(&e->state, (int)to);
}

/* Whether engine_open has returned e: the precondition of every call on it. */
static inline bool state_opened(engine *e)
{
    return state_of(e) != ENGINE_OPENING;
}

static void publish_cache_size(engine *e)
{
    atomic_store_explicit(&e->stats.cache_nodes, cache_nodes(e->cache), memory_order_relaxed);
    atomic_store_explicit(&e->stats.cache_runs, cache_runs(e->cache), memory_order_relaxed);
    atomic_store_explicit(&e->stats.cache_bytes, cache_bytes(e->cache), memory_order_relaxed);
}

/* ---- reading through ---- */

static void evict(engine *e, const cache_run *keep);
static void run_drop_if_idle(engine *e, cache_run *run);

/* store_reader_load_run's callback: fills a detached run, outside the lock. */
static int load_into(void *ctx, ns_row *row)
{
    if (cache_node_put(NULL, ctx, row) != 0) {
        model_row_unref(row);
        return -1;
    }
    return 0;
}

/* store_reader_load_page's callback: collects a page's rows. */
typedef struct row_vec {
    ns_row **rows;
    size_t n, cap;
} row_vec;

static int row_vec_push(void *ctx, ns_row *row)
{
    row_vec *v = ctx;
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        ns_row **rows = realloc(v->rows, cap * sizeof *rows);
        if (!rows) {
            model_row_unref(row);
            return -1;
        }
        v->rows = rows;
        v->cap = cap;
    }
    v->rows[v->n++] = row;
    return 0;
}

static void row_vec_free(row_vec *v)
{
    for (size_t i = 0; i < v->n; i++)
        model_row_unref(v->rows[i]);
    free(v->rows);
    v->rows = NULL;
    v->n = v->cap = 0;
}

/*
 * Whether a run read whole may be cached whole: it takes at most half of
 * each bound, so caching it does not push out everything else (and then
 * itself, at the next commit, only to be read again).
 */
static bool may_cache_whole(const engine *e, const cache_run *loaded)
{
    return (!e->cfg.cache_max_nodes || loaded->nodes <= e->cfg.cache_max_nodes / 2) &&
           (!e->cfg.cache_max_bytes || loaded->bytes <= e->cfg.cache_max_bytes / 2);
}

/*
 * The cached run, complete: read whole from SQLite when it is not cached or
 * cached only in part. Called and returns with e->lock held, but drops it
 * while reading the file, into a detached run with its tables built, so a
 * slow read of a big run stalls no one else; under the lock the copy is only
 * merged, at the cost of the nodes that were cached. A cached row is never
 * older than the file (every write reaches the cache before the writer), so
 * cached rows win the merge. If this run was removed from the cache
 * meanwhile, the rows read may predate that removal, so the load is done
 * again (the last time with the lock held, so it cannot be overtaken); if it
 * became complete meanwhile (another load, or a delete that emptied it), the
 * copy is dropped. A run with no rows is not cached and answers NOT_FOUND.
 *
 * A run too big to cache whole (may_cache_whole) is not: NULL is returned
 * with *view set to the merged copy, which the caller frees (after
 * unlocking: freeing a big run takes a while) and *res ACCEPTED.
 */
static cache_run *run_get_whole(engine *e, const char *run_id, engine_result *res,
                                cache_run **view)
{
    lockcheck_assert_held(&e->lock);
    *view = NULL;
    for (int tries = 0; tries < LOAD_TRIES; tries++) {
        cache_run *run = cache_run_find(e->cache, run_id);
        if (run && run->complete) {
            cache_touch(e->cache, run);
            return run;
        }
        uint64_t removals = cache_removals(e->cache);
        /* The last try reads under the lock: slower for everyone, but always right. */
        bool locked = tries == LOAD_TRIES - 1;
        if (!locked)
            lockcheck_unlock(&e->lock);
        size_t skipped = 0;
        cache_run *loaded = cache_run_new(run_id);
        int rc = loaded ? store_reader_load_run(e->reader, run_id, load_into, loaded, &skipped)
                        : -1;
        if (skipped)
            logf_(e, NS_LOG_WARN, "rows-unreadable", "run_id=%s skipped=%zu", run_id, skipped);
        if (!locked)
            lockcheck_lock(&e->lock);
        if (rc != 0) {
            cache_run_free(loaded);
            logf_(e, NS_LOG_ERROR, "read-through-failed", "run_id=%s", run_id);
            *res = ENGINE_ERROR;
            return NULL;
        }
        run = cache_run_find(e->cache, run_id);
        if ((run && run->complete) || cache_removed_since(e->cache, run_id, removals)) {
            cache_run_free(loaded);
            continue; /* someone else completed it, or the file may have moved on */
        }
        size_t found = loaded->nodes;
        if (found > 0)
            atomic_fetch_add_explicit(&e->stats.cache_loads, 1, memory_order_relaxed);
        if (!may_cache_whole(e, loaded)) {
            if (run && cache_run_merge_into(run, loaded) != 0) {
                cache_run_free(loaded);
                *res = ENGINE_ERROR;
                return NULL;
            }
            *view = loaded;
            *res = ENGINE_ACCEPTED;
            return NULL;
        }
        if (!run) {
            if (found == 0) {
                cache_run_free(loaded);
                *res = ENGINE_NOT_FOUND;
                return NULL;
            }
            run = cache_run_add(e->cache, run_id);
        }
        if (!run || cache_run_adopt(e->cache, run, loaded) != 0) {
            if (!run)
                cache_run_free(loaded);
            else
                run_drop_if_idle(e, run);
            *res = ENGINE_ERROR;
            return NULL;
        }
        cache_touch(e->cache, run); /* the most recent, so evict spares it alone */
        evict(e, run);
        return run;
    }
    *res = ENGINE_ERROR; /* not reached: the last try holds the lock throughout */
    return NULL;
}

/*
 * The run holding node_id, with the node's current row in *cur (NULL for a
 * node that has none): a run not cached, or cached in part without this
 * node, gets just that row read from SQLite, not the whole run. Locking and
 * races as in run_get_whole. A run with no rows on disk is cached complete
 * (empty), so its later new nodes need no read at all. With create false
 * nothing is cached for a node of an uncached run that is not on disk: NULL
 * with NOT_FOUND.
 */
static cache_run *run_get_node(engine *e, const char *run_id, const char *node_id,
                               bool create, ns_row **cur, engine_result *res)
{
    lockcheck_assert_held(&e->lock);
    *cur = NULL;
    for (int tries = 0; tries < LOAD_TRIES; tries++) {
        cache_run *run = cache_run_find(e->cache, run_id);
        if (run) {
            ns_row *row = cache_node_get(run, node_id);
            if (row || run->complete) {
                cache_touch(e->cache, run);
                *cur = row;
                return run;
            }
        }
        uint64_t removals = cache_removals(e->cache);
        bool locked = tries == LOAD_TRIES - 1;
        if (!locked)
            lockcheck_unlock(&e->lock);
        ns_row *row = NULL;
        bool run_has_rows = false;
        int rc = store_reader_load_node(e->reader, run_id, node_id, &row, &run_has_rows);
        if (rc > 0)
            logf_(e, NS_LOG_WARN, "rows-unreadable", "run_id=%s node_id=%s skipped=1", run_id,
                  node_id);
        if (!locked)
            lockcheck_lock(&e->lock);
        if (rc < 0) {
            logf_(e, NS_LOG_ERROR, "read-through-failed", "run_id=%s node_id=%s", run_id,
                  node_id);
            *res = ENGINE_ERROR;
            return NULL;
        }
        run = cache_run_find(e->cache, run_id);
        if ((run && (run->complete || cache_node_get(run, node_id))) ||
            cache_removed_since(e->cache, run_id, removals)) {
            model_row_unref(row);
            continue; /* the cache knows better now, or the file may have moved on */
        }
        if (!run) {
            if (!row && !create) {
                *res = ENGINE_NOT_FOUND;
                return NULL;
            }
            run = cache_run_add(e->cache, run_id);
            if (!run) {
                model_row_unref(row);
                *res = ENGINE_ERROR;
                return NULL;
            }
            /* Nothing cached of it, nothing queued: the file is its truth. */
            run->complete = !run_has_rows;
        }
        cache_touch(e->cache, run); /* the most recent, so evict spares it alone */
        if (row) {
            if (cache_node_put(e->cache, run, row) != 0) {
                model_row_unref(row);
                run_drop_if_idle(e, run);
                *res = ENGINE_ERROR;
                return NULL;
            }
            atomic_fetch_add_explicit(&e->stats.cache_loads, 1, memory_order_relaxed);
        }
        evict(e, run);
        *cur = row;
        return run;
    }
    *res = ENGINE_ERROR; /* not reached: the last try holds the lock throughout */
    return NULL;
}

/* Whether the cache holds more than either bound allows. Lock held. */
static bool over_bounds(const engine *e)
{
    lockcheck_assert_held(&e->lock);
    size_t max_nodes = e->cfg.cache_max_nodes, max_bytes = e->cfg.cache_max_bytes;
    return (max_nodes && cache_nodes(e->cache) > max_nodes) ||
           (max_bytes && cache_bytes(e->cache) > max_bytes);
}

/*
 * Drops least recently used runs until the cache holds at most
 * cache_max_nodes nodes and cache_max_bytes bytes. Only runs with nothing
 * queued can go (the file holds their truth); keep is spared because a
 * caller is using it. Lock held.
 */
static void evict(engine *e, const cache_run *keep)
{
    lockcheck_assert_held(&e->lock);
    while (over_bounds(e)) {
        cache_run *run = cache_lru_first(e->cache); /* unpinned runs only */
        if (!run || run == keep)
            break; /* keep is the most recent: nothing else may go */
        cache_run_remove(e->cache, run);
        atomic_fetch_add_explicit(&e->stats.cache_evictions, 1, memory_order_relaxed);
    }
    publish_cache_size(e);
}

/*
 * Forgets an unpinned run that holds nothing (a failed first submit, a
 * committed delete) or whose rows may differ from disk (a row of it was
 * isolated): the file is its truth again. Lock held.
 */
static void run_drop_if_idle(engine *e, cache_run *run)
{
    lockcheck_assert_held(&e->lock);
    if (run->pending == 0 && (run->nodes == 0 || run->stale)) {
        cache_run_remove(e->cache, run);
        publish_cache_size(e);
    }
}

/* ---- accepting writes ---- */

static void reject(engine *e, ns_reject why)
{
    atomic_fetch_add_explicit(&e->stats.rejected[why], 1, memory_order_relaxed);
}

/*
 * Whether an op of this many bytes may be queued: a free slot, and its bytes
 * within queue_max_bytes with what is held already (an op larger than the
 * whole bound still goes when nothing is held, or it could never go). Lock held.
 */
static bool queue_has_room(engine *e, size_t bytes)
{
    lockcheck_assert_held(&e->lock);
    size_t max = e->cfg.queue_max_bytes;
    if (queue_len(e->queue) == queue_capacity(e->queue))
        return false;
    return max == 0 || e->queue_bytes == 0 || bytes <= max - (max < e->queue_bytes ? max : e->queue_bytes);
}

/* Queued bytes from which the writer commits without waiting for batch_interval. Lock held. */
static bool queue_bytes_high(const engine *e)
{
    lockcheck_assert_held(&e->lock);
    return e->cfg.queue_max_bytes && e->queue_bytes >= e->cfg.queue_max_bytes / 2;
}

/* Appends an op under e->lock; the caller checked there is room (queue_has_room). */
static void enqueue(engine *e, ns_op *op)
{
    lockcheck_assert_held(&e->lock);
    bool was_high = queue_bytes_high(e);
    op->seq = ++e->last_seq;
    op->enqueued_ns = model_mono_ns();
    op->bytes = queue_op_bytes(op);
    cache_pin(e->cache, op->run);
    queue_push(e->queue, op);
    e->queue_bytes += op->bytes;
    size_t len = queue_len(e->queue);
    atomic_store_explicit(&e->stats.queue_depth, len, memory_order_relaxed);
    atomic_store_explicit(&e->stats.queue_bytes, e->queue_bytes, memory_order_relaxed);
    atomic_store_explicit(&e->stats.last_seq, e->last_seq, memory_order_relaxed);
    atomic_fetch_add_explicit(&e->stats.updates_queued, 1, memory_order_relaxed);
    /*
     * Wake the writer only when it may be waiting for this: the first op, a
     * full batch, a full queue, half the byte bound reached.
     */
    if (len == 1 || len == e->cfg.batch_size || len == queue_capacity(e->queue) ||
        (!was_high && queue_bytes_high(e)))
        pthread_cond_signal(&e->wake);
}

engine_result engine_submit(engine *e, const char *run_id, const char *node_id,
                            const ns_update *u, ns_row **out)
{
    assert(state_opened(e));
    lockcheck_assert_not_held(&e->lock);
    engine_result res = ENGINE_ERROR;
    *out = NULL;
    lockcheck_lock(&e->lock);
    ns_row *cur = NULL;
    cache_run *run = run_get_node(e, run_id, node_id, true, &cur, &res);
    if (!run)
        goto done;
    ns_row draft;
    int64_t now = model_now_ms();
    switch (rules_apply(cur, run_id, node_id, u, now, &draft)) {
    case RULES_STALE:
        reject(e, NS_REJECT_STALE);
        res = ENGINE_STALE;
        goto current;
    case RULES_ILLEGAL:
        reject(e, NS_REJECT_ILLEGAL);
        res = ENGINE_ILLEGAL;
        goto current;
    case RULES_DUPLICATE:
        atomic_fetch_add_explicit(&e->stats.updates_duplicate, 1, memory_order_relaxed);
        res = ENGINE_DUPLICATE;
        goto current;
    case RULES_APPLY:
        break;
    }
    ns_op probe = { .row = &draft };
    if (!queue_has_room(e, queue_op_bytes(&probe))) {
        atomic_store(&e->bytes_full, queue_len(e->queue) < queue_capacity(e->queue));
        reject(e, NS_REJECT_QUEUE_FULL);
        res = ENGINE_QUEUE_FULL;
        goto drop;
    }
    draft.seq = e->last_seq + 1;
    draft.updated_at = now;
    ns_row *row = model_row_copy(&draft);
    if (!row || cache_node_put(e->cache, run, row) != 0) {
        model_row_unref(row);
        res = ENGINE_ERROR;
        goto drop;
    }
    model_row_ref(row); /* the queue's reference */
    model_row_ref(row); /* the caller's */
    ns_op op = { .row = row, .run = run };
    enqueue(e, &op);
    evict(e, run); /* a new node, or a bigger row, may pass a bound */
    *out = row;
    res = ENGINE_ACCEPTED;
    goto done;
current:
    model_row_ref(cur);
    *out = cur;
    goto done;
drop:
    run_drop_if_idle(e, run);
done:
    lockcheck_unlock(&e->lock);
    return res;
}

engine_result engine_delete_run(engine *e, const char *run_id, size_t *deleted,
                                int64_t *seq)
{
    assert(state_opened(e));
    lockcheck_assert_not_held(&e->lock);
    engine_result res = ENGINE_ERROR;
    char *id = strdup(run_id);
    if (!id)
        return ENGINE_ERROR;
    cache_run *view = NULL, *gone = NULL;
    lockcheck_lock(&e->lock);
    /* Whole: the answer tells how many nodes went. */
    cache_run *run = run_get_whole(e, run_id, &res, &view);
    size_t nodes = run ? run->nodes : view ? view->nodes : 0;
    if ((run || view) && nodes == 0)
        res = ENGINE_NOT_FOUND;
    if (nodes == 0)
        goto done;
    ns_op probe = { .delete_run = id };
    if (!queue_has_room(e, queue_op_bytes(&probe))) {
        atomic_store(&e->bytes_full, queue_len(e->queue) < queue_capacity(e->queue));
        reject(e, NS_REJECT_QUEUE_FULL);
        res = ENGINE_QUEUE_FULL;
        goto done;
    }
    /* Too big to cache whole: the run (in part, or not at all) is what gets emptied and pinned. */
    if (!run && !(run = cache_run_find(e->cache, run_id)) &&
        !(run = cache_run_add(e->cache, run_id))) {
        res = ENGINE_ERROR;
        goto done;
    }
    *deleted = nodes;
    /* The run stays cached, empty and pinned, until the delete commits: a read must not find the old rows on disk. */
    gone = cache_run_take(e->cache, run);
    ns_op op = { .delete_run = id, .run = run };
    enqueue(e, &op);
    *seq = op.seq;
    id = NULL;
    publish_cache_size(e);
    res = ENGINE_ACCEPTED;
done:
    lockcheck_unlock(&e->lock);
    free(id);
    /* The rows the run had, or its copy: freed without the lock, a big run takes a while. */
    cache_run_free(gone);
    cache_run_free(view);
    return res;
}

/* ---- reading ---- */

ns_row *engine_get(engine *e, const char *run_id, const char *node_id,
                   engine_result *res)
{
    assert(state_opened(e));
    lockcheck_assert_not_held(&e->lock);
    ns_row *row = NULL;
    *res = ENGINE_NOT_FOUND;
    lockcheck_lock(&e->lock);
    if (run_get_node(e, run_id, node_id, false, &row, res)) {
        if (row) {
            model_row_ref(row);
            *res = ENGINE_ACCEPTED;
        } else {
            *res = ENGINE_NOT_FOUND;
        }
    }
    lockcheck_unlock(&e->lock);
    return row;
}

/*
 * A page of a run that is not cached whole, read through: the stored rows
 * of the page (store_reader_load_page, without the lock) merged with the
 * cached ones, which win, so a listing never reads a run whole. What the
 * disk read covers ends at its last row when more follow; if the merge
 * needs rows beyond that (cached nodes took the place of stored ones), a
 * longer stretch is read. Races as in run_get_whole. Lock held, dropped
 * while reading; cached has room for limit + 1.
 */
static engine_result list_through(engine *e, const char *run_id, unsigned status_mask,
                                  const char *after, size_t limit, engine_page *page,
                                  ns_row **cached)
{
    lockcheck_assert_held(&e->lock);
    size_t want = limit + 1;
    for (int tries = 0; tries < LOAD_TRIES;) {
        cache_run *run = cache_run_find(e->cache, run_id);
        if (run && run->complete) {
            cache_touch(e->cache, run);
            if (run->nodes == 0)
                return ENGINE_NOT_FOUND;
            page->count = (size_t)cache_run_collect(run, status_mask, after, limit, page->rows,
                                                    &page->more);
            return ENGINE_ACCEPTED;
        }
        uint64_t removals = cache_removals(e->cache);
        bool locked = tries == LOAD_TRIES - 1;
        if (!locked)
            lockcheck_unlock(&e->lock);
        row_vec disk = { 0 };
        store_page sp;
        int rc = store_reader_load_page(e->reader, run_id, after, status_mask, want,
                                        row_vec_push, &disk, &sp);
        if (sp.skipped)
            logf_(e, NS_LOG_WARN, "rows-unreadable", "run_id=%s skipped=%zu", run_id,
                  sp.skipped);
        if (!locked)
            lockcheck_lock(&e->lock);
        if (rc != 0) {
            row_vec_free(&disk);
            logf_(e, NS_LOG_ERROR, "read-through-failed", "run_id=%s", run_id);
            return ENGINE_ERROR;
        }
        run = cache_run_find(e->cache, run_id);
        if ((run && run->complete) || cache_removed_since(e->cache, run_id, removals)) {
            row_vec_free(&disk);
            tries++;
            continue; /* the cache knows better now, or the file may have moved on */
        }
        if (!sp.run_has_rows && (!run || run->nodes == 0)) {
            row_vec_free(&disk);
            return ENGINE_NOT_FOUND;
        }
        if (run)
            cache_touch(e->cache, run);
        if (disk.n > 0)
            atomic_fetch_add_explicit(&e->stats.cache_loads, 1, memory_order_relaxed);
        /* Beyond `end` the file is unknown (more rows follow it); NULL: known to the end. */
        const char *end = sp.more ? disk.rows[disk.n - 1]->node_id : NULL;
        bool cached_more;
        size_t nc = run ? (size_t)cache_run_collect(run, status_mask, after, limit + 1, cached,
                                                    &cached_more)
                        : 0;
        size_t i = 0, j = 0, k = 0;
        bool full = false;
        for (;;) {
            while (i < disk.n && run && cache_node_get(run, disk.rows[i]->node_id))
                i++; /* cached: its cached row (if it matches) is among cached[] */
            ns_row *d = i < disk.n ? disk.rows[i] : NULL;
            ns_row *c = j < nc ? cached[j] : NULL;
            ns_row *next = d && (!c || strcmp(d->node_id, c->node_id) < 0) ? d : c;
            if (!next)
                break;
            if (k == limit) {
                full = true; /* a real row follows: a stored one read, or a cached one */
                break;
            }
            if (end && strcmp(next->node_id, end) > 0)
                break;
            model_row_ref(next);
            page->rows[k++] = next;
            if (next == d)
                i++;
            else
                j++;
        }
        for (size_t x = 0; x < nc; x++)
            model_row_unref(cached[x]);
        row_vec_free(&disk);
        if (full || !end) {
            page->count = k;
            page->more = full;
            return ENGINE_ACCEPTED;
        }
        /* Cached nodes took stored rows' places: read a longer stretch. */
        for (size_t x = 0; x < k; x++)
            model_row_unref(page->rows[x]);
        want *= 2;
    }
    return ENGINE_ERROR; /* not reached: the last try holds the lock throughout */
}

engine_result engine_list(engine *e, const char *run_id, unsigned status_mask,
                          const char *after, size_t limit, engine_page *page)
{
    assert(state_opened(e));
    lockcheck_assert_not_held(&e->lock);
    memset(page, 0, sizeof *page);
    page->rows = malloc((limit ? limit : 1) * sizeof *page->rows);
    ns_row **cached = malloc((limit + 1) * sizeof *cached);
    if (!page->rows || !cached) {
        free(page->rows);
        page->rows = NULL;
        free(cached);
        return ENGINE_ERROR;
    }
    lockcheck_lock(&e->lock);
    engine_result res = list_through(e, run_id, status_mask, after, limit, page, cached);
    lockcheck_unlock(&e->lock);
    free(cached);
    if (res != ENGINE_ACCEPTED)
        page->count = 0;
    return res;
}

void engine_page_free(engine_page *page)
{
    for (size_t i = 0; i < page->count; i++)
        model_row_unref(page->rows[i]);
    free(page->rows);
    memset(page, 0, sizeof *page);
}

engine_result engine_summarize(engine *e, const char *run_id, engine_summary *out)
{
    assert(state_opened(e));
    lockcheck_assert_not_held(&e->lock);
    engine_result res = ENGINE_ERROR;
    cache_run *view = NULL;
    memset(out, 0, sizeof *out);
    lockcheck_lock(&e->lock);
    const cache_run *run = run_get_whole(e, run_id, &res, &view);
    if (!run)
        run = view;
    if (run && run->nodes == 0)
        res = ENGINE_NOT_FOUND;
    if (run && run->nodes > 0) {
        out->nodes = run->nodes;
        memcpy(out->counts, run->counts, sizeof out->counts);
        out->last_seq = run->last_seq;
        out->updated_at = run->updated_at;
        res = ENGINE_ACCEPTED;
    }
    lockcheck_unlock(&e->lock);
    cache_run_free(view); /* a run too big to cache, read for this answer alone */
    return res;
}

/* ---- the writer thread ---- */

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
    logf_(e, NS_LOG_ERROR, "row-isolated",
          "run_id=%s node_id=%s seq=%lld error=%s", row->run_id, row->node_id,
          (long long)row->seq, quoted);
    if (e->n_isolated == e->cap_isolated) {
        size_t cap = e->cap_isolated ? e->cap_isolated * 2 : 16;
        const ns_row **grown = realloc(e->isolated, cap * sizeof *grown);
        if (!grown) {
            e->isolated_lost = true;
            return;
        }
        e->isolated = grown;
        e->cap_isolated = cap;
    }
    e->isolated[e->n_isolated++] = row;
}

/* Remembers a seq whose update will never be on disk. Lock held. */
static void refuse(engine *e, int64_t seq)
{
    lockcheck_assert_held(&e->lock);
    e->refused[e->refused_next++ % REFUSED_RING] = seq;
}

/*
 * After a commit that isolated rows: every op of ops[0..n) for an isolated
 * node (the newest, and the older ones coalesced into it) is refused, and
 * its run goes stale. Lock held, before release_ops.
 */
static void mark_refused(engine *e, const ns_op *ops, size_t n)
{
    lockcheck_assert_held(&e->lock);
    if (e->isolated_lost) {
        /* Which rows went is not known: let every run of the batch reload from disk. */
        for (size_t i = 0; i < n; i++)
            ops[i].run->stale = true;
        e->isolated_lost = false;
    }
    for (size_t k = 0; k < e->n_isolated; k++) {
        const ns_row *bad = e->isolated[k];
        for (size_t i = 0; i < n; i++) {
            const ns_row *r = ops[i].row;
            if (r && strcmp(r->node_id, bad->node_id) == 0 &&
                strcmp(r->run_id, bad->run_id) == 0) {
                ops[i].run->stale = true;
                refuse(e, ops[i].seq);
            }
        }
    }
    e->n_isolated = 0;
}

/* The sidecar's path, quoted for a log line. */
static const char *spill_qpath(engine *e, char *out, size_t outlen)
{
    char path[4200];
    store_spill_path(e->db_path, path, sizeof path);
    return logfmt_quote(out, outlen, path);
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
    logf_(e, NS_LOG_WARN, "spill-started", "reason=%s updates=%zu path=%s", reason,
          updates, spill_qpath(e, qpath, sizeof qpath));
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
            plan.batch.isolated_ctx = e;
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
        logf_(e, NS_LOG_ERROR, "commit-failed",
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
    atomic_fetch_add_explicit(&s->batches_written, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->rows_written, plan.batch.n_rows - plan.batch.n_isolated,
                              memory_order_relaxed);
    /* Every accepted delete, even one its batch merged with another of the same run. */
    atomic_fetch_add_explicit(&s->runs_deleted, plan.run_deletes, memory_order_relaxed);
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
            e->sidecar = store_spill_open(e->db_path, err, sizeof err);
        if (e->sidecar && writer_plan_build(ops + done, k, &plan) == 0) {
            plan.batch.on_isolated = on_isolated;
            plan.batch.isolated_ctx = e;
            rc = store_spill_append(e->sidecar, &plan.batch, err, sizeof err);
            if (rc == 0) {
                e->spill_pieces++;
                logf_(e, NS_LOG_DEBUG, "spill-piece",
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
        logf_(e, NS_LOG_ERROR, "spill-failed", "updates=%zu error=%s retry_in_ms=%lld", k,
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
            run_drop_if_idle(e, ops[i].run);
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
static void drop_queue(engine *e)
{
    lockcheck_assert_held(&e->lock);
    size_t n;
    while ((n = queue_pop(e->queue, e->batch, e->cfg.batch_size)) > 0) {
        e->unflushed += n;
        release_ops(e, e->batch, n);
    }
    atomic_store_explicit(&e->stats.queue_depth, 0, memory_order_relaxed);
}

/* Whether the writer should commit now rather than wait for more. Lock held. */
static bool batch_due(engine *e)
{
    lockcheck_assert_held(&e->lock);
    const ns_op *oldest = queue_peek(e->queue);
    if (!oldest)
        return false;
    size_t len = queue_len(e->queue);
    return state_of(e) >= ENGINE_CLOSING || len >= e->cfg.batch_size || len == queue_capacity(e->queue) ||
           queue_bytes_high(e) || oldest->seq <= e->flush_until;
}

/* After a commit of e->batch[0..n): counters, cache, waiters. Lock held (dropped for the callback). */
static void committed(engine *e, size_t n)
{
    lockcheck_assert_held(&e->lock);
    int64_t durable = e->batch[n - 1].seq;
    mark_refused(e, e->batch, n);
    release_ops(e, e->batch, n);
    evict(e, NULL); /* runs just written may go now */
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
 * made it. Returns false when some did not (the spill is out of time): the
 * rest of the queue is dropped, counted in unflushed. Lock held.
 */
static bool spilled_ops(engine *e, size_t n, size_t spilled)
{
    lockcheck_assert_held(&e->lock);
    mark_refused(e, e->batch, n);
    e->spilled += spilled;
    e->unflushed += n - spilled;
    release_ops(e, e->batch, n);
    if (spilled == n)
        return true;
    drop_queue(e);
    return false;
}

static void *writer_main(void *arg)
{
    engine *e = arg;
    int64_t interval_ns = (int64_t)(e->cfg.batch_interval * 1e9);
    lockcheck_lock(&e->lock);
    for (;;) {
        while (state_of(e) < ENGINE_CLOSING && queue_len(e->queue) == 0)
            lockcheck_wait(&e->wake, &e->lock);
        if (queue_len(e->queue) == 0)
            break; /* closing and drained */
        while (!batch_due(e)) {
            int64_t deadline = queue_peek(e->queue)->enqueued_ns + interval_ns;
            if (model_mono_ns() >= deadline)
                break;
            struct timespec ts;
            deadline_to_timespec(deadline, &ts);
            lockcheck_timedwait(&e->wake, &e->lock, &ts);
        }
        size_t n = queue_pop(e->queue, e->batch, e->cfg.batch_size);
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
        logf_(e, NS_LOG_WARN, "spilled", "updates=%zu pieces=%zu path=%s", spilled,
              e->spill_pieces, spill_qpath(e, qpath, sizeof qpath));
    }
    lockcheck_lock(&e->lock);
    state_advance(e, ENGINE_CLOSED);
    lockcheck_unlock(&e->lock);
    return NULL;
}

/* ---- life cycle ---- */

/* Sleeps ns (before the writer exists: nothing needs to wake it). */
static void nap(int64_t ns)
{
    struct timespec ts = { (time_t)(ns / 1000000000ll), (long)(ns % 1000000000ll) };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/*
 * Applies a sidecar an earlier shutdown left, before anything is served. The
 * database may still be locked by whoever kept the last run from flushing,
 * so this waits a little; past that the start fails and the sidecar stays.
 * A piece its writer did not live to commit is rolled back, and said so.
 */
static int replay(engine *e, char *err, size_t errlen)
{
    store_replayed got;
    int64_t backoff = BACKOFF_FIRST_NS;
    for (int i = 0; store_replay(e->store, &got, err, errlen) != 0; i++) {
        if (i + 1 == REPLAY_TRIES)
            return -1;
        nap(backoff);
        backoff *= 2;
    }
    char qpath[4300];
    if (got.torn)
        logf_(e, NS_LOG_ERROR, "spill-piece-torn",
              "path=%s detail=\"the process writing the sidecar died inside a piece; "
              "that piece was rolled back, the pieces committed before it are kept\"",
              spill_qpath(e, qpath, sizeof qpath));
    if (got.pieces || got.rows || got.deletes)
        logf_(e, NS_LOG_WARN, "spill-replayed", "rows=%zu deletes=%zu pieces=%zu path=%s",
              got.rows, got.deletes, got.pieces, spill_qpath(e, qpath, sizeof qpath));
    return 0;
}

/*
 * Where seq resumes. A process that died (SIGKILL, a crash) may have handed
 * out seqs it never committed, as ETags of accepted updates; a new process
 * must not hand them out again. At most queue_capacity + batch_size seqs are
 * ever ahead of the last commit, so a start after an unclean stop skips that
 * many (the slack the dead process recorded). "running" marks a process that
 * has not yet stopped cleanly. Before the writer starts.
 */
static int seq_start(engine *e, char *err, size_t errlen)
{
    int64_t running = 0, slack = 0;
    e->last_seq = store_last_seq(e->store);
    if (store_meta_get(e->store, META_RUNNING, &running) < 0 ||
        store_meta_get(e->store, META_SEQ_SLACK, &slack) < 0)
        goto err;
    if (running == 1 && slack > 0) {
        logf_(e, NS_LOG_WARN, "unclean-stop", "seq_skipped=%lld last_seq=%lld",
              (long long)slack, (long long)e->last_seq);
        e->last_seq += slack;
        /* Committed now, so a second crash before any write skips from here, not again from before. */
        store_batch floor = { .last_seq = e->last_seq };
        if (store_write(e->store, &floor) != 0)
            goto err;
    }
    if (store_meta_set(e->store, META_SEQ_SLACK,
                       (int64_t)(e->cfg.queue_capacity + e->cfg.batch_size)) != 0 ||
        store_meta_set(e->store, META_RUNNING, 1) != 0)
        goto err;
    return 0;
err:
    snprintf(err, errlen, "cannot record the start in %s: %s", e->db_path,
             store_errmsg(e->store));
    return -1;
}

/* Frees what engine_open built; the writer thread is not running. */
static void engine_free(engine *e)
{
    store_reader_close(e->reader);
    store_close(e->store);
    free(e->batch);
    free(e->isolated);
    queue_free(e->queue);
    cache_free(e->cache);
    pthread_cond_destroy(&e->wake);
    pthread_cond_destroy(&e->callback_done);
    lockcheck_destroy(&e->lock);
    dblock_release(e->dblock);
    free(e->db_path);
    free(e);
}

engine *engine_open(const engine_config *cfg, char *err, size_t errlen)
{
    if (cfg->batch_size == 0 || cfg->queue_capacity == 0) {
        snprintf(err, errlen, "batch size and queue capacity must be at least 1");
        return NULL;
    }
    engine *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    e->cfg = *cfg;
    e->db_path = strdup(cfg->db_path);
    e->cfg.db_path = e->db_path;
    stats_init(&e->stats, cfg->queue_capacity);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    lockcheck_init(&e->lock);
    pthread_cond_init(&e->wake, &ca);
    pthread_cond_init(&e->callback_done, NULL);
    pthread_condattr_destroy(&ca);
    e->cache = cache_new();
    e->queue = queue_new(cfg->queue_capacity);
    e->batch = calloc(cfg->batch_size, sizeof *e->batch);
    if (!e->db_path || !e->cache || !e->queue || !e->batch) {
        snprintf(err, errlen, "out of memory");
        goto err;
    }
    /* Before anything opens the database or replays its sidecar. */
    e->dblock = dblock_acquire(e->db_path, err, errlen);
    if (!e->dblock)
        goto err;
    e->store = store_open(e->db_path, cfg->synchronous_full, err, errlen);
    if (!e->store)
        goto err;
    if (replay(e, err, errlen) != 0)
        goto err;
    e->reader = store_reader_open(e->db_path, err, errlen);
    if (!e->reader)
        goto err;
    if (seq_start(e, err, errlen) != 0)
        goto err;
    atomic_store(&e->stats.last_seq, e->last_seq);
    atomic_store(&e->stats.durable_seq, e->last_seq);
    /* Before the writer exists, so that it starts in RUNNING. */
    lockcheck_lock(&e->lock);
    state_advance(e, ENGINE_RUNNING);
    lockcheck_unlock(&e->lock);
    if (pthread_create(&e->writer, NULL, writer_main, e) != 0) {
        snprintf(err, errlen, "cannot start the writer thread");
        goto err;
    }
    return e;
err:
    engine_free(e);
    return NULL;
}

/*
 * Starts the shutdown budget (shutdown_timeout) if it has not started: from
 * now on a stalled flush gives up on the database for the sidecar, at the
 * latest SPILL_RESERVE (at most a quarter of the budget) before its end, and
 * the spill ends SPILL_OVERRUN after it, so the whole shutdown fits what a
 * supervisor such as Docker allows before it kills the process. Lock held.
 */
static void budget_start(engine *e)
{
    lockcheck_assert_held(&e->lock);
    if (e->drain_started_ns)
        return;
    int64_t now = model_mono_ns();
    int64_t budget = (int64_t)(e->cfg.shutdown_timeout * 1e9);
    int64_t reserve = budget / 4 < SPILL_RESERVE_NS ? budget / 4 : SPILL_RESERVE_NS;
    e->drain_started_ns = now;
    e->give_up_ns = now + budget - reserve;
    e->spill_end_ns = now + budget + SPILL_OVERRUN_NS;
    e->drain_processed = atomic_load(&e->stats.updates_processed);
}

size_t engine_close_counted(engine *e, engine_closing *report)
{
    if (!e)
        return 0;
    lockcheck_lock(&e->lock);
    /* Called once, after engine_open returned e (DRAINING or not; CLOSED if the writer ran out of time). */
    assert(state_opened(e) && state_of(e) != ENGINE_CLOSING);
    budget_start(e);
    state_advance(e, ENGINE_CLOSING);
    pthread_cond_signal(&e->wake);
    lockcheck_unlock(&e->lock);
    pthread_join(e->writer, NULL);
    /* Ops queued after the writer gave up (out of time, still draining) go nowhere. */
    lockcheck_lock(&e->lock);
    drop_queue(e);
    size_t unflushed = e->unflushed;
    size_t spilled = e->spilled;
    lockcheck_unlock(&e->lock);
    if (unflushed)
        logf_(e, NS_LOG_ERROR, "flush-incomplete", "unflushed=%zu", unflushed);
    /* Every seq handed out is on disk or in the sidecar: the next start needs no skip. */
    else if (store_meta_set(e->store, META_RUNNING, 0) != 0) {
        char why[512];
        logf_(e, NS_LOG_WARN, "clean-stop-not-recorded", "error=%s",
              logfmt_quote(why, sizeof why, store_errmsg(e->store)));
    }
    if (report) {
        report->flushed = atomic_load(&e->stats.updates_processed) - e->drain_processed;
        report->spilled = spilled;
        report->lost = unflushed;
    }
    engine_free(e);
    return unflushed;
}

size_t engine_close(engine *e)
{
    return engine_close_counted(e, NULL);
}

/* ---- state for the API ---- */

int64_t engine_durable_seq(engine *e)
{
    return atomic_load(&e->stats.durable_seq);
}

void engine_on_durable(engine *e, void (*fn)(void *ctx, int64_t durable_seq),
                       void *ctx)
{
    assert(state_opened(e));
    lockcheck_assert_not_held(&e->lock);
    lockcheck_lock(&e->lock);
    while (e->in_callback)
        lockcheck_wait(&e->callback_done, &e->lock);
    e->on_durable = fn;
    e->on_durable_ctx = ctx;
    lockcheck_unlock(&e->lock);
}

void engine_flush_soon(engine *e)
{
    assert(state_opened(e));
    lockcheck_assert_not_held(&e->lock);
    lockcheck_lock(&e->lock);
    if (e->flush_until < e->last_seq)
        e->flush_until = e->last_seq;
    pthread_cond_signal(&e->wake);
    lockcheck_unlock(&e->lock);
}

void engine_drain(engine *e)
{
    lockcheck_lock(&e->lock);
    /* Before engine_close; twice is harmless. */
    assert(state_opened(e) && state_of(e) != ENGINE_CLOSING);
    state_advance(e, ENGINE_DRAINING);
    budget_start(e);
    /* Shutting down: what is queued from now on is written at once, not after batch_interval. */
    e->flush_until = INT64_MAX;
    pthread_cond_signal(&e->wake);
    lockcheck_unlock(&e->lock);
}

bool engine_refused(engine *e, int64_t seq)
{
    assert(state_opened(e));
    lockcheck_assert_not_held(&e->lock);
    bool found = false;
    lockcheck_lock(&e->lock);
    size_t n = e->refused_next < REFUSED_RING ? e->refused_next : REFUSED_RING;
    for (size_t i = 0; i < n && !found; i++)
        found = e->refused[i] == seq;
    lockcheck_unlock(&e->lock);
    return found;
}

bool engine_alive(engine *e)
{
    engine_state st = state_of(e);
    return st >= ENGINE_RUNNING && st < ENGINE_CLOSED;
}

bool engine_ready(engine *e, const char **reason)
{
    engine_state st = state_of(e);
    if (st < ENGINE_RUNNING || st == ENGINE_CLOSED) {
        *reason = "the writer thread is not running";
        return false;
    }
    if (atomic_load(&e->store_failing)) {
        *reason = "commits to the database are failing; retrying";
        return false;
    }
    if (atomic_load(&e->stats.queue_depth) >= e->stats.queue_capacity) {
        *reason = "the write queue is full";
        return false;
    }
    if (atomic_load(&e->bytes_full)) {
        *reason = "the write queue is full (--queue-max-bytes)";
        return false;
    }
    if (st >= ENGINE_DRAINING) {
        *reason = "draining for shutdown";
        return false;
    }
    return true;
}

ns_stats *engine_stats(engine *e)
{
    return &e->stats;
}

const engine_config *engine_config_of(engine *e)
{
    return &e->cfg;
}
