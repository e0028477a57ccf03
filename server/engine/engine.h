/*
 * engine: the state engine behind the HTTP API, with no HTTP in it.
 *
 * engine_submit checks an update against the cached state with the transition
 * rules, updates the cache, assigns the next global seq and appends the new row
 * to the bounded queue, all under one lock: all or nothing, queue order is seq
 * order. ONE writer thread owns the only write connection; it takes up to
 * batch_size queued entries, coalesces them (newest row per node wins), sorts
 * them by key and commits them in one transaction, retrying a failed commit
 * with capped backoff without ever dropping an entry. Reads come from the
 * cache, which may hold a run whole or in part; what it lacks is read
 * through from SQLite on a separate read-only connection: one node for a
 * write or a node's GET, one page of stored rows for a listing, the whole
 * run for a summary or a delete, each merged with what is cached. Idle nodes (their rows on disk)
 * are evicted, the least recently used node of the least recently used run
 * first, to keep the cache within cache_max_nodes and cache_max_bytes.
 *
 * All functions are thread-safe unless noted.
 *
 * Life cycle (engine_state in engine_internal.h; it only moves forward):
 *
 *   OPENING ──engine_open: writer started──▶ RUNNING
 *   RUNNING ──engine_drain──▶ DRAINING        not ready; the shutdown budget starts
 *   RUNNING or DRAINING ──engine_close──▶ CLOSING
 *                                    the writer flushes, then spills, then exits
 *   CLOSING ──writer_thread_main returns──▶ CLOSED   not alive; engine_close joins and frees
 *   DRAINING ──writer_thread_main returns──▶ CLOSED  only when the spill ran out of time
 *
 * engine_alive: RUNNING, DRAINING, CLOSING. engine_ready: RUNNING only (and
 * the store and queue fine). engine_drain may be called again (harmless),
 * never after engine_close; every other call needs an engine from
 * engine_open and not yet passed to engine_close. Debug builds assert this.
 */
#ifndef NODESTATE_ENGINE_H
#define NODESTATE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h> /* ssize_t */

#include "loglevel.h" /* NS_LOG_*, ns_log_fn */
#include "model.h"
#include "stats.h"

typedef struct engine engine;

typedef struct engine_config {
    const char *db_path;
    const char *spill_path;    /* the sidecar; NULL or "": the store's default */
    size_t batch_size;         /* most queued entries per transaction */
    double batch_interval;     /* seconds the oldest entry may wait */
    double group_commit_delay; /* seconds a commit asked for by a durable waiter waits to
                                * gather more waiters (never past batch_interval); 0: none */
    size_t queue_capacity;     /* most entries queued at once */
    size_t queue_max_bytes;    /* most bytes of rows accepted and not yet written (queue_op_bytes); 0: no bound */
    double shutdown_timeout;   /* seconds engine_close may spend flushing */
    bool synchronous_full;     /* synchronous=FULL instead of NORMAL */
    size_t cache_max_nodes;    /* evict idle runs above this many cached nodes; 0: no bound */
    size_t cache_max_bytes;    /* evict idle runs above this many cached bytes; 0: no bound */
    unsigned max_backups;      /* engine_backup_open at once; 0 is taken as 1 */
    /*
     * Retention: runs whose nodes are all completed or failed and whose
     * newest update is older than `retention` seconds are deleted through
     * the queue, like engine_delete_run (0: never). The writer looks for
     * them a page of runs at a time, the whole table every
     * retention_interval seconds (see retention.h).
     */
    double retention;
    double retention_interval;
    /* The wall clock (ms) retention judges by; NULL: model_now_ms. Tests age the data with their own. */
    int64_t (*clock_ms)(void *ctx);
    void *clock_ctx;
    ns_log_fn *log;            /* may be NULL */
    void *log_ctx;
} engine_config;

typedef enum engine_result {
    ENGINE_ACCEPTED,    /* queued; *out is the new row */
    ENGINE_DUPLICATE,   /* changes nothing; *out is the current row */
    ENGINE_STALE,       /* lower attempt; *out is the current row */
    ENGINE_ILLEGAL,     /* transition refused; *out is the current row */
    ENGINE_NOT_FOUND,   /* (delete) no such run */
    ENGINE_QUEUE_FULL,  /* queue at queue_capacity or queue_max_bytes: nothing changed; try again later */
    ENGINE_ERROR        /* reading through SQLite or memory failed */
} engine_result;

