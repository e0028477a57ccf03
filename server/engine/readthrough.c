#include "readthrough.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "logfmt.h"

/* store_reader_load_run's callback: fills a detached run, outside the lock. */
static int load_into(void *ctx, ns_row *row)
{
    if (cache_node_load(NULL, ctx, row) != 0) {
        model_row_unref(row);
        return -1;
    }
    return 0;
}

/* store_reader_load_page's callback: collects a page's rows. */
typedef struct row_vec {
    ns_row **rows;
    size_t n, cap;
    size_t bytes;   /* row_vec_push_page: what they take */
    bool full;      /* row_vec_push_page: stopped at ENGINE_PAGE_MAX_BYTES */
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

/* row_vec_push for a page: ends the read once its rows take ENGINE_PAGE_MAX_BYTES. */
static int row_vec_push_page(void *ctx, ns_row *row)
{
    row_vec *v = ctx;
    size_t bytes = model_row_bytes(row);
    if (row_vec_push(ctx, row) != 0)
        return -1;
    v->bytes += bytes;
    v->full = v->bytes >= ENGINE_PAGE_MAX_BYTES;
    return v->full ? 1 : 0;
}

static void row_vec_free(row_vec *v)
{
    for (size_t i = 0; i < v->n; i++)
        model_row_unref(v->rows[i]);
    free(v->rows);
    v->rows = NULL;
    v->n = v->cap = 0;
}

/* The durable seq, read under the lock before a read of the file without it. */
static int64_t durable_now(engine *e)
{
    lockcheck_assert_held(&e->lock);
    return atomic_load(&e->stats.durable_seq);
}

/*
 * Whether rows read from the file without the lock may be older than the
 * cache knew meanwhile, so the read must be done again: the run was removed
 * (cache_removed_since), or a node of it was evicted whose row was
 * committed after `durable` (read before the lock was dropped). Every row
 * committed up to `durable` is in what the read saw; a row evicted since
 * with a higher seq may not be, and the cache no longer holds it to win the
 * merge. Evictions take the least recently used nodes, long committed, so
 * this is rare. Lock held.
 */
static bool read_overtaken(engine *e, const char *run_id, uint64_t removals, int64_t durable)
{
    lockcheck_assert_held(&e->lock);
    if (cache_removed_since(e->cache, run_id, removals))
        return true;
    const cache_run *run = cache_run_find(e->cache, run_id);
    return run && run->evicted_seq > durable;
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

/* Whether run_id was found too big to cache whole lately. Lock held. */
static bool known_big(const engine *e, const char *run_id)
{
    for (size_t i = 0; i < ENGINE_BIG_RUNS; i++)
        if (e->big_runs[i] && strcmp(e->big_runs[i], run_id) == 0)
            return true;
    return false;
}

/* Remembers run_id as too big to cache whole, in place of the oldest. Lock held. */
static void note_big(engine *e, const char *run_id)
{
    char *id = strdup(run_id);
    if (!id)
        return; /* only a later read is heavier */
    free(e->big_runs[e->big_next]);
    e->big_runs[e->big_next] = id;
    e->big_next = (e->big_next + 1) % ENGINE_BIG_RUNS;
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
 * unlocking: freeing a big run takes a while) and *res ACCEPTED. Such a run
 * is remembered (engine.big_runs), and a caller that needs only its counts
 * (light) gets the view read light from then on: rows without their text
 * and JSON, which a big run's outputs would make the bulk of every read.
 */
cache_run *readthrough_run_whole(engine *e, const char *run_id, bool light, engine_result *res,
                                cache_run **view)
{
    lockcheck_assert_held(&e->lock);
    *view = NULL;
    light = light && known_big(e, run_id);
    for (int tries = 0; tries < LOAD_TRIES; tries++) {
        cache_run *run = cache_run_find(e->cache, run_id);
        if (run && run->complete) {
            cache_touch(e->cache, run);
            return run;
        }
        uint64_t removals = cache_removals(e->cache);
        int64_t durable = durable_now(e);
        /* The last try reads under the lock: slower for everyone, but always right. */
        bool locked = tries == LOAD_TRIES - 1;
        /* Shared store: a run cached anew learns its last delete (readthrough_run_node). */
        bool fresh = e->shared && !run;
        if (!locked)
            lockcheck_unlock(&e->lock);
        size_t skipped = 0;
        cache_run *loaded = cache_run_new(run_id);
        int rc = loaded ? store_reader_load_run(e->reader, run_id, light, load_into, loaded,
                                                &skipped)
                        : -1;
        if (rc == 0 && fresh && store_reader_deleted_seq(e->reader, run_id, &loaded->deleted_seq))
            loaded->deleted_seq = 0; /* unknown: the floor is the nodes' seqs alone */
        if (skipped)
            engine_log(e, NS_LOG_WARN, "rows-unreadable", "run_id=%s skipped=%zu", run_id, skipped);
        if (!locked)
            lockcheck_lock(&e->lock);
        if (rc != 0) {
            cache_run_free(loaded);
            engine_log(e, NS_LOG_ERROR, "read-through-failed", "run_id=%s", run_id);
            *res = ENGINE_ERROR;
            return NULL;
        }
        run = cache_run_find(e->cache, run_id);
        if ((run && run->complete) || read_overtaken(e, run_id, removals, durable)) {
            cache_run_free(loaded);
            continue; /* someone else completed it, or the file may have moved on */
        }
        size_t found = loaded->nodes;
        if (found > 0) {
            atomic_fetch_add_explicit(&e->stats.cache_loads, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&e->stats.cache_run_loads, 1, memory_order_relaxed);
        }
        if (light || !may_cache_whole(e, loaded)) {
            if (!light)
                note_big(e, run_id);
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
                engine_run_drop_if_idle(e, run);
            *res = ENGINE_ERROR;
            return NULL;
        }
        cache_touch(e->cache, run); /* the most recent, so evict spares it alone */
        engine_evict(e, run);
        return run;
    }
    *res = ENGINE_ERROR; /* not reached: the last try holds the lock throughout */
    return NULL;
}

/*
 * The run holding node_id, with the node's current row in *cur (NULL for a
 * node that has none): a run not cached, or cached in part without this
 * node, gets just that row read from SQLite, not the whole run; no read at
 * all when the cache knows the node is not stored (cache_node_absent: a
 * run known since it was new or read whole, and the node not evicted), so
 * a new node of a busy bounded run costs no read. Locking and
 * races as in readthrough_run_whole. A run with no rows on disk is cached complete
 * (empty), so its later new nodes need no read at all. With create false
 * nothing is cached for a node of an uncached run that is not on disk: NULL
 * with NOT_FOUND.
 */
cache_run *readthrough_run_node(engine *e, const char *run_id, const char *node_id,
                               bool create, ns_row **cur, engine_result *res)
{
    lockcheck_assert_held(&e->lock);
    *cur = NULL;
    for (int tries = 0; tries < LOAD_TRIES; tries++) {
        cache_run *run = cache_run_find(e->cache, run_id);
        if (run) {
            ns_row *row = cache_node_use(e->cache, run, node_id);
            if (row || cache_node_absent(run, node_id)) {
                cache_touch(e->cache, run);
                *cur = row;
                return run;
            }
        }
        uint64_t removals = cache_removals(e->cache);
        int64_t durable = durable_now(e);
        bool locked = tries == LOAD_TRIES - 1;
        /* Shared store: a run cached anew learns its last delete, a floor for its seqs. */
        bool fresh = e->shared && !run;
        if (!locked)
            lockcheck_unlock(&e->lock);
        ns_row *row = NULL;
        bool run_has_rows = false;
        int64_t deleted = 0;
        int rc = store_reader_load_node(e->reader, run_id, node_id, &row, &run_has_rows);
        if (rc >= 0 && fresh && store_reader_deleted_seq(e->reader, run_id, &deleted) != 0)
            deleted = 0; /* unknown: the floor is the node's seq alone, as before */
        if (rc > 0)
            engine_log(e, NS_LOG_WARN, "rows-unreadable", "run_id=%s node_id=%s skipped=1", run_id,
                  node_id);
        if (!locked)
            lockcheck_lock(&e->lock);
        if (rc < 0) {
            engine_log(e, NS_LOG_ERROR, "read-through-failed", "run_id=%s node_id=%s", run_id,
                  node_id);
            *res = ENGINE_ERROR;
            return NULL;
        }
        run = cache_run_find(e->cache, run_id);
        if ((run && (cache_node_get(run, node_id) || cache_node_absent(run, node_id))) ||
            read_overtaken(e, run_id, removals, durable)) {
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
            run->complete = run->known = !run_has_rows;
        }
        if (deleted > run->deleted_seq)
            run->deleted_seq = deleted;
        cache_touch(e->cache, run); /* the most recent, so evict spares it alone */
        if (row) {
            if (cache_node_load(e->cache, run, row) != 0) {
                model_row_unref(row);
                engine_run_drop_if_idle(e, run);
                *res = ENGINE_ERROR;
                return NULL;
            }
            atomic_fetch_add_explicit(&e->stats.cache_loads, 1, memory_order_relaxed);
        }
        engine_evict(e, run);
        *cur = row;
        return run;
    }
    *res = ENGINE_ERROR; /* not reached: the last try holds the lock throughout */
    return NULL;
}

/*
 * A page of a run that is not cached whole, read through: the stored rows
 * of the page (store_reader_load_page, without the lock) merged with the
 * cached ones, which win, so a listing never reads a run whole. What the
 * disk read covers ends at its last row when more follow; if the merge
 * needs rows beyond that (cached nodes took the place of stored ones), a
 * longer stretch is read. The disk read also ends once its rows take
 * ENGINE_PAGE_MAX_BYTES: the page then ends with it (a shorter page, more
 * following), or, when none of its rows made the page, the next read starts
 * after it. Races as in readthrough_run_whole. Lock held, dropped while
 * reading; cached has room for limit + 1.
 */
engine_result readthrough_list(engine *e, const char *run_id, unsigned status_mask,
                                  const char *after, size_t limit, engine_page *page,
                                  ns_row **cached)
{
    lockcheck_assert_held(&e->lock);
    size_t want = limit + 1;
    char past[NS_ID_MAX + 1]; /* where a read that passed over big rows goes on */
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
        int64_t durable = durable_now(e);
        bool locked = tries == LOAD_TRIES - 1;
        if (!locked)
            lockcheck_unlock(&e->lock);
        row_vec disk = { 0 };
        store_page sp;
        int rc = store_reader_load_page(e->reader, run_id, after, status_mask, want,
                                        row_vec_push_page, &disk, &sp);
        if (sp.skipped)
            engine_log(e, NS_LOG_WARN, "rows-unreadable", "run_id=%s skipped=%zu", run_id,
                  sp.skipped);
        if (!locked)
            lockcheck_lock(&e->lock);
        if (rc != 0) {
            row_vec_free(&disk);
            engine_log(e, NS_LOG_ERROR, "read-through-failed", "run_id=%s", run_id);
            return ENGINE_ERROR;
        }
        run = cache_run_find(e->cache, run_id);
        if ((run && run->complete) || read_overtaken(e, run_id, removals, durable)) {
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
        bool passed_over = false;
        if (!full && end && disk.full) {
            /* The read ended on bytes, not on want: a longer one would end there again. */
            if (k > 0) {
                full = true;
            } else {
                snprintf(past, sizeof past, "%s", end);
                after = past;
                passed_over = true;
            }
        }
        row_vec_free(&disk);
        if (full || !end) {
            page->count = k;
            page->more = full;
            return ENGINE_ACCEPTED;
        }
        if (passed_over)
            continue; /* every row read was passed over: on from the last */
        /* Cached nodes took stored rows' places: read a longer stretch. */
        for (size_t x = 0; x < k; x++)
            model_row_unref(page->rows[x]);
        want *= 2;
    }
    return ENGINE_ERROR; /* not reached: the last try holds the lock throughout */
}
