/*
 * engine_internal: the engine's private parts, shared by the files it is
 * split into: engine.c (accepting writes, reads), engine_life.c (open,
 * drain, close), readthrough.c (reading what the cache lacks from SQLite) and
 * writer_thread.c (the one writer thread). Holds struct engine, its
 * life-cycle state and the helpers they share. Nothing outside
 * server/engine/ includes it (tests of these files aside).
 */
#ifndef NODESTATE_ENGINE_INTERNAL_H
#define NODESTATE_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lockcheck.h"
#include "cache.h"
#include "dblock.h"
#include "engine.h"
#include "queue.h"
#include "store.h"
#include "store_listen.h"
#include "writer.h"

#include "writer.h"

/*
 * How long engine_refused remembers a refused seq once every op queued
 * before the refusal is written: the waiters that may ask about it have been
 * resumed then, and ask at once unless the machine is very busy.
 */
#define REFUSED_KEEP_NS 60000000000ll /* 60 s */

/* A row the store left out of a batch, and why (writer thread). */
typedef struct refused_row {
    const ns_row *row;
    engine_refusal why;
} refused_row;

/* A refused update's seq, remembered for engine_refused. */
typedef struct refused_seq {
    int64_t seq;
    int64_t at_ns;        /* when (model_mono_ns) */
    /* 0, or when every op queued before it was written: forgotten REFUSED_KEEP_NS later */
    int64_t settled_ns;
    engine_refusal why;
} refused_seq;
/* Retries of a failed commit wait this long at first, doubling up to the cap. */
#define BACKOFF_FIRST_NS 10000000ll   /* 10 ms */
#define BACKOFF_CAP_NS 1000000000ll   /* 1 s: a locked database is retried at least once a second */
/* An idle writer tries the store this often (probe_idle: /readyz). */
#define PROBE_IDLE_NS 1000000000ll    /* 1 s */
/* Failed tries in a row before the store counts as failing. */
#define PROBE_FAILURES 2
/*
 * Most nodes engine_evict drops per call (and slots of removed runs it
 * frees): the bound on the work one call does under the lock. What is left
 * over the bounds after a full step (a big batch, a run read whole), the
 * writer thread evicts a step at a time (evict_more).
 */
#define EVICT_STEP 4096
/* How often one load of a run is retried when runs are removed meanwhile. */
#define LOAD_TRIES 8
/* Runs remembered as too big to cache whole (engine.big_runs). */
#define ENGINE_BIG_RUNS 64
/*
 * Seqs reserved at once from a shared store (seq_room): one round trip to
 * the database per this many accepted writes.
 */
#define SEQ_BLOCK 65536
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
/* The store's close may run this far past the spill's end (store_close_by). */
#define CLOSE_SLACK_NS 250000000ll    /* 0.25 s */
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
    ENGINE_CLOSED     /* writer_thread_main returned: nothing more is written */
} engine_state;

struct engine {
    engine_config cfg;            /* db_path points at db_path below */
    char *db_path;
    unsigned probes_failed;       /* the writer's: probe_idle's failures in a row */
    /*
     * Runs a whole read found too big to cache whole, newest last in a
     * ring (lock): their summaries read light (readthrough_run_whole).
     */
    char *big_runs[ENGINE_BIG_RUNS];
    size_t big_next;
    dblock *dblock;               /* SQLite: held from before the store opens until after it closes */
    dblock *spill_lock;           /* the sidecar's, for as long */
    ns_stats stats;
    store_reader *reader;         /* read-through connection, locks itself */
    store *store;                 /* the write connection: writer thread only */
    bool shared;                  /* set at open: the store has other writers (store_shared) */
    char instance_id[STORE_INSTANCE_ID_MAX + 1]; /* set by engine_open, then read-only */
    store_listener *listener;     /* other instances' commits (shared store only), its own thread */
    ns_op *batch;                 /* writer thread only: batch_size ops */
    refused_row *isolated;        /* writer thread only: rows refused in this batch */
    size_t n_isolated, cap_isolated;
    bool isolated_lost;           /* writer thread only: one did not fit (out of memory) */
    bool spilling;                /* writer thread only: the flush gave up on the database
                                   * (a mode of the writer within DRAINING/CLOSING, not a state) */
    store_sidecar *sidecar;       /* writer thread only: open once spilling */
    size_t spill_pieces;          /* writer thread only: pieces committed to the sidecar */
    int64_t spill_piece_ns;       /* writer thread only: how long the last piece took */
    store_expiry_cursor retention_cursor; /* writer thread only: the sweep's place (retention.c) */
    int64_t retention_next_ns;    /* writer thread only: when its next page is due (CLOCK_MONOTONIC) */
    pthread_t writer;             /* joined by engine_close once started (state past OPENING) */
    /*
     * An engine_state. Written only with lock held (state_advance), so the
     * writer's waits on `wake` see every change; _Atomic so that
     * engine_alive and engine_ready may read it without the lock.
     */
    _Atomic int state;
    _Atomic bool store_failing;   /* the last commit attempt failed */
    bool ckpt_failing;            /* the last checkpoint round failed; on_checkpoint's own */
    _Atomic unsigned backups;     /* engine_backup objects open (engine_backup_open) */
    _Atomic bool bytes_full;      /* a write was refused for queue_max_bytes; cleared as bytes are freed */

