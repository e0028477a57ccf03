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
 * the thread's checkpoints never block the writer's commits. A round a
 * reader cut short (it cannot copy past a reader's snapshot), or one held
 * off by another connection's checkpoint (SQLITE_BUSY), is tried again
 * when asked or CKPT_RETRY_MS later, so a WAL left behind by the last
 * commits of a burst is copied too. A WAL is restarted only by a
 * write that begins when it is fully checkpointed, which under a steady
 * stream of commits the thread never sees, so once the WAL holds
 * hard_frames the commit checkpoints inline as SQLite would: by then the
 * thread has copied all but the last few pages, so the stall is short, and
 * the next write starts the WAL over. The inline checkpoint waits for a
 * round of the thread in progress rather than being refused by it.
 *
 * A round that fails (an error: not one cut short or held off) is counted
 * and told to the listener (store_on_checkpoint), and so is the first round
 * without an error after it: a checkpoint that keeps failing otherwise
 * shows only as a WAL that never stops growing. While rounds fail, the
 * thread tries once every CKPT_RETRY_MS whatever the commits ask, and the
 * commits do not checkpoint inline: a failing disk costs one attempt a
 * second, on this thread, not one per commit on the writer's.
 */
#include "sqlite_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lockcheck.h"
#include "model.h"

/* Pause before a round that was cut short or failed is tried again. */
#define CKPT_RETRY_MS 1000

struct store_ckpt {
    sqlite3 *db;                /* the thread's own connection */
    int soft_frames, hard_frames;
    pthread_t thread;
    lockcheck_mutex mu;         /* guards asked, stop, paused */
    pthread_cond_t wake;        /* monotonic: the retry is a timed wait */
    bool asked, stop, paused;
    atomic_bool closing;        /* store_ckpt_closing: no commit checkpoints inline */
    _Atomic(sqlite3 *) inline_db; /* the writer, while a commit checkpoints inline */
    pthread_mutex_t run_mu;     /* held by whichever thread checkpoints */
    /*
     * What the last round saw, packed so that the hook reads one round's
     * pair: frames in the WAL (high half) and of them checkpointed (low).
     */
    _Atomic uint64_t seen;
    int hook_frames;            /* the WAL's length at the last commit; the hook's own */
    atomic_int wal_frames;      /* the same, for store_ckpt_wal_frames */
    atomic_ulong thread_rounds, inline_rounds;
    /* Rounds that failed (under report_mu); whether the last one did (written under it). */
    uint64_t failures;
    atomic_bool failing;
    pthread_mutex_t report_mu;  /* also orders the listener's calls */
    store_ckpt_fn listener;     /* under report_mu */
    void *listener_ctx;
#ifdef NODESTATE_FAULTS
    atomic_long fail_left;      /* rounds still to fail (store_ckpt_inject) */
#endif
};

#ifdef NODESTATE_FAULTS
/* Whether this round is one store_ckpt_inject asked to fail. */
static bool ckpt_injected(store_ckpt *c)
{
    long left = atomic_load(&c->fail_left);
    while (left > 0 && !atomic_compare_exchange_weak(&c->fail_left, &left, left - 1)) {
    }
    return left > 0;
}

void store_ckpt_inject(store_ckpt *c, long rounds)
{
    atomic_store(&c->fail_left, rounds);
}
#else
#define ckpt_injected(c) false
#endif

/*
 * Counts a failed round (error: why) or notes one without an error (NULL),
 * and tells the listener of every failure and of the first round without
 * an error after one. Called by whichever thread ran the round, run_mu held.
 */
static void ckpt_report(store_ckpt *c, const char *error)
{
    pthread_mutex_lock(&c->report_mu);
    bool tell = error != NULL || atomic_load(&c->failing);
    if (error != NULL)
        c->failures++;
    atomic_store(&c->failing, error != NULL);
    if (tell && c->listener != NULL)
        c->listener(c->listener_ctx, c->failures, error);
    pthread_mutex_unlock(&c->report_mu);
}

static uint64_t ckpt_pack(int log, int done)
{
    return (uint64_t)(uint32_t)log << 32 | (uint32_t)done;
}

/* How a round ended. */
typedef enum ckpt_outcome {
    CKPT_DONE,      /* the whole WAL copied */
    CKPT_SHORT,     /* a reader's snapshot or another checkpointer stopped it: no error */
    CKPT_FAILED,    /* an error (counted and told) */
} ckpt_outcome;

/*
 * One PASSIVE checkpoint on db, remembered for the hook's next estimate.
 * run_mu held. SQLITE_BUSY means another connection holds the checkpoint
 * lock, i.e. is copying the WAL itself: no failure.
 */
static ckpt_outcome ckpt_round(store_ckpt *c, sqlite3 *db)
{
    int log = 0, done = 0;
    bool injected = ckpt_injected(c);
    int rc = injected ? SQLITE_IOERR
                      : sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_PASSIVE, &log,
                                                  &done);
    /* Interrupted: the store is closing (store_ckpt_closing, store_ckpt_stop). */
    if (rc == SQLITE_BUSY || rc == SQLITE_INTERRUPT)
        return CKPT_SHORT;
    if (rc != SQLITE_OK) {
        ckpt_report(c, injected ? "injected failure (NODESTATE_FAULTS)" : sqlite3_errmsg(db));
        return CKPT_FAILED;
    }
    ckpt_report(c, NULL);
    if (log < 0 || done < 0)
        return CKPT_SHORT;
    atomic_store(&c->seen, ckpt_pack(log, done));
    return done == log ? CKPT_DONE : CKPT_SHORT;
}

