/*
 * watch: the watchers of runs (GET /runs/{run_id}/events streams and
 * GET /runs/{run_id}/nodes?since=&wait= long polls), without MHD. The
 * engine's change hook (watch_on_change) files every accepted change of a
 * watched run with each of its watchers; a stream keeps a pending set keyed
 * by node (a newer state replaces the older one, so a watcher holds at most
 * one state per node of its run, in seq order), which its connection turns
 * into Server-Sent Events text (watch_fill) as fast as the client reads.
 * A stream with nothing to send is parked (its connection suspended by the
 * caller); a change, a commit, a heartbeat or the end resumes it through
 * the resume callback, called by the hub's one thread with no lock held,
 * never from inside the engine's lock. That thread also keeps the
 * heartbeat and long-poll deadlines. One thread for all watchers, none per
 * stream.
 *
 * Lock order: the engine's lock, then the hub's. All functions are
 * thread-safe; watch_fill and watch_park are called by the connection's
 * own thread only.
 */
#ifndef NODESTATE_WATCH_H
#define NODESTATE_WATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "model.h"
#include "stats.h"

typedef struct watch_hub watch_hub;
typedef struct watcher watcher;

typedef struct watch_config {
    size_t max_watchers;      /* streams and polls open at once */
    size_t buffer_bytes;      /* a synced stream holding more unsent bytes is dropped */
    double heartbeat;         /* seconds between comment lines; 0: none */
    int64_t durable_seq;      /* the engine's, at the start */
    /* Resumes the owner's connection: the hub's thread, no lock held. */
    void (*resume)(void *owner);
    /* The node's JSON as GET .../state gives it (malloc'd, *len bytes), or NULL. */
    char *(*encode)(void *ctx, const ns_row *row, bool durable, size_t *len);
    /*
     * The node's current row (referenced; NULL when it is gone) into *row:
     * 0, or -1 when it cannot be read. With it, a catch-up holds each
     * node's id and seq only, not its row, and reads the row when its turn
     * to be sent comes (a big run's rows are not held per stream). NULL:
     * catch-up rows are held and sent as given.
     */
    int (*fetch)(void *ctx, const char *run_id, const char *node_id, ns_row **row);
    void *encode_ctx;         /* encode's and fetch's */
    ns_stats *stats;          /* watchers, watch_events_sent, watch_dropped; may be NULL */
} watch_config;

typedef enum watch_kind {
    WATCH_STREAM,   /* an SSE stream: pending set, heartbeats */
    WATCH_POLL      /* a long poll: fires once, on a change or its deadline */
} watch_kind;

typedef enum watch_open_error {
    WATCH_TOO_MANY = 1,       /* max_watchers open already */
    WATCH_NO_MEMORY = 2
} watch_open_error;

/* watch_fill's answers besides a byte count > 0. */
#define WATCH_FILL_IDLE 0     /* nothing to send: suspend, then watch_park */
#define WATCH_FILL_END (-1)   /* the stream ends cleanly */
#define WATCH_FILL_DROP (-2)  /* drop the connection (too slow, out of memory) */

/* Starts the hub and its thread; NULL when out of memory or no thread. */
watch_hub *watch_hub_new(const watch_config *cfg);
/* Stops the thread and frees; every watcher must be closed. NULL is a no-op. */
void watch_hub_free(watch_hub *h);

/* engine_change_fn (engine.h): ctx is the hub. */
void watch_on_change(void *ctx, const char *run_id, ns_row *row, int64_t seq);
/* After a commit: durable streams may send up to durable_seq. */
void watch_on_durable(watch_hub *h, int64_t durable_seq);
/*
 * Shutdown begins: polls answer now; a stream ends once it has sent what it
 * holds and every accepted change is committed (the final flush).
 */
void watch_stop(watch_hub *h);
/*
 * The end: every stream ends now, every parked connection is resumed, and
 * nothing parks any more. Returns once the hub's thread has resumed them
 * all, so the caller may stop the HTTP library after it.
 */
void watch_release(watch_hub *h);

/*
 * A watcher of run_id for changes with seq > since, resumed through owner.
 * A stream starts loading: it sends nothing before watch_catch_up. A poll
 * fires at deadline_ns (model_mono_ns clock) at the latest. NULL with *err
 * a watch_open_error.
 */
watcher *watch_open(watch_hub *h, watch_kind kind, const char *run_id, int64_t since,
                    bool durable, void *owner, int64_t deadline_ns, int *err);
/*
 * The run's nodes as they were after watch_open (n rows, any order; the
 * references stay the caller's): those above since and not changed since
 * are sent first, in seq order, then "event: synced". With a fetch, only
 * each row's node_id and seq are looked at (a row holding just those does):
 * a node whose current row has moved on past that seq when its turn comes
 * is left to its change, which is pending; one gone with its run, to the
 * delete. 0 or -1 (out of memory: the stream is dropped).
 */
int watch_catch_up(watcher *w, ns_row *const *rows, size_t n);
/* Unregisters and frees w (its connection is done with it). */
void watch_close(watcher *w);

/* Up to max bytes of the stream's text, or WATCH_FILL_*. */
ssize_t watch_fill(watcher *w, char *buf, size_t max);
/*
 * After WATCH_FILL_IDLE and suspending the connection: parks w. Returns
 * true when the caller must resume at once (something came meanwhile).
 * fd, the connection's socket (-1: unknown), is looked at about once a
 * second while parked: once its peer has closed, a stream is dropped and
 * a poll fires, and either is resumed, so a client that went away does
 * not keep its watcher's place until the next write to it.
 */
bool watch_park(watcher *w, int fd);
/* A poll: whether its deadline (or the shutdown) fired it, not a change. */
bool watch_timed_out(watcher *w);
/*
 * Before watch_catch_up: the run was deleted at seq, above the stream's
 * since, before watch_open (the client missed it, even if the run was
 * written anew since). The stream sends "deleted" with that id instead of
 * a catch-up, and ends; the client resumes from it. committed: read from
 * the store, so a durable stream need not wait for it.
 */
void watch_deleted_before(watcher *w, int64_t seq, bool committed);
/* Whether a stream has seen its run deleted. */
bool watch_deleted(watcher *w);
/* The owner given to watch_open. */
void *watch_owner(const watcher *w);

#endif