    lockcheck_mutex lock;         /* guards every field below; lockcheck_assert_held where required */
    void (*on_durable)(void *ctx, int64_t durable_seq);
    void *on_durable_ctx;
    struct engine_follow *follows; /* engine_follow_begin's, filled in enqueue (lock held) */
    engine_change_fn *on_change;  /* called in enqueue, lock held (engine_on_change) */
    void *on_change_ctx;
    pthread_cond_t wake;          /* the writer sleeps on it (CLOCK_MONOTONIC) */
    bool wake_writer;             /* an enqueue or a flush ask wants it signalled: engine_unlock does */
    bool evict_more;              /* a step of engine_evict left the cache over a bound: the writer goes on */
    cache *cache;
    queue *queue;
    int64_t last_seq;             /* last seq assigned */
    int64_t seq_block_last;       /* shared store: last seq of the block reserved (engine_seq_room) */
    /* Shared store: seqs between our blocks not yet below durable_seq (engine_durability). Lock. */
    int64_t gap_lo[ENGINE_SEQ_GAPS], gap_hi[ENGINE_SEQ_GAPS];
    size_t n_gaps;
    size_t queue_bytes;           /* queue_op_bytes of the ops accepted and not yet released */
    int64_t flush_until;          /* commit without waiting while seqs <= this are queued */
    int64_t flush_asked_ns;       /* when the first waiter asked for the flush still pending
                                   * (group commit: due group_commit_delay later) */
    size_t last_batch_ops;        /* ops the writer took for its last commit; 0 before the first */
    int64_t drain_started_ns;     /* engine_drain (or close): the shutdown budget starts; 0 before */
    int64_t give_up_ns;           /* set with it: no more commit retries after this, spill */
    int64_t spill_end_ns;         /* set with it: nothing more goes to the sidecar after this */
    uint64_t drain_processed;     /* updates_processed then, for engine_closing.flushed */
    size_t spilled;               /* ops written to the sidecar */
    size_t unflushed;             /* ops that reached neither the database nor the sidecar */
    bool in_callback;             /* the writer is calling on_durable (unlocked) */
    /* Seqs refused for good in the last REFUSED_KEEP_NS, sorted by seq (lock; count atomic). */
    refused_seq *refused;
    _Atomic size_t n_refused;
    size_t cap_refused;
    size_t n_refused_settled;     /* the first ones, with settled_ns set */
    pthread_cond_t callback_done; /* signalled when that call returns */
};

/* Logs through cfg.log (if any): fields is printf-formatted logfmt. */
void engine_log(engine *e, int level, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Drops least recently used clean nodes until the cache is within its bounds, sparing keep. Lock held. */
void engine_evict(engine *e, const cache_run *keep);
/* Forgets an unpinned run that holds nothing or may differ from disk. Lock held. */
void engine_run_drop_if_idle(engine *e, cache_run *run);
/*
 * Appends an op (seq, time, bytes set here) that the caller checked there is
 * room for. Lock held; the caller lets go of it with engine_unlock, which
 * wakes the writer if the op asks for that.
 */
void engine_enqueue(engine *e, ns_op *op);
/*
 * Unlocks, then wakes the writer if an enqueue (or engine_flush_soon) asked
 * for it under this hold. Signalled after the unlock, the writer finds the
 * lock free when it wakes rather than blocking on it again at once.
 */
void engine_unlock(engine *e);
/* Counts a refused update by reason. */
void engine_reject(engine *e, ns_reject why);
/* The next `want` seqs are ours and above `above` (see engine.c). 0, or -1; lock held. */
int engine_seq_room(engine *e, int64_t above, size_t want);
/* Queued bytes from which the writer commits without waiting for batch_interval. Lock held. */
bool engine_queue_bytes_high(const engine *e);
/*
 * Retention's delete of run_id (retention.c), judged again against what the
 * engine holds: queued only if nothing of the run is queued (every accepted
 * write of it is then on disk, where the caller found it expired) and every
 * cached node of it is terminal and updated before cutoff_ms. Queued like
 * engine_delete_run's: the run stays cached, empty and pinned, until the
 * delete commits, so a write meanwhile starts the run afresh and is kept.
 * Its seq is above max_seq (the highest the sweep saw of the run) and what
 * is cached of it (run_seq_floor). Returns 1 when queued (*gone: the rows
 * it had, for the caller to free with cache_run_free after unlocking), 0
 * when the run is kept, -1 when the queue has no room or memory ran out.
 * Lock held.
 */
int engine_expire_run(engine *e, const char *run_id, int64_t cutoff_ms, int64_t max_seq,
                      cache_run **gone);

static inline engine_state state_of(engine *e)
{
    return (engine_state)atomic_load(&e->state);
}

/* Moves the state forward to `to`; a later state already reached stays. Lock held. */
static inline void state_advance(engine *e, engine_state to)
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

#endif
