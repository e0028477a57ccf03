/* POLLRDHUP (Linux): a peer that closed is told apart from one that sent more. */
#define _GNU_SOURCE
#include "watch.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "deadline.h"
#include "lockcheck.h"

/* Buckets of the run index: a watcher's run is found in O(1) by the hook. */
#define WATCH_RUN_BUCKETS 4096
/* A new stream's first bytes: EventSource clients reconnect after 1 s. */
#define WATCH_PREAMBLE "retry: 1000\n\n"
#define WATCH_HEARTBEAT ": heartbeat\n\n"
/*
 * A woken watcher is resumed this long after the first wake of a batch at
 * the latest: the changes of that time go out together, one resume and one
 * send per stream instead of one per change, which is what keeps a stream
 * per busy run from costing its writers much.
 */
#define WATCH_LINGER_NS 20000000LL
/*
 * How often the thread looks at the sockets of parked watchers for a peer
 * that has gone: a suspended connection is out of the HTTP library's poll,
 * so only a write would otherwise find out (a heartbeat, or never).
 */
#define WATCH_PEER_CHECK_NS 1000000000LL
/* The text around a node event's JSON, and what a pending entry costs besides its row. */
#define WATCH_EVENT_OVERHEAD 64

/* One node's newest state not yet sent. */
typedef struct pend {
    struct pend *hnext;         /* bucket chain */
    struct pend *prev, *next;   /* seq order */
    ns_row *row;                /* a reference */
    uint64_t hash;              /* of node_id */
    size_t bytes;               /* what it counts against buffer_bytes */
    bool catchup;               /* from watch_catch_up: before "synced" */
} pend;

struct watcher {
    watch_hub *hub;
    watch_kind kind;
    bool durable;
    int64_t since;
    void *owner;
    uint64_t run_hash;
    char run_id[NS_ID_MAX + 1];
    /* Guarded by hub->mu: */
    struct watcher *rnext, *rprev;  /* the run bucket's chain */
    deadline_item deadline;         /* heartbeat (stream) or timeout (poll) */
    pend **buckets;                 /* pending set by node id */
    size_t nbuckets, npend;
    pend *head, *tail;              /* pending in seq order */
    size_t bytes;                   /* sum of their bytes */
    size_t catchup_left;            /* catch-up entries not yet sent */
    bool loading;                   /* before watch_catch_up: nothing is sent */
    bool synced_sent;
    bool beat_due;
    bool fired;                     /* poll: a change or the deadline came */
    bool timed_out;                 /* poll: the deadline (or the shutdown) */
    int64_t deleted_seq;            /* the run's delete; 0: none */
    bool deleted_committed;         /* it was read from the store: durable already */
    bool dropped;                   /* too slow or out of memory: close */
    bool parked;                    /* suspended until a wake */
    int fd;                         /* parked: its connection's socket, or -1 */
    uint64_t park_id;               /* parked: which park (the hub's count of them) */
    struct watcher *wake_next;      /* on hub->wakes (parked is then false) */
    /* The connection's thread only: */
    char *out;                      /* text being sent */
    size_t out_len, out_off;
    bool started;                   /* the preamble is out */
    bool ended;
};

struct watch_hub {
    watch_config cfg;
    int64_t heartbeat_ns;
    _Atomic size_t open;            /* read by the hook without mu: 0 skips it */
    lockcheck_mutex mu;             /* guards everything below and each watcher's (mu) fields */
    watcher *runs[WATCH_RUN_BUCKETS];
    deadline_heap deadlines;
    watcher *wakes;                 /* to resume, by the thread */
    int64_t wakes_at;               /* when the thread resumes them; INT64_MAX with none */
    int64_t durable_seq;
    int64_t last_seq;               /* highest seq the hook has seen */
    size_t durable_streams;         /* open streams with ?durable=true */
    bool stopping, released, quit;
    bool resuming;                  /* the thread is resuming a batch, unlocked */
    int64_t sleep_until;            /* the thread's wait: INT64_MAX none, INT64_MIN awake */
    int64_t peer_check_at;          /* next look at parked sockets; INT64_MAX: none parked */
    uint64_t parks;                 /* parks so far: each parked watcher's park_id */
    pthread_cond_t cv;              /* the thread: wakes or an earlier deadline */
    pthread_cond_t idle;            /* a resume batch is done */
    pthread_t thread;
};

