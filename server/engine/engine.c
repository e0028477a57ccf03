/*
 * The engine while it runs: the cache's bounds, accepting writes, reads,
 * the state the API asks for and backups. Opening and closing it are in
 * engine_life.c.
 */
#include "engine.h"

#include <assert.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"
#include "readthrough.h"
#include "rules.h"

void engine_log(engine *e, int level, const char *msg, const char *fmt, ...)
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

static void publish_cache_size(engine *e)
{
    atomic_store_explicit(&e->stats.cache_nodes, cache_nodes(e->cache), memory_order_relaxed);
    atomic_store_explicit(&e->stats.cache_runs, cache_runs(e->cache), memory_order_relaxed);
    atomic_store_explicit(&e->stats.cache_bytes, cache_bytes(e->cache), memory_order_relaxed);
}

/* ---- the cache's bounds ---- */

/* Whether the cache holds more than either bound allows. Lock held. */
static bool over_bounds(const engine *e)
{
    lockcheck_assert_held(&e->lock);
    size_t max_nodes = e->cfg.cache_max_nodes, max_bytes = e->cfg.cache_max_bytes;
    return (max_nodes && cache_nodes(e->cache) > max_nodes) ||
           (max_bytes && cache_bytes(e->cache) > max_bytes);
}

/*
 * Drops clean nodes (their rows are on disk), the least recently used node
 * of the least recently used run first, until the cache holds at most
 * cache_max_nodes nodes and cache_max_bytes bytes, so a bound is kept a node
 * at a time: nothing is dropped beyond it, and a busy run loses its idle
 * nodes instead of being dropped whole and read back. Queued nodes stay (the
 * cache is their only copy). keep is spared whole because a caller is using
 * it. At most EVICT_STEP nodes go per call, and as many slots of removed
 * runs are freed (cache_reap), so no call is O(n) under the lock: when a
 * call that added many nodes at once (a big batch, a run read whole) leaves
 * the cache over a bound after a full step, or removed runs are still to be
 * freed, evict_more asks the writer thread to go on, a step per hold of the
 * lock, whether or not anything else comes. Lock held.
 */
void engine_evict(engine *e, const cache_run *keep)
{
    lockcheck_assert_held(&e->lock);
    cache_reap(e->cache, EVICT_STEP);
    uint64_t nodes = 0, runs = 0;
    while (nodes < EVICT_STEP && over_bounds(e)) {
        cache_evicted got = cache_evict_node(e->cache, keep);
        if (got == CACHE_EVICTED_NONE)
            break; /* every other node is queued */
        nodes++;
        runs += got == CACHE_EVICTED_RUN;
    }
    if (nodes)
        atomic_fetch_add_explicit(&e->stats.cache_nodes_evicted, nodes, memory_order_relaxed);
    if (runs)
        atomic_fetch_add_explicit(&e->stats.cache_evictions, runs, memory_order_relaxed);
    publish_cache_size(e);
    e->evict_more = (nodes == EVICT_STEP && over_bounds(e)) || cache_reaping(e->cache) > 0;
    if (e->evict_more)
        e->wake_writer = true;
}

/*
 * Removed runs still to be freed (a big one goes in pieces): the writer
 * frees them (evict_more), whether or not requests come. Lock held.
 */
static void reap_later(engine *e)
{
    if (cache_reaping(e->cache) > 0)
        e->evict_more = e->wake_writer = true;
}

/*
 * Forgets an unpinned run that holds nothing (a failed first submit, a
 * committed delete) or whose rows may differ from disk (a row of it was
 * isolated): the file is its truth again. Lock held.
 */
void engine_run_drop_if_idle(engine *e, cache_run *run)
{
    lockcheck_assert_held(&e->lock);
    if (run->pending == 0 && (run->nodes == 0 || run->stale)) {
        cache_run_remove(e->cache, run);
        publish_cache_size(e);
        reap_later(e);
    }
}

/*
 * Drops run (or marks it to be dropped once its queued writes commit) because
 * the store changed under it. Lock held.
 */
static void invalidate_run(engine *e, cache_run *run)
{
    run->stale = true;
    atomic_fetch_add_explicit(&e->stats.cache_invalidations, 1, memory_order_relaxed);
    engine_run_drop_if_idle(e, run);
}