/* A page of a run's nodes, in node_id order. */
typedef struct engine_page {
    ns_row **rows;      /* each holds a reference; engine_page_free drops them */
    size_t count;
    bool more;          /* further matching nodes follow the last one */
} engine_page;

/*
 * A page of a listing ends once its rows take this many bytes
 * (model_row_bytes), after at least one: a page of big outputs is a few
 * rows, not `limit` of them (1,000 rows of 1 MiB each would be a gigabyte
 * per request, twice over with its JSON).
 */
#define ENGINE_PAGE_MAX_BYTES (8u * 1024 * 1024)

typedef struct engine_summary {
    size_t nodes;
    size_t counts[NS_STATUS_COUNT];
    int64_t last_seq;   /* highest seq among the run's nodes */
    int64_t updated_at; /* latest updated_at among them, ms */
} engine_summary;

/*
 * Opens the store, replays a sidecar left by an earlier shutdown that could
 * not flush (see engine_close), reads the last seq, starts the writer thread.
 * On error returns NULL with a message in err.
 */
engine *engine_open(const engine_config *cfg, char *err, size_t errlen);
/*
 * Lets the writer flush the queue, stops it and frees everything. The
 * shutdown budget, shutdown_timeout, starts at engine_drain (or at this
 * call, without it). Once the flush stalls (commits failing for 0.5 s) or
 * the budget is nearly spent, what the database would not take (say, it
 * stays locked) is written to the sidecar next to it instead, in pieces
 * that each survive a SIGKILL, which the next engine_open replays. The
 * spill stops 0.5 s past the budget whatever is left, so this returns
 * within about shutdown_timeout + 0.5 s of the budget's start. Returns the
 * number of queued entries that reached neither (0 when all are on disk or
 * in the sidecar).
 */
size_t engine_close(engine *e);

/* What a shutdown did with the queue. */
typedef struct engine_closing {
    uint64_t flushed;   /* queued updates committed since engine_drain */
    size_t spilled;     /* written to the sidecar instead */
    size_t lost;        /* neither (the return value) */
} engine_closing;
/* engine_close, also telling what became of the queue (report may be NULL). */
size_t engine_close_counted(engine *e, engine_closing *report);

/*
 * Applies one update to (run_id, node_id); ids must already be valid. On
 * every result but QUEUE_FULL, NOT_FOUND and ERROR, *out receives a row
 * reference the caller must drop with model_row_unref.
 */
engine_result engine_submit(engine *e, const char *run_id, const char *node_id,
                            const ns_update *u, ns_row **out);
/*
 * Forgets a run, through the writer like every write. On ENGINE_ACCEPTED
 * *deleted is the number of nodes it had and *seq the seq of the delete.
 */
engine_result engine_delete_run(engine *e, const char *run_id, size_t *deleted,
                                int64_t *seq);
/*
 * The seq of run_id's newest delete into *seq, 0 when none is known: one
 * queued (the run stays cached until it commits) or committed (the store's
 * record, also of other instances' deletes). A watcher resuming from a
 * lower seq missed it, whether or not the run was written anew since.
 * *committed: that delete is on record in the store. When the store
 * cannot be read, only a queued delete is known (logged at debug level):
 * a resume does not fail for it.
 */
int64_t engine_deleted_seq(engine *e, const char *run_id, bool *committed);

/* The node's latest accepted row (a reference), or NULL with *res NOT_FOUND or ERROR. */
ns_row *engine_get(engine *e, const char *run_id, const char *node_id,
                   engine_result *res);
/*
 * Lists a run's nodes whose status bit (1u << status) is in status_mask, with
 * node_id > after (NULL: from the start), at most limit of them, and fewer
 * once they take ENGINE_PAGE_MAX_BYTES (page->more then set). A read of
 * stored rows ends there too, so neither the page nor what is read for it
 * grows with its rows' size. Returns ENGINE_ACCEPTED (found; the page may be
 * empty), NOT_FOUND (no such run) or ERROR.
 */
