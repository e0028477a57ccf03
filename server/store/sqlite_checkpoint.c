/*
 * sqlite_checkpoint: the write connection's WAL checkpoints, kept off the
 * commit path.
 *
 * SQLite's automatic checkpoint runs inside the COMMIT that crosses its
 * bound, so the waiters of that commit, and every batch queued behind it,
 * waited out a whole checkpoint (30-40 ms for 10,000 pages here: the p99 of
 * ?wait=true under synchronous=normal). Instead, the commit's WAL hook only
 * asks a thread of our own, with a connection of its own, for a PASSIVE
 * checkpoint once the un-checkpointed part of the WAL reaches soft_frames;
 * PASSIVE checkpoints never block the writer. A WAL is restarted only by a
 * write that begins when it is fully checkpointed, which under a steady
 * stream of commits the thread never sees, so once the WAL holds
 * hard_frames the commit checkpoints inline as SQLite would: by then the
 * thread has copied all but the last few pages, so the stall is short, and
 * the next write starts the WAL over. The inline checkpoint waits for a
 * round of the thread in progress rather than being refused by it.
 */
#include "sqlite_internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "lockcheck.h"

struct store_ckpt {
    sqlite3 *db;                /* the thread's own connection */
    int soft_frames, hard_frames;
    pthread_t thread;
    lockcheck_mutex mu;         /* guards asked and stop */
    pthread_cond_t wake;
    bool asked, stop;
    pthread_mutex_t run_mu;     /* held by whichever thread checkpoints */
    /* What the last round saw: frames in the WAL, and of them checkpointed. */
    atomic_int seen_log, seen_done;
};

/* One PASSIVE checkpoint on db, remembered for the hook's next estimate. run_mu held. */
static void ckpt_round(store_ckpt *c, sqlite3 *db)
{
    int log = 0, done = 0;
    if (sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_PASSIVE, &log, &done)
        == SQLITE_OK) {
        atomic_store(&c->seen_log, log);
        atomic_store(&c->seen_done, done);
    }
}

/*
 * sqlite3_wal_hook, on the writer's thread after each commit: frames is the
 * WAL's length. A WAL shorter than the last round saw has been restarted
 * since, so all of it is new. Past hard_frames the commit checkpoints itself
 * only once the thread has left little to do (a quarter of soft_frames:
 * what costs is syncing and copying what the thread has not), and asks the
 * thread to get there otherwise; at twice hard_frames it no longer waits.
 */
static int ckpt_on_commit(void *arg, sqlite3 *db, const char *schema, int frames)
{
    store_ckpt *c = arg;
    (void)schema;
    int log = atomic_load(&c->seen_log);
    int behind = frames >= log ? frames - atomic_load(&c->seen_done) : frames;
    bool long_wal = frames >= c->hard_frames;
    if (long_wal && behind > 0 &&
        (behind <= c->soft_frames / 4 || frames / 2 >= c->hard_frames)) {
        pthread_mutex_lock(&c->run_mu);
        ckpt_round(c, db);
        pthread_mutex_unlock(&c->run_mu);
    } else if (behind >= c->soft_frames || (long_wal && behind > 0)) {
        lockcheck_lock(&c->mu);
        if (!c->asked) {
            c->asked = true;
            pthread_cond_signal(&c->wake);
        }
        lockcheck_unlock(&c->mu);
    }
    return SQLITE_OK;
}

static void *ckpt_main(void *arg)
{
    store_ckpt *c = arg;
    lockcheck_lock(&c->mu);
    while (!c->stop) {
        if (!c->asked) {
            lockcheck_wait(&c->wake, &c->mu);
            continue;
        }
        c->asked = false;
        lockcheck_unlock(&c->mu);
        pthread_mutex_lock(&c->run_mu);
        ckpt_round(c, c->db);
        pthread_mutex_unlock(&c->run_mu);
        lockcheck_lock(&c->mu);
    }
    lockcheck_unlock(&c->mu);
    return NULL;
}

store_ckpt *store_ckpt_start(sqlite3 *writer, const char *path, int soft_frames,
                             int hard_frames, char *err, size_t errlen)
{
    store_ckpt *c = calloc(1, sizeof *c);
    if (c == NULL) {
        store_set_err(err, errlen, path, "out of memory");
        return NULL;
    }
    c->soft_frames = soft_frames;
    c->hard_frames = hard_frames;
    int64_t version;
    /* A first read makes the connection open the WAL, or its checkpoints do nothing. */
    if (sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL)
            != SQLITE_OK
        || sqlite3_busy_timeout(c->db, STORE_READ_BUSY_MS) != SQLITE_OK
        || store_query_int(c->db, "PRAGMA schema_version", &version) != SQLITE_OK) {
        store_set_db_err(err, errlen, path, c->db, "opening the checkpoint connection");
        sqlite3_close(c->db);
        free(c);
        return NULL;
    }
    bool mu = lockcheck_init(&c->mu) == 0;
    bool wake = mu && pthread_cond_init(&c->wake, NULL) == 0;
    bool run_mu = wake && pthread_mutex_init(&c->run_mu, NULL) == 0;
    if (!run_mu || pthread_create(&c->thread, NULL, ckpt_main, c) != 0) {
        store_set_err(err, errlen, path, "cannot start the checkpoint thread");
        if (run_mu)
            pthread_mutex_destroy(&c->run_mu);
        if (wake)
            pthread_cond_destroy(&c->wake);
        if (mu)
            lockcheck_destroy(&c->mu);
        sqlite3_close(c->db);
        free(c);
        return NULL;
    }
    /* Replaces SQLite's automatic checkpoint on this connection. */
    sqlite3_wal_hook(writer, ckpt_on_commit, c);
    return c;
}

void store_ckpt_stop(store_ckpt *c, sqlite3 *writer)
{
    if (c == NULL)
        return;
    sqlite3_wal_hook(writer, NULL, NULL);
    lockcheck_lock(&c->mu);
    c->stop = true;
    pthread_cond_signal(&c->wake);
    lockcheck_unlock(&c->mu);
    pthread_join(c->thread, NULL);
    pthread_mutex_destroy(&c->run_mu);
    pthread_cond_destroy(&c->wake);
    lockcheck_destroy(&c->mu);
    sqlite3_close(c->db);
    free(c);
}