/*
 * sqlite3_wal_hook, on the writer's thread after each commit: frames is the
 * WAL's length. A WAL shorter than at the last commit has been restarted
 * since, so all of it is new whatever the last round saw. Past hard_frames
 * the commit checkpoints itself only once the thread has left little to do
 * (a quarter of soft_frames: what costs is syncing and copying what the
 * thread has not), and asks the thread to get there otherwise; at twice
 * hard_frames it no longer waits for that.
 */
static int ckpt_on_commit(void *arg, sqlite3 *db, const char *schema, int frames)
{
    store_ckpt *c = arg;
    (void)schema;
    if (frames < c->hook_frames)
        atomic_store(&c->seen, 0);
    c->hook_frames = frames;
    atomic_store_explicit(&c->wal_frames, frames, memory_order_relaxed);
    uint64_t seen = atomic_load(&c->seen);
    int log = (int)(seen >> 32), done = (int)(uint32_t)seen;
    int behind = frames >= log ? frames - done : frames;
    bool long_wal = frames >= c->hard_frames;
    if (atomic_load(&c->closing))
        return SQLITE_OK; /* the close copies what it has time for (store_ckpt_final) */
    if (long_wal && behind > 0 && !atomic_load(&c->failing) &&
        (behind <= c->soft_frames / 4 || frames / 2 >= c->hard_frames)) {
        pthread_mutex_lock(&c->run_mu);
        atomic_store(&c->inline_db, db);
        /* Closing began meanwhile: its interrupt may have come before the store above. */
        if (!atomic_load(&c->closing))
            ckpt_round(c, db);
        atomic_store(&c->inline_db, NULL);
        pthread_mutex_unlock(&c->run_mu);
        atomic_fetch_add(&c->inline_rounds, 1);
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

/* now + ms on the monotonic clock, for lockcheck_timedwait. */
static struct timespec ckpt_after_ms(long ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

static void *ckpt_main(void *arg)
{
    store_ckpt *c = arg;
    ckpt_outcome last = CKPT_DONE;
    lockcheck_lock(&c->mu);
    while (!c->stop) {
        if (c->paused || (!c->asked && last == CKPT_DONE)) {
            lockcheck_wait(&c->wake, &c->mu);
            continue;
        }
        if (last == CKPT_FAILED || (last == CKPT_SHORT && !c->asked)) {
            /* Again after a pause: sooner if asked after a round cut short, never sooner after a failure. */
            struct timespec until = ckpt_after_ms(CKPT_RETRY_MS);
            int rc = 0;
            while (!c->stop && !c->paused && (last == CKPT_FAILED || !c->asked) &&
                   rc != ETIMEDOUT)
                rc = lockcheck_timedwait(&c->wake, &c->mu, &until);
            if (c->stop || c->paused)
                continue;
        }
        c->asked = false;
        lockcheck_unlock(&c->mu);
        pthread_mutex_lock(&c->run_mu);
        last = ckpt_round(c, c->db);
        pthread_mutex_unlock(&c->run_mu);
        atomic_fetch_add(&c->thread_rounds, 1);
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
    atomic_init(&c->seen, 0);
    atomic_init(&c->thread_rounds, 0);
    atomic_init(&c->inline_rounds, 0);
    atomic_init(&c->wal_frames, 0);
    atomic_init(&c->failing, false);
#ifdef NODESTATE_FAULTS
    atomic_init(&c->fail_left, 0);
#endif
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
    bool wake = mu && lockcheck_cond_init(&c->wake) == 0;
    bool run_mu = wake && pthread_mutex_init(&c->run_mu, NULL) == 0;
    bool report_mu = run_mu && pthread_mutex_init(&c->report_mu, NULL) == 0;
    int rc = report_mu ? pthread_create(&c->thread, NULL, ckpt_main, c) : -1;
    if (rc != 0) {
        char msg[STORE_ERRMSG_MAX];
        snprintf(msg, sizeof msg, "cannot start the checkpoint thread: %s",
                 rc > 0 ? strerror(rc) : "cannot create its lock");
        store_set_err(err, errlen, path, msg);
        if (report_mu)
            pthread_mutex_destroy(&c->report_mu);
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
    /* A round in progress ends now: what it leaves is the close's (store_ckpt_final). */
    sqlite3_interrupt(c->db);
    pthread_join(c->thread, NULL);
    pthread_mutex_destroy(&c->report_mu);
    pthread_mutex_destroy(&c->run_mu);
    pthread_cond_destroy(&c->wake);
    lockcheck_destroy(&c->mu);
    sqlite3_close(c->db);
    free(c);
}

void store_ckpt_closing(store_ckpt *c)
{
    if (c == NULL)
        return;
    atomic_store(&c->closing, true);
    /*
     * A commit copying a long WAL inline right now would hold the writer
     * past any budget: it is cut short (the commit itself is done). Should
     * the round end just before this, the interrupt finds no statement
     * running, and SQLite clears it as the writer's next one begins.
     */
    sqlite3 *db = atomic_load(&c->inline_db);
    if (db != NULL)
        sqlite3_interrupt(db);
}

/* store_ckpt_final's watch: interrupts db at the deadline unless told it is done first. */
typedef struct ckpt_watch {
    sqlite3 *db;
    struct timespec deadline;   /* CLOCK_MONOTONIC */
    lockcheck_mutex mu;
    pthread_cond_t cv;
    bool done;
} ckpt_watch;

static void *ckpt_watch_main(void *arg)
{
    ckpt_watch *w = arg;
    int rc = 0;
    lockcheck_lock(&w->mu);
    while (!w->done && rc != ETIMEDOUT)
        rc = lockcheck_timedwait(&w->cv, &w->mu, &w->deadline);
    if (!w->done)
        sqlite3_interrupt(w->db);
    lockcheck_unlock(&w->mu);
    return NULL;
}

int store_ckpt_final(sqlite3 *writer, int64_t deadline_ns)
{
    if (model_mono_ns() >= deadline_ns)
        return 1;
    ckpt_watch w = { .db = writer,
                     .deadline = { (time_t)(deadline_ns / 1000000000),
                                   (long)(deadline_ns % 1000000000) } };
    pthread_t t;
    if (lockcheck_init(&w.mu) != 0)
        return 1;
    if (lockcheck_cond_init(&w.cv) != 0) {
        lockcheck_destroy(&w.mu);
        return 1;
    }
    /* Without the watch the copy could not be bounded: none then. */
    if (pthread_create(&t, NULL, ckpt_watch_main, &w) != 0) {
        pthread_cond_destroy(&w.cv);
        lockcheck_destroy(&w.mu);
        return 1;
    }
    int log = -1, done = -1;
    int rc = sqlite3_wal_checkpoint_v2(writer, "main", SQLITE_CHECKPOINT_PASSIVE, &log, &done);
    lockcheck_lock(&w.mu);
    w.done = true;
    pthread_cond_signal(&w.cv);
    lockcheck_unlock(&w.mu);
    pthread_join(t, NULL);
    pthread_cond_destroy(&w.cv);
    lockcheck_destroy(&w.mu);
    return rc == SQLITE_OK && log == done ? 0 : 1;
}

void store_ckpt_pause(store_ckpt *c, bool paused)
{
    lockcheck_lock(&c->mu);
    c->paused = paused;
    pthread_cond_signal(&c->wake);
    lockcheck_unlock(&c->mu);
}

void store_ckpt_rounds(const store_ckpt *c, unsigned long *thread_rounds,
                       unsigned long *inline_rounds)
{
    *thread_rounds = atomic_load(&c->thread_rounds);
    *inline_rounds = atomic_load(&c->inline_rounds);
}

void store_ckpt_listen(store_ckpt *c, store_ckpt_fn fn, void *ctx)
{
    pthread_mutex_lock(&c->report_mu);
    c->listener = fn;
    c->listener_ctx = ctx;
    pthread_mutex_unlock(&c->report_mu);
}

int store_ckpt_wal_frames(const store_ckpt *c)
{
    return atomic_load_explicit(&c->wal_frames, memory_order_relaxed);
}