engine_result engine_list(engine *e, const char *run_id, unsigned status_mask,
                          const char *after, size_t limit, engine_page *page);
void engine_page_free(engine_page *page);
/*
 * Keeps the first rows of page up to limit and ENGINE_PAGE_MAX_BYTES (at
 * least one), dropping the rest (page->more set when it cut).
 */
void engine_page_cut(engine_page *page, size_t limit);
/*
 * Appends row to page, which takes the reference the caller hands over
 * (*cap: the room page->rows has, 0 at first). 0, or -1 out of memory
 * (the reference stays the caller's).
 */
int engine_page_push(engine_page *page, size_t *cap, ns_row *row);
/*
 * Hands every node of a run whose status bit is in status_mask to fn, in
 * node_id order, page by page (engine_list, `page` rows each, each page
 * under its own hold of the lock, none held while fn runs). fn gets a row
 * it may reference (model_row_ref) and returns 0 to go on, -1 to stop
 * (then ERROR). ACCEPTED, NOT_FOUND (no such run) or ERROR.
 */
engine_result engine_scan(engine *e, const char *run_id, unsigned status_mask, size_t page,
                          int (*fn)(void *ctx, ns_row *row), void *ctx);
/* Counts a run's nodes by status; ACCEPTED, NOT_FOUND or ERROR. */
engine_result engine_summarize(engine *e, const char *run_id,
                               engine_summary *out);

/* Every seq <= the returned one is committed. */
int64_t engine_durable_seq(engine *e);
/*
 * Registers fn, called by the writer thread after each commit with the new
 * durable seq (used to resume waiting requests). Replacing it (or NULL)
 * waits until a call in progress has returned, so ctx may be freed after.
 */
void engine_on_durable(engine *e, void (*fn)(void *ctx, int64_t durable_seq),
                       void *ctx);
/* Gaps between this instance's seq blocks that engine_durability keeps. */
#define ENGINE_SEQ_GAPS 8
/*
 * Whether a change is on disk, read once for a whole answer: its seq is at
 * or below durable_seq, or one this instance never handed out, so another
 * instance wrote it to a shared store, where this one read it: past every
 * seq handed out here (last_seq), or between two of this instance's blocks
 * (a gap, from a block reserved above other instances' seqs while some of
 * its own were still queued). Once on disk a change stays so: a seq leaves
 * a gap only when durable_seq has passed it.
 */
typedef struct engine_durability {
    int64_t durable_seq;
    int64_t last_seq;
    size_t n_gaps;
    int64_t gap_lo[ENGINE_SEQ_GAPS], gap_hi[ENGINE_SEQ_GAPS];
} engine_durability;
engine_durability engine_durability_now(engine *e);
bool engine_durability_covers(const engine_durability *d, int64_t seq);
/* Whether other instances write the store too (PostgreSQL): only then is a row superseded. */
bool engine_shared(const engine *e);
/* Why an update past durable_seq is not on disk (engine_refused). */
typedef enum engine_refusal {
    ENGINE_NOT_REFUSED,        /* on disk, or not known to be refused */
    ENGINE_REFUSED_ISOLATED,   /* the database will never take its row */
    /*
     * A shared store held a newer state of the node, written by another
     * instance: the update was judged against an older one. Judged against
     * the stored state (the run is read again), it may still apply.
     */
    ENGINE_REFUSED_SUPERSEDED
} engine_refusal;
/*
 * Whether the update with this seq was refused for good (its row, or the
 * row of its node it was coalesced into, was left out of the commit), and
 * why: it will never be on disk although durable_seq has passed it.
 * Remembers each for a minute (its waiters ask as soon as its commit
 * resumes them); without a refusal in that time it costs no lock.
 */
engine_refusal engine_refused(engine *e, int64_t seq);
/* Whether any seq engine_refused remembers lies in [lo, hi]: one look for a whole batch. */
bool engine_refused_between(engine *e, int64_t lo, int64_t hi);
/*
 * What engine_on_change calls for every accepted change, in seq order, with
 * the engine's lock held: row is the node's new state (the callee may keep it
 * with model_row_ref), or NULL when the run was deleted. It must be quick and
 * must not call the engine (watchers of a run use it: server/http/watch.h).
 */
