/*
 * The engine's life cycle: engine_open (the lock, the sidecar replayed, seq
 * resumed, the listener and the writer thread started), engine_drain and
 * engine_close (the shutdown budget, the writer joined, everything freed).
 * Separate from engine.c, which serves the engine while it runs: this is
 * what happens before the first request and after the last.
 */
#include "engine.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "engine_internal.h"
#include "logfmt.h"
#include "writer_thread.h"

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
    for (int i = 0; store_replay(e->store, e->instance_id, &got, err, errlen) != 0; i++) {
        if (i + 1 == REPLAY_TRIES)
            return -1;
        nap(backoff);
        backoff *= 2;
    }
    char qpath[4300];
    if (got.torn)
        engine_log(e, NS_LOG_ERROR, "spill-piece-torn",
              "path=%s detail=\"the process writing the sidecar died inside a piece; "
              "that piece was rolled back, the pieces committed before it are kept\"",
              writer_thread_spill_qpath(e, qpath, sizeof qpath));
    if (got.pieces || got.rows || got.deletes)
        engine_log(e, NS_LOG_WARN, "spill-replayed", "rows=%zu deletes=%zu pieces=%zu path=%s",
              got.rows, got.deletes, got.pieces, writer_thread_spill_qpath(e, qpath, sizeof qpath));
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
    /* Blocks are recorded before use (engine_seq_room): no slack, and no flag other instances share. */
    if (e->shared)
        return 0;
    if (store_meta_get(e->store, META_RUNNING, &running) < 0 ||
        store_meta_get(e->store, META_SEQ_SLACK, &slack) < 0)
        goto err;
    if (running == 1 && slack > 0) {
        engine_log(e, NS_LOG_WARN, "unclean-stop", "seq_skipped=%lld last_seq=%lld",
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

/*
 * The sidecar when --spill-path is not given: beside the database's real
 * file (links resolved), so that every name of it finds the same one. One
 * left beside the name given (by a build that did not resolve it) is still
 * taken while it is there, or its rows would wait for a start under that
 * name.
 */
static void default_spill_path(const char *db_path, char *out, size_t size)
{
    char *real = store_is_pg(db_path) ? NULL : dblock_resolve(db_path);
    store_default_spill_path(real ? real : db_path, out, size);
    if (real && strcmp(real, db_path) != 0) {
        char given[4200];
        store_default_spill_path(db_path, given, sizeof given);
        if (access(out, F_OK) != 0 && access(given, F_OK) == 0)
            snprintf(out, size, "%s", given);
    }
    free(real);
}

/* Frees what engine_open built; the writer thread is not running. */
static void engine_free(engine *e)
{
    store_listen_stop(e->listener); /* first: it calls into the cache */
    store_reader_close(e->reader);
    store_close(e->store);
    free(e->batch);
    free(e->isolated);
    free(e->refused);
    queue_free(e->queue);
    cache_free(e->cache);
    pthread_cond_destroy(&e->wake);
    pthread_cond_destroy(&e->callback_done);
    lockcheck_destroy(&e->lock);
    for (size_t i = 0; i < ENGINE_BIG_RUNS; i++)
        free(e->big_runs[i]);
    dblock_release(e->spill_lock);
    dblock_release(e->dblock);
    free(e->db_path);
    free(e);
}

/*
 * Copies of backups a killed process left behind hold a database's worth
 * of disk each. Only ours could be there (we hold the database), and a
 * failure to remove them is worth a warning, not a refusal to start.
 */
static void sweep_backups(engine *e)
{
    char why[512];
    char quoted[1100];
    size_t removed = 0;

    if (store_backup_sweep(e->db_path, &removed, why, sizeof why) != 0)
        engine_log(e, NS_LOG_WARN, "backup-sweep-failed", "error=%s",
                   logfmt_quote(quoted, sizeof quoted, why));
    if (removed > 0)
        engine_log(e, NS_LOG_WARN, "backup-leftovers-removed", "files=%zu", removed);
}

/*
 * store_on_checkpoint's listener (the checkpoint thread, or the writer's
 * inside a commit): counts a failed round, and logs the first of a streak
 * and the round that ends it. A failing checkpoint delays no commit (it is
 * tried once a second, off the commit path), but the WAL then grows with
 * every commit (wal_frames) until the disk is full.
 */
static void on_checkpoint(void *ctx, uint64_t failures, const char *error)
{
    engine *e = ctx;
    atomic_store_explicit(&e->stats.checkpoint_failures, failures, memory_order_relaxed);
    if (error != NULL && !e->ckpt_failing) {
        char why[512];
        engine_log(e, NS_LOG_WARN, "checkpoint-failed",
                   "failures=%llu error=%s detail=\"retried; the WAL grows until one completes\"",
                   (unsigned long long)failures, logfmt_quote(why, sizeof why, error));
    } else if (error == NULL && e->ckpt_failing) {
        engine_log(e, NS_LOG_INFO, "checkpoint-recovered", "failures=%llu",
                   (unsigned long long)failures);
    }
    e->ckpt_failing = error != NULL;
}

/*
 * A random id for this instance's notifications: other instances sharing
 * the store ignore nothing of ours, and we ignore our own. Unique per
 * process start, so a restarted instance is another instance.
 */
static int make_instance_id(engine *e, char *err, size_t errlen)
{
    unsigned char r[8];
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t n = getrandom(r + got, sizeof r - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            snprintf(err, errlen, "cannot make an instance id: %s", strerror(errno));
            return -1;
        }
        got += (size_t)n;
    }
    for (size_t i = 0; i < sizeof r; i++)
        snprintf(e->instance_id + 2 * i, 3, "%02x", r[i]);
    return 0;
}

/*
 * The cache's question at an eviction (lock held): whether this instance
 * handed seq out, not past its last seq nor in a gap between its blocks.
 */
static bool seq_is_own(void *ctx, int64_t seq)
{
    engine *e = ctx;
    lockcheck_assert_held(&e->lock);
    if (seq > e->last_seq)
        return false;
    for (size_t i = 0; i < e->n_gaps; i++)
        if (seq >= e->gap_lo[i] && seq <= e->gap_hi[i])
            return false;
    return true;
}

/* The store's listener (its thread): another instance committed to these runs. */
static void on_runs_changed(void *ctx, const char *const *run_ids, size_t n)
{
    engine *e = ctx;
    if (!run_ids)
        engine_log(e, NS_LOG_WARN, "notifications-resumed",
                   "instance=%s cache=dropped", e->instance_id);
    engine_runs_changed(e, run_ids, n);
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
    if (lockcheck_init(&e->lock) != 0 || lockcheck_cond_init(&e->wake) != 0 ||
        pthread_cond_init(&e->callback_done, NULL) != 0) {
        /* Never on Linux; engine_free would destroy what was not made. */
        snprintf(err, errlen, "cannot create the engine's lock");
        free(e->db_path);
        free(e);
        return NULL;
    }
    e->cache = cache_new();
    e->queue = queue_new(cfg->queue_capacity);
    e->batch = calloc(cfg->batch_size, sizeof *e->batch);
    if (!e->db_path || !e->cache || !e->queue || !e->batch) {
        snprintf(err, errlen, "out of memory");
        goto err;
    }
    char spill[4200];
    if (cfg->spill_path && cfg->spill_path[0])
        snprintf(spill, sizeof spill, "%s", cfg->spill_path);
    else
        default_spill_path(e->db_path, spill, sizeof spill);
    /*
     * Before anything opens the database or replays its sidecar. A shared
     * (PostgreSQL) database has many writers by design; what one process
     * owns there is its sidecar. A SQLite file is one process's, and so is
     * its sidecar: two servers given one --spill-path would mix their rows.
     */
    if (!store_is_pg(e->db_path) && !(e->dblock = dblock_acquire(e->db_path, true, err, errlen)))
        goto err;
    if (!(e->spill_lock = dblock_acquire(spill, false, err, errlen)))
        goto err;
    sweep_backups(e);
    e->store = store_open(e->db_path, cfg->synchronous_full, err, errlen);
    if (!e->store)
        goto err;
    if (store_set_spill_file(e->store, spill) != 0) {
        snprintf(err, errlen, "out of memory");
        goto err;
    }
    e->cfg.spill_path = NULL; /* the caller's; store_spill_file has our copy */
    store_on_checkpoint(e->store, on_checkpoint, e);
    e->shared = store_shared(e->store);
    if (e->shared)
        cache_set_own_seqs(e->cache, seq_is_own, e);
    if (cfg->retention > 0 && !store_can_expire(e->store)) {
        snprintf(err, errlen, "--retention is not supported by this store");
        goto err;
    }
    /* Before the replay, whose commit names this instance to the others. */
    if (make_instance_id(e, err, errlen) != 0)
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
    /* Before anything is cached or written: every foreign commit from now on is heard. */
    e->listener = store_listen_start(e->db_path, e->instance_id, on_runs_changed, e,
                                     err, errlen);
    if (!e->listener && err[0])
        goto err;
    if (e->listener)
        engine_log(e, NS_LOG_INFO, "listening", "instance=%s", e->instance_id);
    if (pthread_create(&e->writer, NULL, writer_thread_main, e) != 0) {
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
static void budget_start(engine *e, int64_t now)
{
    lockcheck_assert_held(&e->lock);
    if (e->drain_started_ns)
        return;
    int64_t budget = (int64_t)(e->cfg.shutdown_timeout * 1e9);
    int64_t reserve = budget / 4 < SPILL_RESERVE_NS ? budget / 4 : SPILL_RESERVE_NS;
    e->drain_started_ns = now;
    e->give_up_ns = now + budget - reserve;
    e->spill_end_ns = now + budget + SPILL_OVERRUN_NS;
    /*
     * The shutdown's time bound holds for the store too: from now on no
     * commit copies a long WAL (one a reader held back) inline, and the
     * close copies it only as far as the budget goes.
     */
    store_close_by(e->store, e->spill_end_ns + CLOSE_SLACK_NS);
    e->drain_processed = atomic_load(&e->stats.updates_processed);
}

size_t engine_close_counted(engine *e, engine_closing *report)
{
    if (!e)
        return 0;
    lockcheck_lock(&e->lock);
    /* Called once, after engine_open returned e (DRAINING or not; CLOSED if the writer ran out of time). */
    assert(state_opened(e) && state_of(e) != ENGINE_CLOSING);
    budget_start(e, model_mono_ns());
    state_advance(e, ENGINE_CLOSING);
    pthread_cond_signal(&e->wake);
    lockcheck_unlock(&e->lock);
    pthread_join(e->writer, NULL);
    /* Ops queued after the writer gave up (out of time, still draining) go nowhere. */
    lockcheck_lock(&e->lock);
    writer_thread_drop_queue(e);
    size_t unflushed = e->unflushed;
    size_t spilled = e->spilled;
    lockcheck_unlock(&e->lock);
    if (unflushed)
        engine_log(e, NS_LOG_ERROR, "flush-incomplete", "unflushed=%zu", unflushed);
    /*
     * Every seq handed out is on disk: the next start needs no skip. Not
     * when some went to the sidecar: a start that does not replay it (run
     * with another --spill-path) must still hand out seqs above them, or
     * the sidecar's later replay would judge its rows and deletes against
     * newer writes with seqs below theirs.
     */
    else if (!e->shared && spilled == 0 && store_meta_set(e->store, META_RUNNING, 0) != 0) {
        char why[512];
        engine_log(e, NS_LOG_WARN, "clean-stop-not-recorded", "error=%s",
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

void engine_drain(engine *e)
{
    engine_drain_since(e, model_mono_ns());
}

void engine_drain_since(engine *e, int64_t since_ns)
{
    lockcheck_lock(&e->lock);
    /* Before engine_close; twice is harmless. */
    assert(state_opened(e) && state_of(e) != ENGINE_CLOSING);
    state_advance(e, ENGINE_DRAINING);
    budget_start(e, since_ns);
    /* Shutting down: what is queued from now on is written at once, not after batch_interval. */
    e->flush_until = INT64_MAX;
    pthread_cond_signal(&e->wake);
    lockcheck_unlock(&e->lock);
}