static void count_add(_Atomic uint64_t *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

/* The engine's last seq: the hook skips changes while nobody watches, so its own may lag. */
static int64_t hub_last_seq(const watch_hub *h)
{
    return h->cfg.stats ? atomic_load(&h->cfg.stats->last_seq) : h->last_seq;
}

/* ---- pending sets (mu held) ---- */

static void pend_unlink(watcher *w, pend *p)
{
    pend **b = &w->buckets[p->hash & (w->nbuckets - 1)];
    while (*b != p)
        b = &(*b)->hnext;
    *b = p->hnext;
    if (p->prev)
        p->prev->next = p->next;
    else
        w->head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        w->tail = p->prev;
    w->npend--;
    w->bytes -= p->bytes;
    if (p->catchup)
        w->catchup_left--;
}

static void pend_clear(watcher *w)
{
    pend *p = w->head;
    while (p) {
        pend *next = p->next;
        model_row_unref(p->row);
        free(p);
        p = next;
    }
    free(w->buckets);
    w->buckets = NULL;
    w->nbuckets = w->npend = w->bytes = w->catchup_left = 0;
    w->head = w->tail = NULL;
}

static pend *pend_find(const watcher *w, const char *node_id, uint64_t hash)
{
    if (!w->nbuckets)
        return NULL;
    for (pend *p = w->buckets[hash & (w->nbuckets - 1)]; p; p = p->hnext)
        if (p->hash == hash && strcmp(p->row->node_id, node_id) == 0)
            return p;
    return NULL;
}

/* Room for one more entry: the table doubles at one entry per bucket. 0 / -1. */
static int pend_grow(watcher *w)
{
    if (w->npend < w->nbuckets)
        return 0;
    size_t n = w->nbuckets ? w->nbuckets * 2 : 16;
    pend **b = calloc(n, sizeof *b);
    if (!b)
        return -1;
    for (pend *p = w->head; p; p = p->next) {
        pend **slot = &b[p->hash & (n - 1)];
        p->hnext = *slot;
        *slot = p;
    }
    free(w->buckets);
    w->buckets = b;
    w->nbuckets = n;
    return 0;
}

/* Links p (new, hashed) into the table and after `after` in seq order (NULL: first). */
static void pend_link(watcher *w, pend *p, pend *after)
{
    pend **slot = &w->buckets[p->hash & (w->nbuckets - 1)];
    p->hnext = *slot;
    *slot = p;
    p->prev = after;
    p->next = after ? after->next : w->head;
    if (p->next)
        p->next->prev = p;
    else
        w->tail = p;
    if (after)
        after->next = p;
    else
        w->head = p;
    w->npend++;
    w->bytes += p->bytes;
    if (p->catchup)
        w->catchup_left++;
}

static pend *pend_new(ns_row *row, uint64_t hash, bool catchup)
{
    pend *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    model_row_ref(row);
    p->row = row;
    p->hash = hash;
    p->bytes = model_row_bytes(row) + sizeof *p + WATCH_EVENT_OVERHEAD;
    p->catchup = catchup;
    return p;
}

/*
 * A live change: it replaces the node's older entry and goes last, since
 * changes come in seq order. 0 / -1 (out of memory).
 */
static int pend_put(watcher *w, ns_row *row)
{
    uint64_t hash = model_hash(MODEL_HASH_SEED, row->node_id);
    pend *old = pend_find(w, row->node_id, hash);
    if (old) {
        pend_unlink(w, old);
        model_row_unref(old->row);
        free(old);
    }
    if (pend_grow(w) != 0)
        return -1;
    pend *p = pend_new(row, hash, false);
    if (!p)
        return -1;
    pend_link(w, p, w->tail);
    return 0;
}

/* ---- waking (mu held) ---- */

static void thread_nudge(watch_hub *h, int64_t at)
{
    if (at < h->sleep_until) {
        h->sleep_until = INT64_MIN;
        pthread_cond_signal(&h->cv);
    }
}

/* A parked watcher goes to the thread's resume list; others will look anyway. */
static void wake(watch_hub *h, watcher *w)
{
    if (!w->parked)
        return;
    w->parked = false;
    w->wake_next = h->wakes;
    h->wakes = w;
    if (h->wakes_at == INT64_MAX) {
        h->wakes_at = h->released ? INT64_MIN : model_mono_ns() + WATCH_LINGER_NS;
        thread_nudge(h, h->wakes_at);
    }
}

/* Ends w's stream at its next fill, its pending set freed now; counted when counted. mu held. */
static void drop_as(watch_hub *h, watcher *w, bool counted)
{
    if (w->dropped)
        return;
    w->dropped = true;
    pend_clear(w);
    if (counted && h->cfg.stats)
        count_add(&h->cfg.stats->watch_dropped, 1);
}

/* Too slow or out of memory: watch_dropped. */
static void drop(watch_hub *h, watcher *w)
{
    drop_as(h, w, true);
}

/* Whether a stream's "deleted" may go: at once, or for a durable one once committed. */
static bool deleted_sendable(const watch_hub *h, const watcher *w)
{
    return !w->durable || w->deleted_committed || w->deleted_seq <= h->durable_seq;
}

/* Whether a stream has something to write now (or must end). */
static bool stream_ready(const watch_hub *h, const watcher *w)
{
    if (w->dropped || h->released || w->beat_due)
        return true;
    if (w->loading)
        return false;
    if (w->deleted_seq)
        return deleted_sendable(h, w);
    if (!w->synced_sent && w->catchup_left == 0)
        return true;
    if (w->head && (!w->durable || w->head->row->seq <= h->durable_seq))
        return true;
    return h->stopping && !w->head && h->durable_seq >= hub_last_seq(h);
}

static bool ready(const watch_hub *h, const watcher *w)
{
    if (w->kind == WATCH_POLL)
        return w->fired || h->released;
    return stream_ready(h, w);
}

/* ---- the hook ---- */

static watcher **run_bucket(watch_hub *h, uint64_t hash)
{
    return &h->runs[hash & (WATCH_RUN_BUCKETS - 1)];
}

void watch_on_change(void *ctx, const char *run_id, ns_row *row, int64_t seq)
{
    watch_hub *h = ctx;
    /* Nobody watches: no lock, no hash. A watcher opened after this reads the change in its catch-up. */
    if (atomic_load(&h->open) == 0)
        return;
    uint64_t hash = model_hash(MODEL_HASH_SEED, run_id);
    lockcheck_lock(&h->mu);
    h->last_seq = seq;
    for (watcher *w = *run_bucket(h, hash); w; w = w->rnext) {
        /* A delete reaches every watcher of the run, whatever its since: the run is gone. */
        if (w->run_hash != hash || strcmp(w->run_id, run_id) != 0 || (row && seq <= w->since))
            continue;
        if (w->kind == WATCH_POLL) {
            w->fired = true;
            wake(h, w);
            continue;
        }
        if (w->dropped || w->deleted_seq)
            continue;
        if (!row) {
            /* The nodes are gone: their states are no longer worth sending. */
            pend_clear(w);
            w->deleted_seq = seq;
        } else if (pend_put(w, row) != 0) {
            drop(h, w);
        } else if (w->synced_sent && w->bytes > h->cfg.buffer_bytes) {
            /* Too far behind: the client resumes with Last-Event-ID, memory stays bounded. */
            drop(h, w);
        }
        if (stream_ready(h, w))
            wake(h, w);
    }
    lockcheck_unlock(&h->mu);
}

void watch_on_durable(watch_hub *h, int64_t durable_seq)
{
    lockcheck_lock(&h->mu);
    if (durable_seq > h->durable_seq)
        h->durable_seq = durable_seq;
    if (h->durable_streams || h->stopping) {
        for (size_t b = 0; b < WATCH_RUN_BUCKETS; b++)
            for (watcher *w = h->runs[b]; w; w = w->rnext)
                if (w->parked && ready(h, w))
                    wake(h, w);
    }
    lockcheck_unlock(&h->mu);
}

/* Wakes every parked watcher; polls fire (answered as they stand). mu held. */
static void wake_all(watch_hub *h)
{
    for (size_t b = 0; b < WATCH_RUN_BUCKETS; b++)
        for (watcher *w = h->runs[b]; w; w = w->rnext) {
            if (w->kind == WATCH_POLL && !w->fired) {
                w->fired = true;
                w->timed_out = true;
            }
            if (ready(h, w))
                wake(h, w);
        }
}

void watch_stop(watch_hub *h)
{
    lockcheck_lock(&h->mu);
    h->stopping = true;
    wake_all(h);
    lockcheck_unlock(&h->mu);
}

void watch_release(watch_hub *h)
{
    lockcheck_lock(&h->mu);
    h->stopping = true;
    h->released = true;
    /* The end does not linger. */
    h->wakes_at = INT64_MIN;
    thread_nudge(h, INT64_MIN);
    wake_all(h);
    while (h->wakes || h->resuming)
        lockcheck_wait(&h->idle, &h->mu);
    lockcheck_unlock(&h->mu);
}

/* ---- the thread ---- */

static struct timespec timespec_of(int64_t ns)
{
    struct timespec ts = { (time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL) };
    return ts;
}

/* Heartbeats due and polls past their deadline. mu held. */
static void expire(watch_hub *h, int64_t now)
{
    deadline_item *d;
    while ((d = deadline_first(&h->deadlines)) != NULL && d->at <= now) {
        watcher *w = (watcher *)(void *)((char *)d - offsetof(watcher, deadline));
        deadline_remove(&h->deadlines, d);
        if (w->kind == WATCH_POLL) {
            w->fired = true;
            w->timed_out = true;
        } else {
            w->beat_due = true;
            /* The heap had room for it a moment ago. */
            (void)deadline_push(&h->deadlines, d, now + h->heartbeat_ns);
        }
        wake(h, w);
    }
}

static int park_id_order(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/*
 * Parked watchers whose peer has closed (or whose socket failed) are
 * dropped (a poll fires) and woken, so that their connections end and
 * free their --max-watchers slots now. The poll runs with mu released (it
 * takes milliseconds at thousands of sockets, and a change's hook waits
 * for mu under the engine's lock): afterwards only a watcher still in the
 * same park is acted on. That one's connection stayed suspended all
 * along, so the socket polled was its own; any other socket polled is
 * merely looked at. The next look is due while some are parked. mu held
 * on entry and on return.
 */
static void peer_check(watch_hub *h, int64_t now)
{
    size_t n = 0, gone = 0, cap = atomic_load(&h->open);
    struct pollfd *fds = cap ? malloc(cap * sizeof *fds) : NULL;
    uint64_t *ids = cap ? malloc(cap * sizeof *ids) : NULL;
    h->peer_check_at = INT64_MAX;
    for (size_t b = 0; fds && ids && b < WATCH_RUN_BUCKETS; b++)
        for (watcher *w = h->runs[b]; w && n < cap; w = w->rnext)
            if (w->parked && w->fd >= 0) {
                fds[n] = (struct pollfd){ .fd = w->fd, .events = POLLRDHUP };
                ids[n++] = w->park_id;
            }
    if (n > 0) {
        lockcheck_unlock(&h->mu);
        int ready = poll(fds, n, 0);
        lockcheck_lock(&h->mu);
        for (size_t i = 0; ready > 0 && i < n; i++)
            if (fds[i].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))
                ids[gone++] = ids[i];
    }
    if (gone > 0) {
        qsort(ids, gone, sizeof *ids, park_id_order);
        for (size_t b = 0; b < WATCH_RUN_BUCKETS; b++)
            for (watcher *w = h->runs[b]; w; w = w->rnext) {
                if (!w->parked || w->fd < 0 ||
                    !bsearch(&w->park_id, ids, gone, sizeof *ids, park_id_order))
                    continue;
                /* Not watch_dropped (a client too far behind): this one left. */
                if (w->kind == WATCH_POLL)
                    w->fired = w->timed_out = true;
                else
                    drop_as(h, w, false);
                wake(h, w);
            }
    }
    /*
     * Some still parked, or out of memory (none was looked at): look again
     * later. One parked while mu was released has set the time already.
     */
    if ((n > gone || (cap > 0 && (!fds || !ids))) && h->peer_check_at == INT64_MAX)
        h->peer_check_at = now + WATCH_PEER_CHECK_NS;
    free(fds);
    free(ids);
}

static void *hub_main(void *arg)
{
    watch_hub *h = arg;
    lockcheck_lock(&h->mu);
    while (!h->quit) {
        int64_t now = model_mono_ns();
        h->sleep_until = INT64_MIN;
        expire(h, now);
        if (now >= h->peer_check_at)
            peer_check(h, now);
        if (h->wakes && (h->wakes_at <= now || h->released)) {
            watcher *list = h->wakes;
            h->wakes = NULL;
            h->wakes_at = INT64_MAX;
            h->resuming = true;
            lockcheck_unlock(&h->mu);
            /* Each is suspended until this resume, so it cannot be closed under us. */
            while (list) {
                watcher *next = list->wake_next;
                list->wake_next = NULL;
                h->cfg.resume(list->owner);
                list = next;
            }
            lockcheck_lock(&h->mu);
            h->resuming = false;
            pthread_cond_broadcast(&h->idle);
            continue;
        }
        if (!h->wakes)
            h->wakes_at = INT64_MAX;
        deadline_item *d = deadline_first(&h->deadlines);
        int64_t at = d && d->at < h->wakes_at ? d->at : h->wakes_at;
        if (h->peer_check_at < at)
            at = h->peer_check_at;
        if (at != INT64_MAX) {
            h->sleep_until = at;
            struct timespec until = timespec_of(at);
            lockcheck_timedwait(&h->cv, &h->mu, &until);
        } else {
            h->sleep_until = INT64_MAX;
            lockcheck_wait(&h->cv, &h->mu);
        }
    }
    lockcheck_unlock(&h->mu);
    return NULL;
}

watch_hub *watch_hub_new(const watch_config *cfg)
{
    watch_hub *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->cfg = *cfg;
    h->heartbeat_ns = (int64_t)(cfg->heartbeat * 1e9);
    h->durable_seq = h->last_seq = cfg->durable_seq;
    h->sleep_until = INT64_MAX;
    h->wakes_at = INT64_MAX;
    h->peer_check_at = INT64_MAX;
    deadline_init(&h->deadlines);
    int ok = lockcheck_init(&h->mu) == 0;
    ok = ok && lockcheck_cond_init(&h->cv) == 0;
    ok = ok && pthread_cond_init(&h->idle, NULL) == 0;
    if (!ok || pthread_create(&h->thread, NULL, hub_main, h) != 0) {
        /* Only a failure of the last step leaves all three to destroy; creating them does not fail on Linux. */
        free(h);
        return NULL;
    }
    return h;
}

void watch_hub_free(watch_hub *h)
{
    if (!h)
        return;
    lockcheck_lock(&h->mu);
    assert(atomic_load(&h->open) == 0);
    h->quit = true;
    pthread_cond_signal(&h->cv);
    lockcheck_unlock(&h->mu);
    pthread_join(h->thread, NULL);
    deadline_free(&h->deadlines);
    pthread_cond_destroy(&h->cv);
    pthread_cond_destroy(&h->idle);
    lockcheck_destroy(&h->mu);
    free(h);
}

/* ---- watchers ---- */

watcher *watch_open(watch_hub *h, watch_kind kind, const char *run_id, int64_t since,
                    bool durable, void *owner, int64_t deadline_ns, int *err)
{
    watcher *w = calloc(1, sizeof *w);
    if (!w) {
        *err = WATCH_NO_MEMORY;
        return NULL;
    }
    w->hub = h;
    w->kind = kind;
    w->durable = durable && kind == WATCH_STREAM;
    w->since = since;
    w->owner = owner;
    w->loading = kind == WATCH_STREAM;
    snprintf(w->run_id, sizeof w->run_id, "%s", run_id);
    w->run_hash = model_hash(MODEL_HASH_SEED, run_id);
    deadline_item_init(&w->deadline);
    int64_t at = kind == WATCH_POLL ? deadline_ns
                 : h->heartbeat_ns > 0 ? model_mono_ns() + h->heartbeat_ns : 0;
    lockcheck_lock(&h->mu);
    if (atomic_load(&h->open) >= h->cfg.max_watchers || h->released) {
        lockcheck_unlock(&h->mu);
        free(w);
        *err = WATCH_TOO_MANY;
        return NULL;
    }
    if (at && deadline_push(&h->deadlines, &w->deadline, at) != 0) {
        lockcheck_unlock(&h->mu);
        free(w);
        *err = WATCH_NO_MEMORY;
        return NULL;
    }
    if (at)
        thread_nudge(h, at);
    watcher **b = run_bucket(h, w->run_hash);
    w->rnext = *b;
    if (*b)
        (*b)->rprev = w;
    *b = w;
    if (w->durable)
        h->durable_streams++;
    atomic_fetch_add(&h->open, 1);
    if (h->cfg.stats)
        atomic_store(&h->cfg.stats->watchers, atomic_load(&h->open));
    lockcheck_unlock(&h->mu);
    return w;
}

static int by_seq(const void *a, const void *b)
{
    int64_t x = (*(ns_row *const *)a)->seq, y = (*(ns_row *const *)b)->seq;
    return (x > y) - (x < y);
}

int watch_catch_up(watcher *w, ns_row *const *rows, size_t n)
{
    watch_hub *h = w->hub;
    /* Sorted outside the lock: the hook waits for it under the engine's. */
    ns_row **sorted = malloc((n ? n : 1) * sizeof *sorted);
    if (!sorted) {
        lockcheck_lock(&h->mu);
        drop(h, w);
        w->loading = false;
        lockcheck_unlock(&h->mu);
        return -1;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (rows[i]->seq > w->since)
            sorted[m++] = rows[i];
    qsort(sorted, m, sizeof *sorted, by_seq);
    int rc = 0;
    lockcheck_lock(&h->mu);
    /*
     * A node already pending changed after watch_open: its entry is newer.
     * Every other row was there before watch_open, so its seq is below every
     * pending one: the catch-up goes first, in seq order.
     */
    pend *after = NULL;
    for (size_t i = 0; i < m && !w->dropped && !w->deleted_seq; i++) {
        uint64_t hash = model_hash(MODEL_HASH_SEED, sorted[i]->node_id);
        if (pend_find(w, sorted[i]->node_id, hash))
            continue;
        pend *p = pend_grow(w) == 0 ? pend_new(sorted[i], hash, true) : NULL;
        if (!p) {
            drop(h, w);
            rc = -1;
            break;
        }
        pend_link(w, p, after);
        after = p;
    }
    w->loading = false;
    if (ready(h, w))
        wake(h, w);
    lockcheck_unlock(&h->mu);
    free(sorted);
    return rc;
}

void watch_close(watcher *w)
{
    if (!w)
        return;
    watch_hub *h = w->hub;
    lockcheck_lock(&h->mu);
    /* A watcher on the resume list is suspended, and a suspended connection does not end. */
    assert(!w->parked || h->released);
    if (w->rprev)
        w->rprev->rnext = w->rnext;
    else
        *run_bucket(h, w->run_hash) = w->rnext;
    if (w->rnext)
        w->rnext->rprev = w->rprev;
    deadline_remove(&h->deadlines, &w->deadline);
    if (w->durable)
        h->durable_streams--;
    pend_clear(w);
    atomic_fetch_sub(&h->open, 1);
    if (h->cfg.stats)
        atomic_store(&h->cfg.stats->watchers, atomic_load(&h->open));
    lockcheck_unlock(&h->mu);
    free(w->out);
    free(w);
}

/* ---- the stream's text (the connection's thread) ---- */

typedef enum piece_kind { PIECE_NONE, PIECE_ROW, PIECE_TEXT, PIECE_END, PIECE_DROP } piece_kind;

/*
 * What comes next, decided under mu: a row taken off the pending set (the
 * reference moves to *row; *catchup says whether it came from the catch-up),
 * a fixed text, the end, or nothing.
 */
static piece_kind next_piece(watcher *w, ns_row **row, char *text, size_t size,
                             bool *durable, bool *catchup)
{
    watch_hub *h = w->hub;
    piece_kind k = PIECE_NONE;
    lockcheck_lock(&h->mu);
    if (w->dropped) {
        k = PIECE_DROP;
    } else if (w->deleted_seq && deleted_sendable(h, w)) {
        snprintf(text, size, "id: %" PRId64 "\nevent: deleted\ndata: {\"run_id\":\"%s\",\"seq\":%"
                 PRId64 "}\n\n", w->deleted_seq, w->run_id, w->deleted_seq);
        w->ended = true;
        k = PIECE_TEXT;
    } else if (w->beat_due) {
        w->beat_due = false;
        snprintf(text, size, "%s", WATCH_HEARTBEAT);
        k = PIECE_TEXT;
    } else if (w->loading || w->deleted_seq) {
        k = h->released ? PIECE_END : PIECE_NONE;
    } else if (!w->synced_sent && w->catchup_left == 0) {
        w->synced_sent = true;
        snprintf(text, size, "event: synced\ndata: {\"run_id\":\"%s\",\"last_seq\":%" PRId64
                 "}\n\n", w->run_id, hub_last_seq(h));
        k = PIECE_TEXT;
    } else if (w->head && (!w->durable || w->head->row->seq <= h->durable_seq)) {
        pend *p = w->head;
        pend_unlink(w, p);
        *row = p->row;
        *durable = p->row->seq <= h->durable_seq;
        *catchup = p->catchup;
        free(p);
        k = PIECE_ROW;
    } else if (h->released || (h->stopping && !w->head && h->durable_seq >= hub_last_seq(h))) {
        k = PIECE_END;
    }
    lockcheck_unlock(&h->mu);
    return k;
}

/* Whether row's node has an entry in w's pending set. */
static bool pending(watcher *w, const ns_row *row)
{
    lockcheck_lock(&w->hub->mu);
    bool has = pend_find(w, row->node_id, model_hash(MODEL_HASH_SEED, row->node_id)) != NULL;
    lockcheck_unlock(&w->hub->mu);
    return has;
}

/* Builds the next event into w->out. 1 built, 0 nothing, WATCH_FILL_END/DROP. */
static int build(watcher *w)
{
    watch_hub *h = w->hub;
    char text[NS_ID_MAX + 160];
    ns_row *row = NULL;
    bool durable = false;
    free(w->out);
    w->out = NULL;
    w->out_len = w->out_off = 0;
    if (!w->started) {
        w->started = true;
        w->out = strdup(WATCH_PREAMBLE);
        if (!w->out)
            return WATCH_FILL_DROP;
        w->out_len = strlen(w->out);
        return 1;
    }
    if (w->ended)
        return WATCH_FILL_END;
    for (bool catchup = false;; catchup = false) {
        switch (next_piece(w, &row, text, sizeof text, &durable, &catchup)) {
        case PIECE_NONE:
            return 0;
        case PIECE_END:
            w->ended = true;
            return WATCH_FILL_END;
        case PIECE_DROP:
            return WATCH_FILL_DROP;
        case PIECE_TEXT:
            w->out = strdup(text);
            if (!w->out)
                return WATCH_FILL_DROP;
            w->out_len = strlen(text);
            return 1;
        case PIECE_ROW:
            break;
        }
        if (!catchup || !h->cfg.fetch)
            break;
        /* A catch-up entry names the node and its seq: its row is read now. */
        ns_row *now = NULL;
        int rc = h->cfg.fetch(h->cfg.encode_ctx, w->run_id, row->node_id, &now);
        bool same = rc == 0 && now && now->seq == row->seq;
        model_row_unref(row);
        row = now;
        if (rc != 0)
            return WATCH_FILL_DROP; /* the client resumes from what it has */
        if (same)
            break;
        /*
         * Moved on: a change of this instance is pending (filed under the
         * engine's lock before the row could be read), and goes out in seq
         * order. One that came otherwise (another instance's commit, heard
         * as a dropped cache; a row the database refused, read back as
         * stored) has no entry: the row read is sent in this one's place.
         * Gone: the delete follows.
         */
        if (now && !pending(w, now)) {
            lockcheck_lock(&h->mu);
            durable = now->seq <= h->durable_seq;
            lockcheck_unlock(&h->mu);
            break;
        }
        model_row_unref(now);
    }
    size_t jlen = 0;
    char *json = h->cfg.encode(h->cfg.encode_ctx, row, durable, &jlen);
    int64_t seq = row->seq;
    model_row_unref(row);
    if (!json)
        return WATCH_FILL_DROP;
    size_t cap = jlen + WATCH_EVENT_OVERHEAD;
    w->out = malloc(cap);
    if (!w->out) {
        free(json);
        return WATCH_FILL_DROP;
    }
    int head = snprintf(w->out, cap, "id: %" PRId64 "\nevent: node\ndata: ", seq);
    memcpy(w->out + head, json, jlen);
    memcpy(w->out + head + jlen, "\n\n", 2);
    w->out_len = (size_t)head + jlen + 2;
    free(json);
    if (h->cfg.stats)
        count_add(&h->cfg.stats->watch_events_sent, 1);
    return 1;
}

ssize_t watch_fill(watcher *w, char *buf, size_t max)
{
    size_t n = 0;
    while (n < max) {
        if (w->out_off < w->out_len) {
            size_t c = w->out_len - w->out_off;
            if (c > max - n)
                c = max - n;
            memcpy(buf + n, w->out + w->out_off, c);
            w->out_off += c;
            n += c;
            continue;
        }
        int got = build(w);
        if (got == 1)
            continue;
        if (got == WATCH_FILL_DROP)
            return WATCH_FILL_DROP;   /* a partial event is worth nothing */
        if (n > 0 || got == 0)
            break;
        return got;                   /* END with nothing left to write */
    }
    return (ssize_t)n;
}

bool watch_park(watcher *w, int fd)
{
    watch_hub *h = w->hub;
    bool now;
    lockcheck_lock(&h->mu);
    now = h->released || ready(h, w);
    if (!now) {
        w->parked = true;
        w->fd = fd;
        w->park_id = ++h->parks;
        if (fd >= 0 && h->peer_check_at == INT64_MAX) {
            h->peer_check_at = model_mono_ns() + WATCH_PEER_CHECK_NS;
            thread_nudge(h, h->peer_check_at);
        }
    }
    lockcheck_unlock(&h->mu);
    return now;
}

bool watch_timed_out(watcher *w)
{
    bool t;
    lockcheck_lock(&w->hub->mu);
    t = w->timed_out;
    lockcheck_unlock(&w->hub->mu);
    return t;
}


void *watch_owner(const watcher *w)
{
    return w->owner;
}

void watch_deleted_before(watcher *w, int64_t seq, bool committed)
{
    watch_hub *h = w->hub;
    lockcheck_lock(&h->mu);
    /* One seen since watch_open is newer, and says the same. */
    if (!w->deleted_seq) {
        pend_clear(w);
        w->deleted_seq = seq;
        w->deleted_committed = committed;
    }
    lockcheck_unlock(&h->mu);
}

bool watch_deleted(watcher *w)
{
    bool d;
    lockcheck_lock(&w->hub->mu);
    d = w->deleted_seq != 0;
    lockcheck_unlock(&w->hub->mu);
    return d;
}