typedef void engine_change_fn(void *ctx, const char *run_id, ns_row *row, int64_t seq);
/*
 * Registers fn (NULL: none). Every accepted change goes through one point,
 * the queue's append, so single updates, batches and deletes (whatever path
 * queued them) all reach it. When this returns, no call of the old fn runs.
 */
void engine_on_change(engine *e, engine_change_fn *fn, void *ctx);
/*
 * A run's accepted changes from engine_follow_begin to engine_follow_end,
 * so that a caller reading the run a page at a time (each page under its
 * own hold of the lock) can make what it read whole: every node as it was
 * when the follow ended. Only this instance's changes are seen.
 */
typedef struct engine_follow engine_follow;
/* Starts following run_id; NULL when out of memory. */
engine_follow *engine_follow_begin(engine *e, const char *run_id);
/*
 * Stops following and frees f: *changes gets the new states in seq order
 * (references, for engine_page_free). Returns false when they are not all
 * there (out of memory, or the run was deleted meanwhile).
 */
bool engine_follow_end(engine *e, engine_follow *f, engine_page *changes);
/*
 * Another instance sharing the store committed to these runs (the store's
 * listener tells): what the cache holds of them may be older than the
 * store. A run with nothing queued is dropped, so the next read loads it
 * again; a run with queued writes is dropped once they have committed, so
 * it is read again after them. A read through that is in flight for one
 * of them reads again. run_ids NULL (n ignored): every run, because
 * notifications may have been missed. Counted in cache_invalidations.
 */
void engine_runs_changed(engine *e, const char *const *run_ids, size_t n);
/*
 * Asks the writer to commit what is queued soon instead of after
 * batch_interval: group_commit_delay after the first ask of this commit,
 * so that the waiters arriving meanwhile share its one commit (and fsync);
 * at once while draining, or when the batch fills up first.
 */
void engine_flush_soon(engine *e);

/*
 * From now on /readyz says the service is draining for shutdown; writes
 * still work, and the writer commits them at once instead of after
 * batch_interval. The shutdown budget (shutdown_timeout) starts now.
 */
void engine_drain(engine *e);
/*
 * engine_drain with the budget counted from since_ns (model_mono_ns), not
 * now: a stop asked for while the service was still starting.
 */
void engine_drain_since(engine *e, int64_t since_ns);
/* Liveness: the writer thread is running. */
bool engine_alive(engine *e);
/*
 * Readiness: store accepting writes, queue not full (in entries, or in
 * bytes from a refusal until the writer frees some). Else false with a reason.
 */
bool engine_ready(engine *e, const char **reason);
/* The counters; valid until engine_close. */
ns_stats *engine_stats(engine *e);
const engine_config *engine_config_of(engine *e);

/*
 * A consistent snapshot of the stored database (store_backup_open in
 * store.h: every update committed when it starts; updates still queued are
 * not in it), read as a stream of bytes. At most max_backups are being
 * read at once: one more is refused with ENGINE_BACKUP_BUSY until one has
 * been read to its end or closed. The
 * store decides whether it can: ENGINE_BACKUP_UNSUPPORTED (err says what
 * to use instead) or ENGINE_BACKUP_FAILED (err says why). Every backup
 * opened must be closed before engine_close.
 */
typedef struct engine_backup engine_backup;
typedef enum engine_backup_result {
    ENGINE_BACKUP_OK,
    ENGINE_BACKUP_BUSY,
    ENGINE_BACKUP_UNSUPPORTED,
    ENGINE_BACKUP_FAILED
} engine_backup_result;
engine_backup_result engine_backup_open(engine *e, engine_backup **out,
                                        char *err, size_t errlen);
/* The snapshot's length in bytes. */
uint64_t engine_backup_size(const engine_backup *b);
/* Up to n bytes from offset pos: how many (0 at the end), -1 on an I/O error. */
ssize_t engine_backup_read(engine_backup *b, uint64_t pos, char *buf, size_t n);
/* Frees b and its slot. NULL is fine. */
void engine_backup_close(engine_backup *b);

#endif