void engine_runs_changed(engine *e, const char *const *run_ids, size_t n)
{
    assert(state_opened(e));
    lockcheck_lock(&e->lock);
    if (!run_ids) {
        cache_note_removed(e->cache, NULL);
        cache_mark_all_stale(e->cache);
        size_t dropped = 0;
        /*
         * Unpinned runs only; the pinned ones go as their writes commit. A
         * pinned run with clean nodes is on this list too (queued ops and a
         * loading batch point at it), so it is stepped over, not removed.
         */
        cache_run *run = cache_lru_first(e->cache);
        while (run) {
            cache_run *next = run->lru_next;
            if (run->pending == 0) {
                cache_run_remove(e->cache, run);
                dropped++;
            }
            run = next;
        }
        atomic_fetch_add_explicit(&e->stats.cache_invalidations, dropped, memory_order_relaxed);
        publish_cache_size(e);
        reap_later(e);
    } else {
        for (size_t i = 0; i < n; i++) {
            cache_note_removed(e->cache, run_ids[i]);
            cache_run *run = cache_run_find(e->cache, run_ids[i]);
            if (run)
                invalidate_run(e, run);
        }
    }
    engine_unlock(e); /* wakes the writer to free removed runs (evict_more) */
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
bool engine_queue_bytes_high(const engine *e)
{
    lockcheck_assert_held(&e->lock);
    return e->cfg.queue_max_bytes && e->queue_bytes >= e->cfg.queue_max_bytes / 2;
}

struct engine_follow {
    struct engine_follow *next;
    char run_id[NS_ID_MAX + 1];
    ns_row **rows;
    size_t n, cap;
    bool broken;    /* out of memory, or the run was deleted */
};

engine_follow *engine_follow_begin(engine *e, const char *run_id)
{
    engine_follow *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    snprintf(f->run_id, sizeof f->run_id, "%s", run_id);
    lockcheck_lock(&e->lock);
    f->next = e->follows;
    e->follows = f;
    lockcheck_unlock(&e->lock);
    return f;
}

bool engine_follow_end(engine *e, engine_follow *f, engine_page *changes)
{
    lockcheck_lock(&e->lock);
    engine_follow **at = &e->follows;
    while (*at != f)
        at = &(*at)->next;
    *at = f->next;
    lockcheck_unlock(&e->lock);
    *changes = (engine_page){ .rows = f->rows, .count = f->n };
    bool whole = !f->broken;
    free(f);
    return whole;
}

/* Files op with every follow of its run. Lock held. */
static void follow_add(engine *e, const ns_op *op)
{
    lockcheck_assert_held(&e->lock);
    const char *run_id = op->row ? op->row->run_id : op->delete_run;
    for (engine_follow *f = e->follows; f; f = f->next) {
        if (f->broken || strcmp(f->run_id, run_id) != 0)
            continue;
        if (!op->row) {
            f->broken = true;
            continue;
        }
        if (f->n == f->cap) {
            size_t cap = f->cap ? f->cap * 2 : 16;
            ns_row **grown = realloc(f->rows, cap * sizeof *grown);
            if (!grown) {
                f->broken = true;
                continue;
            }
            f->rows = grown;
            f->cap = cap;
        }
        model_row_ref(op->row);
        f->rows[f->n++] = op->row;
    }
}

/* Appends an op under e->lock; the caller checked there is room (queue_has_room). */
static void enqueue(engine *e, ns_op *op)
{
    lockcheck_assert_held(&e->lock);
    bool was_high = engine_queue_bytes_high(e);
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
    if (e->follows)
        follow_add(e, op);
    /* The one hook of every accepted change: after its seq, in seq order, under the lock. */
    if (e->on_change)
        e->on_change(e->on_change_ctx, op->row ? op->row->run_id : op->delete_run, op->row,
                     op->seq);
    /*
     * Wake the writer only when it may be waiting for this: the first op, a
     * full batch, a full queue, half the byte bound reached.
     */
    if (len == 1 || len == e->cfg.batch_size || len == queue_capacity(e->queue) ||
        (!was_high && engine_queue_bytes_high(e)))
        e->wake_writer = true;
}

void engine_unlock(engine *e)
{
    lockcheck_assert_held(&e->lock);
    bool wake = e->wake_writer;
    e->wake_writer = false;
    lockcheck_unlock(&e->lock);
    if (wake)
        pthread_cond_signal(&e->wake);
}

/* enqueue and reject for engine_batch.c, which accepts many updates under one hold of the lock. */
void engine_enqueue(engine *e, ns_op *op)
{
    enqueue(e, op);
}

void engine_reject(engine *e, ns_reject why)
{
    reject(e, why);
}

/*
 * Remembers [lo, hi], seqs between this instance's blocks that it never
 * handed out, for engine_durability_now; gaps durable_seq has passed go.
 * With every slot taken the oldest goes too: its seqs then read as not
 * durable until durable_seq passes them, which errs on the safe side.
 * Lock held.
 */
static void note_gap(engine *e, int64_t lo, int64_t hi)
{
    lockcheck_assert_held(&e->lock);
    int64_t durable = atomic_load(&e->stats.durable_seq);
    size_t kept = 0;
    for (size_t i = 0; i < e->n_gaps; i++) {
        if (e->gap_hi[i] <= durable)
            continue;
        e->gap_lo[kept] = e->gap_lo[i];
        e->gap_hi[kept++] = e->gap_hi[i];
    }
    if (kept == ENGINE_SEQ_GAPS) {
        memmove(e->gap_lo, e->gap_lo + 1, (kept - 1) * sizeof *e->gap_lo);
        memmove(e->gap_hi, e->gap_hi + 1, (kept - 1) * sizeof *e->gap_hi);
        kept--;
    }
    e->gap_lo[kept] = lo;
    e->gap_hi[kept++] = hi;
    e->n_gaps = kept;
}

/*
 * Makes sure the next `want` seqs (e->last_seq + 1 on) are this instance's
 * to hand out and above `above` (the highest seq of the nodes' current
 * states). With a shared
 * store the seqs come in blocks reserved in the store (other instances
 * hold other blocks), and a node last written by another instance may
 * carry a seq past our counter: then a fresh block, above every block
 * reserved so far, moves the counter past it. A store with one writer
 * needs neither. 0, or -1 when the store cannot reserve. Lock held.
 */
int engine_seq_room(engine *e, int64_t above, size_t want)
{
    lockcheck_assert_held(&e->lock);
    if (!e->shared ||
        (e->seq_block_last - e->last_seq >= (int64_t)want && e->last_seq >= above))
        return 0;
    int64_t first, last, floor = above > e->last_seq ? above : e->last_seq;
    int64_t block = (int64_t)want > SEQ_BLOCK ? (int64_t)want : SEQ_BLOCK;
    if (store_reader_seq_block(e->reader, floor, block, &first, &last) != 0) {
        engine_log(e, NS_LOG_ERROR, "seq-block-failed", "above=%lld", (long long)floor);
        return -1;
    }
    if (first > e->last_seq + 1)
        note_gap(e, e->last_seq + 1, first - 1);
    e->last_seq = first - 1;
    e->seq_block_last = last;
    return 0;
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
    cache_run *run = readthrough_run_node(e, run_id, node_id, true, &cur, &res);
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
    /* Above the node's seq, and the run's last delete (a shared store's blocks: run_seq_floor). */
    int64_t above = cur ? cur->seq : 0;
    if (engine_seq_room(e, above > run->deleted_seq ? above : run->deleted_seq, 1) != 0) {
        res = ENGINE_ERROR;
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
    ns_op op = { .row = row, .run = run, .forced = u->force };
    enqueue(e, &op);
    *out = row;
    res = ENGINE_ACCEPTED;
    goto done;
current:
    model_row_ref(cur);
    *out = cur;
    goto done;
drop:
    engine_run_drop_if_idle(e, run);
done:
    /* A new node, a bigger row or a node read from disk may pass a bound; what *out holds is referenced. */
    engine_evict(e, NULL);
    engine_unlock(e);
    return res;
}

/*
 * The highest seq a run's nodes are known to have had. A delete takes a seq
 * above it: with a shared store seqs come in blocks per instance, and a
 * delete numbered below a node another instance wrote, which a watcher saw,
 * would never be told to it (it resumes from above the delete). The other
 * way round, a write takes a seq above the run's last delete (cache_run's
 * deleted_seq, which a shared store's run cached anew reads from the store:
 * readthrough_run_node), or a watcher told of the delete would resume past
 * the write. Lock held.
 */
static int64_t run_seq_floor(const cache_run *run)
{
    return run->last_seq > run->evicted_seq ? run->last_seq : run->evicted_seq;
}

/*
 * Queues the delete of a cached run (id malloc'd, taken over; the caller
 * checked there is room) and returns its seq. The run stays cached, empty
 * and pinned, until the delete commits: a read must not find the old rows
 * on disk, and a write meanwhile starts the run afresh. *gone gets the rows
 * it held, to free without the lock. Lock held.
 */
static int64_t queue_delete(engine *e, cache_run *run, char *id, bool expire, cache_run **gone)
{
    lockcheck_assert_held(&e->lock);
    *gone = cache_run_take(e->cache, run);
    ns_op op = { .delete_run = id, .expire = expire, .run = run };
    enqueue(e, &op);
    run->deleted_seq = op.seq;
    publish_cache_size(e);
    return op.seq;
}

int engine_expire_run(engine *e, const char *run_id, int64_t cutoff_ms, int64_t max_seq,
                      cache_run **gone)
{
    lockcheck_assert_held(&e->lock);
    *gone = NULL;
    cache_run *run = cache_run_find(e->cache, run_id);
    if (run) {
        /* Something of it is queued (a write, a delete): the disk's view is old. */
        if (run->pending > 0)
            return 0;
        for (int st = 0; st < NS_STATUS_COUNT; st++)
            if (run->counts[st] && !model_status_terminal((ns_status)st))
                return 0;
        if (run->nodes && run->updated_at >= cutoff_ms)
            return 0;
    }
    char *id = strdup(run_id);
    ns_op probe = { .delete_run = id };
    int64_t floor = run && run_seq_floor(run) > max_seq ? run_seq_floor(run) : max_seq;
    if (!id || !queue_has_room(e, queue_op_bytes(&probe)) || engine_seq_room(e, floor, 1) != 0) {
        free(id);
        return -1;
    }
    if (!run && !(run = cache_run_add(e->cache, run_id))) {
        free(id);
        return -1;
    }
    queue_delete(e, run, id, true, gone);
    return 1;
}

int64_t engine_deleted_seq(engine *e, const char *run_id, bool *committed)
{
    assert(state_opened(e));
    /*
     * The cache first: a delete queued before this call is there until it
     * commits, and on record in the store from its commit on.
     */
    lockcheck_lock(&e->lock);
    cache_run *run = cache_run_find(e->cache, run_id);
    int64_t queued = run ? run->deleted_seq : 0;
    lockcheck_unlock(&e->lock);
    int64_t stored = 0;
    if (store_reader_deleted_seq(e->reader, run_id, &stored) != 0) {
        /*
         * The store cannot be read (PostgreSQL away): what this process
         * queued is all it knows. A resume must not fail for it: an
         * EventSource gives up on a 500 for good.
         */
        engine_log(e, NS_LOG_DEBUG, "deleted-seq-unread", "run_id=%s", run_id);
        stored = 0;
    }
    *committed = stored >= queued;
    return queued > stored ? queued : stored;
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
    /* Whole, light: the answer tells how many nodes went, which the keys tell. */
    cache_run *run = readthrough_run_whole(e, run_id, true, &res, &view);
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
    /* Shared store: above each seq of its nodes, which a watcher may have seen (run_seq_floor). */
    if (engine_seq_room(e, run ? run_seq_floor(run) : view->last_seq, 1) != 0) {
        res = ENGINE_ERROR;
        goto done;
    }
    /* Too big to cache whole: the run (in part, or not at all) is what gets emptied and pinned. */
    if (!run && !(run = cache_run_find(e->cache, run_id)) &&
        !(run = cache_run_add(e->cache, run_id))) {
        res = ENGINE_ERROR;
        goto done;
    }
    *deleted = nodes;
    *seq = queue_delete(e, run, id, false, &gone);
    id = NULL;
    res = ENGINE_ACCEPTED;
done:
    engine_unlock(e);
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
    if (readthrough_run_node(e, run_id, node_id, false, &row, res)) {
        if (row) {
            model_row_ref(row);
            *res = ENGINE_ACCEPTED;
        } else {
            *res = ENGINE_NOT_FOUND;
        }
        engine_evict(e, NULL); /* the node read may pass a bound; row is referenced */
    }
    lockcheck_unlock(&e->lock);
    return row;
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
    engine_result res = readthrough_list(e, run_id, status_mask, after, limit, page, cached);
    lockcheck_unlock(&e->lock);
    free(cached);
    if (res != ENGINE_ACCEPTED)
        page->count = 0;
    engine_page_cut(page, limit);
    return res;
}

void engine_page_cut(engine_page *page, size_t limit)
{
    size_t keep = 0, bytes = 0;
    while (keep < page->count && keep < limit && (keep == 0 || bytes < ENGINE_PAGE_MAX_BYTES))
        bytes += model_row_bytes(page->rows[keep++]);
    if (keep == page->count)
        return;
    for (size_t i = keep; i < page->count; i++)
        model_row_unref(page->rows[i]);
    page->count = keep;
    page->more = true;
}

void engine_page_free(engine_page *page)
{
    for (size_t i = 0; i < page->count; i++)
        model_row_unref(page->rows[i]);
    free(page->rows);
    memset(page, 0, sizeof *page);
}

int engine_page_push(engine_page *page, size_t *cap, ns_row *row)
{
    if (page->count == *cap) {
        size_t ncap = *cap ? *cap * 2 : 64;
        ns_row **grown = realloc(page->rows, ncap * sizeof *grown);
        if (!grown)
            return -1;
        page->rows = grown;
        *cap = ncap;
    }
    page->rows[page->count++] = row;
    return 0;
}

engine_result engine_scan(engine *e, const char *run_id, unsigned status_mask, size_t page,
                          int (*fn)(void *ctx, ns_row *row), void *ctx)
{
    char after[NS_ID_MAX + 1] = "";
    engine_page p;
    for (;;) {
        engine_result res = engine_list(e, run_id, status_mask, *after ? after : NULL, page, &p);
        for (size_t i = 0; res == ENGINE_ACCEPTED && i < p.count; i++)
            if (fn(ctx, p.rows[i]) != 0)
                res = ENGINE_ERROR;
        if (res == ENGINE_ACCEPTED && p.count)
            snprintf(after, sizeof after, "%s", p.rows[p.count - 1]->node_id);
        bool more = p.more;
        engine_page_free(&p);
        if (res != ENGINE_ACCEPTED || !more)
            return res;
    }
}

engine_result engine_summarize(engine *e, const char *run_id, engine_summary *out)
{
    assert(state_opened(e));
    lockcheck_assert_not_held(&e->lock);
    engine_result res = ENGINE_ERROR;
    cache_run *view = NULL;
    memset(out, 0, sizeof *out);
    lockcheck_lock(&e->lock);
    /* Light: counts need no outputs, and a big run's are most of its bytes. */
    const cache_run *run = readthrough_run_whole(e, run_id, true, &res, &view);
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

/* ---- state for the API ---- */

int64_t engine_durable_seq(engine *e)
{
    return atomic_load(&e->stats.durable_seq);
}

bool engine_shared(const engine *e)
{
    return e->shared;
}

engine_durability engine_durability_now(engine *e)
{
    engine_durability d = { 0 };
    if (!e->shared) {
        /* One writer, no blocks: durable_seq first, so a seq handed out after it is not covered. */
        d.durable_seq = atomic_load(&e->stats.durable_seq);
        d.last_seq = atomic_load(&e->stats.last_seq);
        return d;
    }
    lockcheck_assert_not_held(&e->lock);
    lockcheck_lock(&e->lock);
    d.durable_seq = atomic_load(&e->stats.durable_seq);
    d.last_seq = e->last_seq;
    for (size_t i = 0; i < e->n_gaps; i++) {
        if (e->gap_hi[i] <= d.durable_seq)
            continue;
        d.gap_lo[d.n_gaps] = e->gap_lo[i];
        d.gap_hi[d.n_gaps++] = e->gap_hi[i];
    }
    lockcheck_unlock(&e->lock);
    return d;
}

bool engine_durability_covers(const engine_durability *d, int64_t seq)
{
    if (seq <= d->durable_seq || seq > d->last_seq)
        return true;
    for (size_t i = 0; i < d->n_gaps; i++)
        if (seq >= d->gap_lo[i] && seq <= d->gap_hi[i])
            return true;
    return false;
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

void engine_on_change(engine *e, engine_change_fn *fn, void *ctx)
{
    assert(state_opened(e));
    lockcheck_assert_not_held(&e->lock);
    /* Calls run under the lock, so none is in progress once we hold it. */
    lockcheck_lock(&e->lock);
    e->on_change = fn;
    e->on_change_ctx = ctx;
    lockcheck_unlock(&e->lock);
}

void engine_flush_soon(engine *e)
{
    assert(state_opened(e));
    lockcheck_assert_not_held(&e->lock);
    lockcheck_lock(&e->lock);
    /*
     * An earlier ask still covering a queued op has set the commit's time
     * already: this one joins that commit, and the writer need not wake.
     */
    const ns_op *oldest = queue_peek(e->queue);
    bool pending = e->flush_asked_ns != 0 && oldest && oldest->seq <= e->flush_until;
    if (e->flush_until < e->last_seq)
        e->flush_until = e->last_seq;
    if (!pending) {
        e->flush_asked_ns = model_mono_ns();
        e->wake_writer = true;
    }
    engine_unlock(e);
}

/* The first remembered refusal with a seq at or above seq. Lock held. */
static size_t refused_lower_bound(const engine *e, int64_t seq)
{
    size_t lo = 0, hi = atomic_load_explicit(&e->n_refused, memory_order_relaxed);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (e->refused[mid].seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

engine_refusal engine_refused(engine *e, int64_t seq)
{
    assert(state_opened(e));
    lockcheck_assert_not_held(&e->lock);
    /* Nearly always nothing was refused: then no lock. */
    if (atomic_load(&e->n_refused) == 0)
        return ENGINE_NOT_REFUSED;
    engine_refusal why = ENGINE_NOT_REFUSED;
    lockcheck_lock(&e->lock);
    size_t i = refused_lower_bound(e, seq);
    if (i < atomic_load_explicit(&e->n_refused, memory_order_relaxed) && e->refused[i].seq == seq)
        why = e->refused[i].why;
    lockcheck_unlock(&e->lock);
    return why;
}

bool engine_refused_between(engine *e, int64_t lo, int64_t hi)
{
    assert(state_opened(e));
    lockcheck_assert_not_held(&e->lock);
    if (atomic_load(&e->n_refused) == 0)
        return false;
    lockcheck_lock(&e->lock);
    size_t i = refused_lower_bound(e, lo);
    bool found = i < atomic_load_explicit(&e->n_refused, memory_order_relaxed) &&
                 e->refused[i].seq <= hi;
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

/* ---- backups ---- */

struct engine_backup {
    engine *e;
    store_backup *sb;
    bool released;      /* its slot given back (read to the end, or closed) */
};

/*
 * The slot is given back as soon as the last byte has been read, not at
 * close: the transport frees the stream a moment after the client has it
 * all (closing a large unlinked file takes a while), and a client that
 * asks again at once must not be told a backup is still in progress.
 */
static void backup_release(engine_backup *b)
{
    if (!b->released) {
        b->released = true;
        atomic_fetch_sub(&b->e->backups, 1);
    }
}

engine_backup_result engine_backup_open(engine *e, engine_backup **out,
                                        char *err, size_t errlen)
{
    unsigned max = e->cfg.max_backups > 0 ? e->cfg.max_backups : 1;
    engine_backup *b = NULL;
    store_backup_result r;

    *out = NULL;
    /* Take a slot first: a refused request must cost nothing. */
    if (atomic_fetch_add(&e->backups, 1) >= max) {
        atomic_fetch_sub(&e->backups, 1);
        snprintf(err, errlen, "%u backup%s already in progress", max,
                 max == 1 ? " is" : "s are");
        return ENGINE_BACKUP_BUSY;
    }
    b = calloc(1, sizeof *b);
    if (b == NULL) {
        snprintf(err, errlen, "out of memory");
        atomic_fetch_sub(&e->backups, 1);
        return ENGINE_BACKUP_FAILED;
    }
    b->e = e;
    r = store_backup_open(e->db_path, &b->sb, err, errlen);
    if (r != STORE_BACKUP_OK) {
        free(b);
        atomic_fetch_sub(&e->backups, 1);
        return r == STORE_BACKUP_UNSUPPORTED ? ENGINE_BACKUP_UNSUPPORTED
                                             : ENGINE_BACKUP_FAILED;
    }
    *out = b;
    return ENGINE_BACKUP_OK;
}

uint64_t engine_backup_size(const engine_backup *b)
{
    return store_backup_size(b->sb);
}

ssize_t engine_backup_read(engine_backup *b, uint64_t pos, char *buf, size_t n)
{
    ssize_t got = store_backup_read(b->sb, pos, buf, n);

    if (got >= 0 && pos + (uint64_t)got >= store_backup_size(b->sb))
        backup_release(b);
    return got;
}

void engine_backup_close(engine_backup *b)
{
    if (b == NULL)
        return;
    store_backup_close(b->sb);
    backup_release(b);
    free(b);
}
