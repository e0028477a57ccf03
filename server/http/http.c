#include "http.h"

#include <arpa/inet.h>
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "deadline.h"
#include "framing.h"
#include "lockcheck.h"
#include "logfmt.h"
#include "loglevel.h"
#include "model.h"
#include "waitq.h"

/* How often http_stop looks at the number of requests in flight. */
#define HTTP_DRAIN_POLL_NS 10000000LL
/*
 * Longest park (and stop timeout) we honour; the api caps ?timeout= far below
 * this already. It also keeps deadlines in ns far from int64 overflow.
 */
#define HTTP_MAX_PARK_SECONDS 86400.0
/*
 * The tail of http_stop's budget kept for the teardown after the drain
 * (unhooking the durable callback, joining the timer, MHD_stop_daemon), so
 * that the whole stop fits in its timeout. At most a tenth of the budget.
 */
#define HTTP_STOP_RESERVE_NS 50000000LL
/* The struct holding member m, from a pointer to that member. */
#define HTTP_OWNER(ptr, type, m) ((type *)(void *)((char *)(ptr) - offsetof(type, m)))

/*
 * Where the server is in its life (the diagram is in http.h). It only moves
 * forward (http_state_advance); a failed http_start goes from STARTING
 * through its teardown to STOPPED.
 */
typedef enum http_state {
    HTTP_STARTING,  /* http_start: nothing served yet */
    HTTP_SERVING,   /* http_start returned */
    HTTP_STOPPING,  /* http_stop: quiesced, every answer closes its connection */
    HTTP_RELEASED,  /* parked requests answered as they stand; nothing parks any more */
    HTTP_STOPPED    /* http_teardown: the timer thread exits, the daemon stops */
} http_state;

typedef enum http_phase {
    HTTP_READING,   /* headers seen, body (if any) arriving */
    HTTP_PARKED,    /* suspended until durable or deadline */
    HTTP_RESUMED    /* a resumer took it off the waiter list */
} http_phase;

/*
 * One request, from the first handler call to MHD_OPTION_NOTIFY_COMPLETED.
 * Only the connection's MHD worker touches it, except the waiter fields
 * (wait, ready, durable, phase while parked), which are guarded by
 * http_server.mu while the request is parked. Whoever takes a waiter off the
 * lists owns the resume: the request cannot complete before
 * MHD_resume_connection, so the taker may still read it.
 */
typedef struct http_req {
    http_server *srv;
    struct MHD_Connection *con;
    char *body;                 /* NUL-terminated; NULL before the first byte */
    size_t len;
    size_t cap;
    bool too_large;             /* Content-Length or the bytes seen passed the limit */
    bool must_close;            /* the answer ends the connection (bad framing) */
    bool oom;                   /* buffering the body ran out of memory */
    http_phase phase;
    api_response resp;          /* the api's first answer while parked */
    waitq_item wait;            /* in http_server.waiters (mu); wait.seq is set
                                   before parking, then read-only; deadlines on
                                   the model_mono_ns() clock */
    bool durable;               /* set by the resumer */
    int64_t start_ns;           /* model_mono_ns() at the first call, for the access log */
    struct http_req *ready;     /* the taker's ready list once taken */
} http_req;

/*
 * One client connection, from MHD_CONNECTION_NOTIFY_STARTED to
 * MHD_CONNECTION_NOTIFY_CLOSED (its MHD socket context), on the list
 * http_server.conns. fd is MHD's and stays open while the connection is
 * registered, which is what lets the timer shut it down under mu without
 * racing its close. headers is on http_server.headers (with a header
 * timeout) while the connection owes a request's headers.
 */
typedef struct http_conn {
    deadline_item headers;      /* (mu) */
    struct http_conn *next;     /* http_server.conns links (mu) */
    struct http_conn *prev;
    struct MHD_Connection *con; /* set before linking, then read-only */
    pthread_t owner;            /*   the MHD worker thread serving it */
    int fd;                     /*   its socket */
    /* Owner thread only: */
    bool awaiting;              /* from accept, and again from the end of each
                                 * request, to the next first handler call */
    bool answered_by_us;        /* we answered what MHD is about to refuse */
} http_conn;

struct http_server {
    struct MHD_Daemon *daemon;
    api *a;
    engine *e;
    size_t max_body_bytes;
    int64_t header_timeout_ns;  /* 0: no header deadline */
    uint16_t port;
    bool access_log;            /* log every answer (http_config.access_log) */
    ns_log_fn *log;
    void *log_ctx;
    /* Requests between their first handler call and their completion. */
    _Atomic size_t inflight;

    lockcheck_mutex mu;         /* lockcheck_assert_held where a function needs it */
    /*
     * An http_state. Written only with mu held (http_state_advance), so the
     * timer's wait on timer_cv sees each change; _Atomic so that http_queue
     * may read it without mu.
     */
    _Atomic int state;
    /*
     * Guarded by mu. Every parked request is on the waiters (waitq.h): by
     * seq, so that the durable callback stops at the first request not yet
     * durable, and by deadline, so that the timer finds the earliest.
     */
    waitq waiters;              /* http_req.wait of every parked request */
    deadline_heap headers;      /* http_conn.headers of connections owing headers */
    http_conn *conns;           /* every open connection (with memory for it) */
    /*
     * The deadline the timer sleeps towards: INT64_MAX when it sleeps with no
     * deadline, INT64_MIN while it is awake (it looks at the heaps before it
     * sleeps again). A park or a header deadline signals the timer only when
     * it is earlier, so that both stay O(log n) instead of waking the timer.
     */
    int64_t timer_wake_ns;
    pthread_cond_t timer_cv;    /* an earlier deadline, or HTTP_STOPPED */

    pthread_t timer;
    /*
     * What the teardown must undo, whatever the state: these say which
     * resources exist (a failed http_start has only some of them).
     */
    bool timer_started;         /* joined (and false again) by http_timer_stop */
    bool durable_hooked;        /* http_on_durable is registered with the engine */
    bool mu_init;
    bool cv_init;
};

/* ---- the life cycle ------------------------------------------------------- */

static http_state http_state_of(const http_server *s)
{
    return (http_state)atomic_load(&s->state);
}

/* Moves the state forward to `to`; a later state already reached stays. mu held. */
static void http_state_advance(http_server *s, http_state to)
{
    lockcheck_assert_held(&s->mu);
    if (http_state_of(s) < to)
        atomic_store(&s->state, (int)to);
}

/* ---- logging ------------------------------------------------------------ */

static void http_log(http_server *s, int level, const char *msg,
                     const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void http_log(http_server *s, int level, const char *msg,
                     const char *fmt, ...)
{
    char fields[512];
    va_list ap;

    if (s->log == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(fields, sizeof fields, fmt, ap);
    va_end(ap);
    s->log(s->log_ctx, level, msg, fields);
}

static void http_on_library_message(http_server *s, const char *text);
static void http_remote(struct MHD_Connection *con, char *buf, size_t size);

/*
 * MHD's own diagnostics (bind failures, out of memory, protocol trouble)
 * become one logfmt line each, the text quoted so the line stays parseable.
 */
static void http_mhd_log(void *cls, const char *fm, va_list ap)
{
    http_server *s = cls;
    char text[400];
    char quoted[2 * sizeof text + 3];
    size_t n;

    vsnprintf(text, sizeof text, fm, ap);
    http_on_library_message(s, text);
    if (s->log == NULL)
        return;
    n = strlen(text); /* MHD ends its messages with a newline: not part of the text */
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r'))
        text[--n] = '\0';
    http_log(s, NS_LOG_WARN, "http_library", "detail=%s",
             logfmt_quote(quoted, sizeof quoted, text));
}

/* ---- time ---------------------------------------------------------------- */

/* seconds as ns; NaN and negatives become 0, absurd values the park cap. */
static int64_t http_seconds_ns(double seconds)
{
    if (!(seconds > 0))
        return 0;
    if (seconds > HTTP_MAX_PARK_SECONDS)
        seconds = HTTP_MAX_PARK_SECONDS;
    return (int64_t)(seconds * 1e9);
}

/* pthread_cond_timedwait wants a timespec on the cv's clock (CLOCK_MONOTONIC). */
static struct timespec http_timespec(int64_t ns)
{
    struct timespec ts;

    ts.tv_sec = (time_t)(ns / 1000000000LL);
    ts.tv_nsec = (long)(ns % 1000000000LL);
    return ts;
}

/* ---- the timer's deadlines (mu held) ------------------------------------- */

/* A new deadline at ns: the timer must look again when it sleeps towards a later one. */
static void http_timer_nudge(http_server *s, int64_t ns)
{
    lockcheck_assert_held(&s->mu);
    if (ns < s->timer_wake_ns) {
        s->timer_wake_ns = INT64_MIN;
        pthread_cond_signal(&s->timer_cv);
    }
}

/* ---- the waiters (mu held) ----------------------------------------------- */

/*
 * Parks r on the by-seq list and the deadline heap. Requests arrive nearly
 * in seq order, so the walk from the tail is short. 0, or -1 (out of memory,
 * r is on neither).
 */
static int http_waiter_link(http_server *s, http_req *r, int64_t deadline_ns)
{
    lockcheck_assert_held(&s->mu);
    return waitq_push(&s->waiters, &r->wait, r->wait.seq, deadline_ns);
}

static void http_waiter_unlink(http_server *s, http_req *r)
{
    lockcheck_assert_held(&s->mu);
    waitq_remove(&s->waiters, &r->wait);
}

/*
 * Takes r off the waiters onto *ready (chained through next), recording
 * whether its seq is durable; the caller resumes *ready after dropping mu.
 */
static void http_waiter_take(http_server *s, http_req *r, bool durable,
                             http_req **ready)
{
    lockcheck_assert_held(&s->mu);
    http_waiter_unlink(s, r);
    r->durable = durable;
    r->phase = HTTP_RESUMED;
    r->ready = *ready;
    *ready = r;
}

/*
 * Resumes requests taken off the waiters. Called without mu, so that MHD's
 * own locks are never taken inside ours. The links are read before each
 * resume: once resumed, the request may complete and be freed at any moment.
 */
static void http_resume_all(http_req *ready)
{
    while (ready != NULL) {
        http_req *next = ready->ready;
        struct MHD_Connection *con = ready->con;

        ready->ready = NULL;
        MHD_resume_connection(con);
        ready = next;
    }
}

/* Takes every parked request off the waiters, durable or not by the engine's word. */
static void http_release_all(http_server *s)
{
    http_req *ready = NULL;
    int64_t durable = engine_durable_seq(s->e);
    waitq_item *w;

    lockcheck_assert_not_held(&s->mu);
    lockcheck_lock(&s->mu);
    while ((w = waitq_lowest(&s->waiters)) != NULL)
        http_waiter_take(s, HTTP_OWNER(w, http_req, wait), w->seq <= durable,
                         &ready);
    lockcheck_unlock(&s->mu);
    http_resume_all(ready);
}

/*
 * engine_on_durable callback, on the writer thread after each commit. The
 * by-seq order lets it stop at the first request not yet durable: the cost
 * is the requests answered, not the requests parked.
 */
static void http_on_durable(void *ctx, int64_t durable_seq)
{
    http_server *s = ctx;
    http_req *ready = NULL;
    waitq_item *w;

    lockcheck_assert_not_held(&s->mu);
    lockcheck_lock(&s->mu);
    while ((w = waitq_lowest(&s->waiters)) != NULL && w->seq <= durable_seq)
        http_waiter_take(s, HTTP_OWNER(w, http_req, wait), true, &ready);
    lockcheck_unlock(&s->mu);
    http_resume_all(ready);
}

/*
 * Connections still owing their request's headers at now are shut down (mu
 * held). A registered connection's fd is still MHD's own (it is closed only
 * after MHD_CONNECTION_NOTIFY_CLOSED, which unregisters under mu), so the
 * shutdown cannot hit a reused descriptor. MHD then sees the end of the
 * stream on its next poll and closes the connection itself, notifying us as
 * for any close: trickled bytes do not help a client, whereas MHD's own
 * timeout counts only idle time.
 */
static size_t http_expire_headers(http_server *s, int64_t now)
{
    deadline_item *it;
    size_t n = 0;

    lockcheck_assert_held(&s->mu);
    while ((it = deadline_first(&s->headers)) != NULL && it->at <= now) {
        http_conn *c = HTTP_OWNER(it, http_conn, headers);

        deadline_remove(&s->headers, it);
        (void)shutdown(c->fd, SHUT_RDWR);
        n++;
    }
    return n;
}

/* The earliest deadline of the waiters and the headers, or INT64_MAX. */
static int64_t http_next_deadline(const http_server *s)
{
    const waitq_item *w = waitq_earliest(&s->waiters);
    const deadline_item *p = w != NULL ? &w->deadline : NULL;
    const deadline_item *h = deadline_first(&s->headers);
    int64_t next = INT64_MAX;

    lockcheck_assert_held(&s->mu);
    if (p != NULL)
        next = p->at;
    if (h != NULL && h->at < next)
        next = h->at;
    return next;
}

/*
 * The timer thread: sleeps until the earliest deadline, resumes the expired
 * waiters (not durable, unless the engine caught up meanwhile) and shuts the
 * connections that have not sent their headers in time. MHD does not time
 * out suspended connections, so without it a lost commit would park a
 * request forever.
 */
static void *http_timer_main(void *arg)
{
    http_server *s = arg;

    lockcheck_lock(&s->mu);
    while (http_state_of(s) != HTTP_STOPPED) {
        int64_t now = model_mono_ns();
        int64_t durable = 0;
        bool durable_read = false;
        http_req *ready = NULL;
        waitq_item *w;
        size_t cut;

        s->timer_wake_ns = INT64_MIN;  /* awake: parks need not signal */
        while ((w = waitq_earliest(&s->waiters)) != NULL
               && w->deadline.at <= now) {
            http_req *r = HTTP_OWNER(w, http_req, wait);

            if (!durable_read) {
                durable = engine_durable_seq(s->e);
                durable_read = true;
            }
            http_waiter_take(s, r, w->seq <= durable, &ready);
        }
        cut = http_expire_headers(s, now);
        if (ready != NULL || cut > 0) {
            lockcheck_unlock(&s->mu);
            http_resume_all(ready);
            if (cut > 0)
                http_log(s, NS_LOG_DEBUG, "http_header_timeout", "connections=%zu",
                         cut);
            lockcheck_lock(&s->mu);
            continue;
        }
        if (http_next_deadline(s) != INT64_MAX) {
            struct timespec until;

            s->timer_wake_ns = http_next_deadline(s);
            until = http_timespec(s->timer_wake_ns);
            lockcheck_timedwait(&s->timer_cv, &s->mu, &until);
        } else {
            s->timer_wake_ns = INT64_MAX;
            lockcheck_wait(&s->timer_cv, &s->mu);
        }
    }
    lockcheck_unlock(&s->mu);
    return NULL;
}

/*
 * Stops the timer thread and waits for it, resumes in progress included.
 * Bounded: the timer only ever waits on timer_cv, which this signals.
 */
static void http_timer_stop(http_server *s)
{
    lockcheck_lock(&s->mu);
    http_state_advance(s, HTTP_STOPPED);
    pthread_cond_broadcast(&s->timer_cv);
    lockcheck_unlock(&s->mu);
    if (!s->timer_started)
        return;
    pthread_join(s->timer, NULL);
    s->timer_started = false;
}

/* ---- connections and their header deadlines ---------------------------------- */

/* The connection's http_conn, or NULL (out of memory at its start). */
static http_conn *http_conn_of(struct MHD_Connection *con)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(con, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

    return ci != NULL ? ci->socket_context : NULL;
}

/*
 * c owes a request's headers from now: from accept, and from the end of each
 * request on a kept-alive connection. Without memory for the heap the
 * connection goes without a header deadline (MHD's idle timeout still holds).
 */
static void http_headers_arm(http_server *s, http_conn *c)
{
    int64_t at = model_mono_ns() + s->header_timeout_ns;
    int rc = 0;

    c->awaiting = true;
    if (s->header_timeout_ns == 0)
        return;
    lockcheck_lock(&s->mu);
    if (!deadline_item_queued(&c->headers)) {
        rc = deadline_push(&s->headers, &c->headers, at);
        if (rc == 0)
            http_timer_nudge(s, at);
    }
    lockcheck_unlock(&s->mu);
    if (rc != 0)
        http_log(s, NS_LOG_WARN, "http_header_deadline_failed",
                 "error=\"out of memory\"");
}

/* The headers came (first handler call of a request): no deadline until it ends. */
static void http_headers_disarm(http_server *s, http_conn *c)
{
    c->awaiting = false;
    if (s->header_timeout_ns == 0)
        return;
    lockcheck_lock(&s->mu);
    deadline_remove(&s->headers, &c->headers);
    lockcheck_unlock(&s->mu);
}

/*
 * MHD_OPTION_NOTIFY_CONNECTION, on the connection's own worker thread:
 * registers each connection (owing headers from its accept), and
 * unregisters it on close, before MHD closes the socket.
 */
static void http_on_connection(void *cls, struct MHD_Connection *con,
                               void **socket_context,
                               enum MHD_ConnectionNotificationCode toe)
{
    http_server *s = cls;
    http_conn *c = *socket_context;

    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(con, MHD_CONNECTION_INFO_CONNECTION_FD);

        if (ci == NULL)
            return;
        c = calloc(1, sizeof *c);
        if (c == NULL) {
            http_log(s, NS_LOG_WARN, "http_connection_untracked",
                     "error=\"out of memory\"");
            return;
        }
        deadline_item_init(&c->headers);
        c->con = con;
        c->owner = pthread_self();
        c->fd = ci->connect_fd;
        lockcheck_lock(&s->mu);
        c->next = s->conns;
        if (s->conns != NULL)
            s->conns->prev = c;
        s->conns = c;
        lockcheck_unlock(&s->mu);
        *socket_context = c;
        http_headers_arm(s, c);
        return;
    }
    if (c == NULL)
        return;
    lockcheck_lock(&s->mu);
    deadline_remove(&s->headers, &c->headers);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    lockcheck_unlock(&s->mu);
    free(c);
    *socket_context = NULL;
}

/* ---- framing ---------------------------------------------------------------- */

static enum MHD_Result http_framing_field(void *cls, enum MHD_ValueKind kind,
                                          const char *key, size_t key_size,
                                          const char *value, size_t value_size)
{
    framing_add(cls, key, key_size, value, value_size);
    return MHD_YES;
}

/* The verdict on the request's Content-Length / Transfer-Encoding fields. */
static framing_verdict http_framing(struct MHD_Connection *con)
{
    framing_state st;

    framing_init(&st);
    if (MHD_get_connection_values_n(con, MHD_HEADER_KIND, http_framing_field,
                                    &st) < 0)
        return FRAMING_OK;
    return framing_verdict_of(&st);
}

/* ---- what MHD answers itself --------------------------------------------------- */

/* MHD 0.9.75's log line for each error answer it sends itself. */
#define HTTP_MHD_ERROR_PREFIX "Error processing request (HTTP response code is "
/* Its lines for a Content-Length it cannot parse (400) or that overflows (413). */
#define HTTP_MHD_BAD_LENGTH "Failed to parse `Content-Length' header"
#define HTTP_MHD_HUGE_LENGTH "Too large value of 'Content-Length' header"
/* Most connections of one worker looked at to find the one MHD refuses. */
#define HTTP_SUSPECTS_MAX 16

static bool http_starts_with(const char *text, const char *prefix)
{
    return strncmp(text, prefix, strlen(prefix)) == 0;
}

/*
 * The connection whose Content-Length MHD is refusing right now, or NULL
 * when it cannot be told for sure. MHD logs the refusal from inside its
 * header parsing, on the connection's own worker thread and before it has
 * sent anything; so the connection is one of this thread's that await their
 * first handler call, and the one among them whose fields framing_check
 * finds malformed. Two such (one still trickling its headers) are left to
 * MHD rather than guessed between.
 */
static http_conn *http_refused_conn(http_server *s)
{
    http_conn *suspects[HTTP_SUSPECTS_MAX];
    http_conn *hit = NULL;
    pthread_t self = pthread_self();
    size_t n = 0, hits = 0, i;
    http_conn *c;

    lockcheck_lock(&s->mu);
    for (c = s->conns; c != NULL && n < HTTP_SUSPECTS_MAX; c = c->next)
        if (pthread_equal(c->owner, self) && c->awaiting)
            suspects[n++] = c;
    lockcheck_unlock(&s->mu);
    /* Only this thread closes its connections: they outlive the lock. */
    for (i = 0; i < n; i++) {
        if (http_framing(suspects[i]->con) == FRAMING_LENGTH_MALFORMED) {
            hit = suspects[i];
            hits++;
        }
    }
    return hits == 1 ? hit : NULL;
}

/*
 * MHD 0.9.75 answers a malformed or overflowing Content-Length with a 400
 * or 413 of its own, HTML, with its status line and headers sent twice.
 * Nothing of ours runs for that request but the log line it writes first,
 * so the answer is given from there: our 400 problem goes straight onto the
 * socket and the socket is shut, so that MHD's own answer, queued next,
 * fails to send and MHD closes the connection. A closed connection is what
 * MHD would have done after its answer too.
 */
static void http_answer_bad_length(http_server *s)
{
    http_conn *c = http_refused_conn(s);
    api_response resp;
    char head[256];
    struct iovec iov[2];
    struct msghdr msg;
    int n;

    if (c == NULL)
        return;
    api_problem(s->a, &resp, PROBLEM_BAD_FRAMING,
                framing_detail(FRAMING_LENGTH_MALFORMED));
    n = snprintf(head, sizeof head,
                 "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n"
                 "Content-Type: %s\r\nContent-Length: %zu\r\n\r\n",
                 resp.content_type != NULL ? resp.content_type : "text/plain",
                 resp.body != NULL ? resp.body_len : 0);
    if (n > 0 && (size_t)n < sizeof head) {
        memset(&msg, 0, sizeof msg);
        iov[0].iov_base = head;
        iov[0].iov_len = (size_t)n;
        iov[1].iov_base = resp.body;
        iov[1].iov_len = resp.body != NULL ? resp.body_len : 0;
        msg.msg_iov = iov;
        msg.msg_iovlen = 2;
        /* A few hundred bytes into a fresh socket's send buffer: one call. */
        (void)sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    (void)shutdown(c->fd, SHUT_RDWR);
    c->answered_by_us = true;
    http_headers_disarm(s, c);
    if (s->access_log) {
        char remote[INET6_ADDRSTRLEN];

        /* MHD has not handed over the method and path; the remote it has. */
        http_remote(c->con, remote, sizeof remote);
        http_log(s, NS_LOG_INFO, "access",
                 "method=- path=- status=400 bytes=%zu duration_ms=0.00 remote=%s",
                 resp.body != NULL ? resp.body_len : 0, remote);
    }
    api_response_free(&resp);
}

/*
 * Whether the error answer MHD is logging on this thread is one that
 * http_answer_bad_length replaced (and counted) already; it clears the mark.
 */
static bool http_replaced_answer(http_server *s)
{
    pthread_t self = pthread_self();
    bool replaced = false;
    http_conn *c;

    lockcheck_lock(&s->mu);
    for (c = s->conns; c != NULL && !replaced; c = c->next)
        if (pthread_equal(c->owner, self) && c->answered_by_us) {
            c->answered_by_us = false;
            replaced = true;
        }
    lockcheck_unlock(&s->mu);
    return replaced;
}

/*
 * Every MHD log line passes here first. MHD answers some requests itself,
 * before any callback of ours sees them (URI or headers too large, an
 * unparsable request line or header, a malformed chunk, an unsupported HTTP
 * version); its only report of such an answer in 0.9.75 is a log line, sent
 * for every one: "Error processing request (HTTP response code is 431
 * (...))". Counting it keeps http_responses complete.
 */
static void http_on_library_message(http_server *s, const char *text)
{
    int status = 0;
    const char *p;

    if (http_starts_with(text, HTTP_MHD_BAD_LENGTH) ||
        http_starts_with(text, HTTP_MHD_HUGE_LENGTH)) {
        http_answer_bad_length(s);
        return;
    }
    if (!http_starts_with(text, HTTP_MHD_ERROR_PREFIX) || http_replaced_answer(s))
        return;
    for (p = text + strlen(HTTP_MHD_ERROR_PREFIX); *p >= '0' && *p <= '9' && status < 1000;
         p++)
        status = status * 10 + (*p - '0');
    stats_count_http(engine_stats(s->e), status);
}

/* ---- request lookups handed to the api ------------------------------------ */

static const char *http_header(void *ctx, const char *name)
{
    return MHD_lookup_connection_value(ctx, MHD_HEADER_KIND, name);
}

/* "?wait" (no '=') is present with a NULL value in MHD: the api wants "". */
static const char *http_query(void *ctx, const char *name)
{
    const char *value = NULL;

    if (MHD_lookup_connection_value_n(ctx, MHD_GET_ARGUMENT_KIND, name,
                                      strlen(name), &value, NULL) != MHD_YES)
        return NULL;
    return value != NULL ? value : "";
}

/*
 * MHD_OPTION_UNESCAPE_CALLBACK: the URL and query values stay as sent. MHD's
 * own unescaping ran before the api saw them, so "/runs/r1%00/nodes/n1/state"
 * arrived as "/runs/r1" (a shorter id, another route) and "%2F" as a route
 * separator. The api refuses '%' in ids and decodes query values itself.
 * (MHD still turns '+' in query values into ' ' before calling this.)
 */
static size_t http_unescape_none(void *cls, struct MHD_Connection *con, char *s)
{
    (void)cls;
    (void)con;
    return strlen(s);
}

/* ---- answering ------------------------------------------------------------ */

/* The client's address as text, or "-" when MHD cannot tell. */
static void http_remote(struct MHD_Connection *con, char *buf, size_t size)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(con, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci != NULL ? ci->client_addr : NULL;
    const void *addr = NULL;

    if (sa != NULL && sa->sa_family == AF_INET)
        addr = &((const struct sockaddr_in *)(const void *)sa)->sin_addr;
    else if (sa != NULL && sa->sa_family == AF_INET6)
        addr = &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr;
    if (addr == NULL || inet_ntop(sa->sa_family, addr, buf, (socklen_t)size) == NULL)
        snprintf(buf, size, "-");
}

/*
 * One access line for an answer just queued. Method and path come from the
 * client, so they are quoted (and cut to fit) like any logfmt value.
 */
static void http_access_log(http_server *s, struct MHD_Connection *con,
                            const http_req *r, const char *method,
                            const char *url, int status, size_t bytes)
{
    char qmethod[40];
    char qpath[256];
    char remote[INET6_ADDRSTRLEN];
    double ms = (double)(model_mono_ns() - r->start_ns) / 1e6;

    http_remote(con, remote, sizeof remote);
    http_log(s, NS_LOG_INFO, "access",
             "method=%s path=%s status=%d bytes=%zu duration_ms=%.2f remote=%s",
             logfmt_quote(qmethod, sizeof qmethod, method),
             logfmt_quote(qpath, sizeof qpath, url), status, bytes, ms, remote);
}

/*
 * Queues resp on the connection and frees it. The body moves to MHD, which
 * frees it with free() once sent. MHD_NO (close the connection) when MHD
 * cannot take the response. With the access log on, a queued answer is
 * logged for r's method and url.
 */
static enum MHD_Result http_queue(http_server *s, const http_req *r,
                                  const char *method, const char *url,
                                  struct MHD_Connection *con, api_response *resp)
{
    struct MHD_Response *mr;
    enum MHD_Result ret = MHD_NO;
    bool has_body = resp->status != 304 && resp->body != NULL && resp->body_len > 0;
    size_t bytes = has_body ? resp->body_len : 0;

    if (has_body) {
        mr = MHD_create_response_from_buffer_with_free_callback(
            resp->body_len, resp->body, free);
        if (mr != NULL)
            resp->body = NULL;
    } else {
        mr = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    }
    if (mr == NULL)
        goto out;
    if (has_body && resp->content_type != NULL &&
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE,
                                resp->content_type) != MHD_YES)
        goto out;
    if (resp->etag[0] != '\0' &&
        MHD_add_response_header(mr, MHD_HTTP_HEADER_ETAG, resp->etag) != MHD_YES)
        goto out;
    if (resp->retry_after > 0) {
        char secs[24];

        snprintf(secs, sizeof secs, "%u", resp->retry_after);
        if (MHD_add_response_header(mr, MHD_HTTP_HEADER_RETRY_AFTER, secs) != MHD_YES)
            goto out;
    }
    if (resp->allow != NULL &&
        MHD_add_response_header(mr, MHD_HTTP_HEADER_ALLOW, resp->allow) != MHD_YES)
        goto out;
    if ((r->must_close || http_state_of(s) >= HTTP_STOPPING) &&
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CONNECTION, "close") != MHD_YES)
        goto out;
    if (resp->www_authenticate != NULL &&
        MHD_add_response_header(mr, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                                resp->www_authenticate) != MHD_YES)
        goto out;
    ret = MHD_queue_response(con, (unsigned)resp->status, mr);
    if (ret == MHD_YES && s->access_log)
        http_access_log(s, con, r, method, url, resp->status, bytes);
out:
    if (mr != NULL)
        MHD_destroy_response(mr);
    api_response_free(resp);
    return ret;
}

/*
 * Parks r (whose api answer waits for resp.wait_seq) until the writer reports
 * it durable or its deadline passes. The connection is suspended before r
 * goes on the waiters so that any resume finds it suspended; durable_seq is
 * checked again after linking so that a commit landing in between is not
 * missed. While http_stop is closing, nothing parks: r is resumed at once,
 * and so it is when the deadline heap cannot grow (answered not durable
 * unless it already is, rather than failing the request).
 */
static void http_park(http_server *s, http_req *r)
{
    bool resume_now = false;
    bool no_memory = false;
    bool released;
    int64_t deadline_ns;

    r->phase = HTTP_PARKED;
    r->wait.seq = r->resp.wait_seq;
    deadline_ns = model_mono_ns() + http_seconds_ns(r->resp.wait_timeout);
    MHD_suspend_connection(r->con);

    lockcheck_lock(&s->mu);
    released = http_state_of(s) >= HTTP_RELEASED;
    if (!released && http_waiter_link(s, r, deadline_ns) != 0)
        no_memory = true;
    if (released || no_memory) {
        r->durable = engine_durable_seq(s->e) >= r->wait.seq;
        r->phase = HTTP_RESUMED;
        resume_now = true;
    } else {
        http_timer_nudge(s, deadline_ns);
    }
    lockcheck_unlock(&s->mu);
    if (no_memory)
        http_log(s, NS_LOG_WARN, "http_park_failed",
                 "seq=%" PRId64 " error=\"out of memory\"", r->wait.seq);

    if (!resume_now) {
        engine_flush_soon(s->e);
        if (engine_durable_seq(s->e) >= r->wait.seq) {
            lockcheck_lock(&s->mu);
            /* Still ours only if no resumer took it meanwhile. */
            if (r->phase == HTTP_PARKED) {
                http_waiter_unlink(s, r);
                r->durable = true;
                r->phase = HTTP_RESUMED;
                resume_now = true;
            }
            lockcheck_unlock(&s->mu);
        }
    }
    if (resume_now)
        MHD_resume_connection(r->con);
}

/* Appends a chunk of body, or only counts it once past the limit. 0 / -1 (OOM). */
static int http_append(http_server *s, http_req *r, const char *data, size_t n)
{
    size_t need;
    char *grown;

    if (r->too_large || r->oom)
        return 0;
    if (n > s->max_body_bytes - r->len) {
        /* Past the limit: drop what we have and keep draining the rest, so
         * the connection stays usable for the 413 and after it. */
        r->too_large = true;
        free(r->body);
        r->body = NULL;
        r->len = r->cap = 0;
        return 0;
    }
    need = r->len + n + 1;
    if (need > r->cap) {
        size_t cap = r->cap != 0 ? r->cap : 4096;

        while (cap < need)
            cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        if (cap > s->max_body_bytes + 1)
            cap = s->max_body_bytes + 1;
        grown = realloc(r->body, cap);
        if (grown == NULL)
            return -1;
        r->body = grown;
        r->cap = cap;
    }
    memcpy(r->body + r->len, data, n);
    r->len += n;
    r->body[r->len] = '\0';
    return 0;
}

/* A declared Content-Length above the limit; malformed ones MHD itself refuses. */
static bool http_declared_too_large(const char *value, size_t limit)
{
    unsigned long long n;
    char *end;

    if (value == NULL || *value < '0' || *value > '9')
        return false;
    errno = 0;
    n = strtoull(value, &end, 10);
    if (errno == ERANGE)
        return true;
    return n > limit;
}

/*
 * A request whose body cannot be delimited one way only is answered 400 at
 * once, before any of its body is read, and its connection closed: where
 * the next request would start is exactly what is in doubt (request
 * smuggling). This is the exception to answering on the last call, and the
 * close is what it wants.
 */
static enum MHD_Result http_refuse_framing(http_server *s, http_req *r,
                                           const char *method, const char *url,
                                           struct MHD_Connection *con,
                                           framing_verdict verdict)
{
    api_response resp;

    r->must_close = true;
    api_problem(s->a, &resp, PROBLEM_BAD_FRAMING, framing_detail(verdict));
    return http_queue(s, r, method, url, con, &resp);
}

static enum MHD_Result http_on_request(void *cls, struct MHD_Connection *con,
                                       const char *url, const char *method,
                                       const char *version,
                                       const char *upload_data,
                                       size_t *upload_data_size, void **con_cls)
{
    http_server *s = cls;
    http_req *r = *con_cls;
    api_request req;
    api_response resp;

    if (r == NULL) {
        /* Headers only. No response here as a rule: queueing one now makes
         * MHD 0.9.75 close the connection after it. */
        framing_verdict framing;
        http_conn *c = http_conn_of(con);

        if (c != NULL)
            http_headers_disarm(s, c);
        r = calloc(1, sizeof *r);
        if (r == NULL)
            return MHD_NO;
        r->srv = s;
        r->con = con;
        r->phase = HTTP_READING;
        waitq_item_init(&r->wait);
        r->start_ns = model_mono_ns();
        atomic_fetch_add(&s->inflight, 1);
        *con_cls = r;
        framing = http_framing(con);
        if (framing != FRAMING_OK)
            return http_refuse_framing(s, r, method, url, con, framing);
        r->too_large = http_declared_too_large(
            MHD_lookup_connection_value(con, MHD_HEADER_KIND,
                                        MHD_HTTP_HEADER_CONTENT_LENGTH),
            s->max_body_bytes);
        return MHD_YES;
    }

    if (r->phase == HTTP_RESUMED) {
        /* Back from parking; the resumer recorded durability under mu. */
        bool durable;

        lockcheck_lock(&s->mu);
        durable = r->durable;
        lockcheck_unlock(&s->mu);
        api_finish_wait(s->a, &r->resp, durable);
        return http_queue(s, r, method, url, con, &r->resp);
    }
    if (r->phase == HTTP_PARKED)
        return MHD_YES;  /* not expected: MHD does not call a suspended request */
    if (r->must_close) {
        /* Answered on the first call already; nothing it sends matters. */
        *upload_data_size = 0;
        return MHD_YES;
    }

    if (*upload_data_size != 0) {
        if (http_append(s, r, upload_data, *upload_data_size) != 0) {
            r->oom = true;
            free(r->body);
            r->body = NULL;
            r->len = r->cap = 0;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }

    memset(&resp, 0, sizeof resp);
    if (r->too_large) {
        char detail[96];

        snprintf(detail, sizeof detail, "the request body exceeds %zu bytes",
                 s->max_body_bytes);
        api_problem(s->a, &resp, PROBLEM_BODY_TOO_LARGE, detail);
    } else if (r->oom) {
        api_problem(s->a, &resp, PROBLEM_OUT_OF_MEMORY,
                    "out of memory while reading the request body");
    } else {
        req.method = method;
        req.path = url;
        req.body = r->body;
        req.body_len = r->len;
        req.header = http_header;
        req.query = http_query;
        req.ctx = con;
        api_handle(s->a, &req, &resp);
    }

    if (resp.wait_seq > 0 && engine_durable_seq(s->e) < resp.wait_seq) {
        r->resp = resp;
        http_park(s, r);
        return MHD_YES;
    }
    if (resp.wait_seq > 0)
        api_finish_wait(s->a, &resp, true);
    return http_queue(s, r, method, url, con, &resp);
}

/* MHD_OPTION_NOTIFY_COMPLETED: a request ended (answered, failed or shut down). */
static void http_on_completed(void *cls, struct MHD_Connection *con,
                              void **con_cls, enum MHD_RequestTerminationCode toe)
{
    http_server *s = cls;
    http_req *r = *con_cls;
    http_conn *c = http_conn_of(con);

    /* The next request's headers are due within the timeout from now. */
    if (c != NULL)
        http_headers_arm(s, c);
    if (r == NULL)
        return;
    /* A request still parked here would be a bug: it is never on the waiter
     * list when MHD ends it, because every park ends with a resume first. */
    api_response_free(&r->resp);
    free(r->body);
    free(r);
    *con_cls = NULL;
    atomic_fetch_sub(&s->inflight, 1);
}

/* ---- start / stop --------------------------------------------------------- */

/* "host:port", bracketing IPv6 literals. */
static void http_format_addr(char *out, size_t outlen, const char *host,
                             uint16_t port)
{
    if (strchr(host, ':') != NULL)
        snprintf(out, outlen, "[%s]:%u", host, (unsigned)port);
    else
        snprintf(out, outlen, "%s:%u", host, (unsigned)port);
}

/*
 * MHD does not say why it could not start. Binding the same address again
 * ourselves (with the same SO_REUSEADDR MHD uses) recovers the reason for
 * the common case, a port already in use; 0 when that bind works.
 */
static int http_probe_bind(const struct addrinfo *ai)
{
    int fd, on = 1, err = 0;

    fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (fd < 0)
        return errno;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (ai->ai_family == AF_INET6)
        (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0)
        err = errno;
    close(fd);
    return err;
}

/* Prefers an IPv4 result ("localhost" usually means 127.0.0.1 to users). */
static const struct addrinfo *http_pick_addr(const struct addrinfo *list)
{
    const struct addrinfo *ai;

    for (ai = list; ai != NULL; ai = ai->ai_next)
        if (ai->ai_family == AF_INET)
            return ai;
    for (ai = list; ai != NULL; ai = ai->ai_next)
        if (ai->ai_family == AF_INET6)
            return ai;
    return NULL;
}

/*
 * The end of every server, in the only safe order. Resumes come from the
 * writer (http_on_durable) and the timer, each after dropping mu; MHD 0.9.75
 * panics on a connection still suspended in MHD_stop_daemon, and a resume
 * after it would touch a freed connection. So: no new parks, no more
 * resumers (engine_on_durable waits for a callback in progress, the join
 * for the timer's), every remaining waiter resumed, and only then MHD
 * stopped. Each step is bounded by the work of one callback or timer pass,
 * plus MHD finishing the handler calls in progress.
 */
static void http_teardown(http_server *s)
{
    lockcheck_lock(&s->mu);
    http_state_advance(s, HTTP_RELEASED);
    lockcheck_unlock(&s->mu);
    if (s->durable_hooked) {
        engine_on_durable(s->e, NULL, NULL);
        s->durable_hooked = false;
    }
    http_timer_stop(s);
    /* Parks seen after this resume themselves (RELEASED), on MHD's own threads. */
    http_release_all(s);
    if (s->daemon != NULL) {
        MHD_stop_daemon(s->daemon);
        s->daemon = NULL;
    }
}

/* Frees what http_teardown left: nothing runs on s any more. */
static void http_free(http_server *s)
{
    waitq_free(&s->waiters);
    deadline_free(&s->headers);
    if (s->cv_init)
        pthread_cond_destroy(&s->timer_cv);
    if (s->mu_init)
        lockcheck_destroy(&s->mu);
    free(s);
}

/*
 * The options that hold slow and greedy clients: MHD refuses (accepts and
 * closes at once) connections past the per-address limit, and tells us of
 * every connection so that the header deadline can be kept. Writes at most
 * two items to opts; returns how many.
 */
static size_t http_guard_options(const http_config *cfg, http_server *s,
                                 struct MHD_OptionItem *opts)
{
    size_t n = 0;

    if (cfg->max_connections_per_ip > 0)
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                                            (intptr_t)cfg->max_connections_per_ip,
                                            NULL};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_CONNECTION,
                                        (intptr_t)(void *)http_on_connection, s};
    return n;
}

http_server *http_start(const http_config *cfg, api *a, engine *e, char *err,
                        size_t errlen)
{
    http_server *s = NULL;
    struct addrinfo hints, *list = NULL;
    const struct addrinfo *ai;
    const union MHD_DaemonInfo *info;
    pthread_condattr_t cattr;
    char port_text[8];
    char addr[300];
    unsigned flags;
    struct MHD_OptionItem opts[8];
    size_t n = 0;
    int rc, saved_errno;

    if (errlen > 0)
        err[0] = '\0';
    http_format_addr(addr, sizeof addr, cfg->host, cfg->port);

    s = calloc(1, sizeof *s);
    if (s == NULL) {
        snprintf(err, errlen, "out of memory starting the HTTP server");
        goto fail;
    }
    s->a = a;
    s->e = e;
    s->max_body_bytes = cfg->max_body_bytes;
    s->header_timeout_ns = http_seconds_ns(cfg->header_timeout);
    waitq_init(&s->waiters);
    deadline_init(&s->headers);
    s->access_log = cfg->access_log;
    s->log = cfg->log;
    s->log_ctx = cfg->log_ctx;
    s->timer_wake_ns = INT64_MIN;
    atomic_init(&s->inflight, 0);

    if (lockcheck_init(&s->mu) != 0) {
        snprintf(err, errlen, "cannot create a mutex");
        goto fail;
    }
    s->mu_init = true;
    /* Deadlines are monotonic so that a clock step neither fires nor
     * strands waiters. */
    if (pthread_condattr_init(&cattr) != 0) {
        snprintf(err, errlen, "cannot create a condition variable");
        goto fail;
    }
    rc = pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(&s->timer_cv, &cattr);
    pthread_condattr_destroy(&cattr);
    if (rc != 0) {
        snprintf(err, errlen, "cannot create a condition variable");
        goto fail;
    }
    s->cv_init = true;

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
    snprintf(port_text, sizeof port_text, "%u", (unsigned)cfg->port);
    rc = getaddrinfo(cfg->host, port_text, &hints, &list);
    if (rc != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", addr, gai_strerror(rc));
        goto fail;
    }
    ai = http_pick_addr(list);
    if (ai == NULL) {
        snprintf(err, errlen, "cannot listen on %s: no IPv4 or IPv6 address",
                 addr);
        goto fail;
    }

    /* The timer and the durable callback exist before the first request can
     * park, so no waiter is ever missed. */
    if (pthread_create(&s->timer, NULL, http_timer_main, s) != 0) {
        snprintf(err, errlen, "cannot start the HTTP timer thread");
        goto fail;
    }
    s->timer_started = true;
    engine_on_durable(e, http_on_durable, s);
    s->durable_hooked = true;

    /*
     * poll(), not epoll: in 0.9.75 MHD_quiesce_daemon removes the listen socket
     * from each worker's epoll set while the worker may remove it too, and the
     * loser of that race hits MHD_PANIC (seen as an abort in
     * stop_while_commits_land_does_not_crash). With poll the workers are told
     * through their ITC instead. Measured with wrk here, both serve the same
     * load (62-64k vs 50-61k req/s in alternating runs).
     */
    flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
            MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    if (cfg->threads > 1)
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_THREAD_POOL_SIZE,
                                            (intptr_t)cfg->threads, NULL};
    if (cfg->max_connections > 0)
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_LIMIT,
                                            (intptr_t)cfg->max_connections, NULL};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_TIMEOUT,
                                        (intptr_t)cfg->connection_timeout, NULL};
    n += http_guard_options(cfg, s, opts + n);
    opts[n] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};

    /*
     * MHD_OPTION_LISTENING_ADDRESS_REUSE is left out on purpose: absent, MHD
     * sets SO_REUSEADDR only (a restart can bind while old connections sit in
     * TIME_WAIT, a second live listener still gets EADDRINUSE); 0 would also
     * drop SO_REUSEADDR, and 1 would add SO_REUSEPORT and let two servers
     * share the port.
     */
    errno = 0;
    /* The logger goes first: MHD reports options given before it on its own stderr logger. */
    s->daemon = MHD_start_daemon(flags, cfg->port, NULL, NULL, http_on_request, s,
                                 MHD_OPTION_EXTERNAL_LOGGER, http_mhd_log, s,
                                 MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                                 MHD_OPTION_NOTIFY_COMPLETED, http_on_completed, s,
                                 MHD_OPTION_UNESCAPE_CALLBACK, http_unescape_none, NULL,
                                 MHD_OPTION_ARRAY, opts,
                                 MHD_OPTION_END);
    saved_errno = errno;
    if (s->daemon == NULL) {
        int why = http_probe_bind(ai);

        if (why != 0)
            snprintf(err, errlen, "cannot listen on %s: %s", addr, strerror(why));
        else if (saved_errno != 0)
            snprintf(err, errlen, "cannot start the HTTP server on %s: %s", addr,
                     strerror(saved_errno));
        else
            snprintf(err, errlen, "cannot start the HTTP server on %s", addr);
        goto fail;
    }

    info = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    if (info == NULL || info->port == 0) {
        snprintf(err, errlen, "cannot read the bound port of %s", addr);
        goto fail;
    }
    s->port = info->port;
    freeaddrinfo(list);
    lockcheck_lock(&s->mu);
    http_state_advance(s, HTTP_SERVING);
    lockcheck_unlock(&s->mu);
    return s;

fail:
    if (list != NULL)
        freeaddrinfo(list);
    if (s != NULL) {
        if (s->mu_init && s->cv_init)
            http_teardown(s);
        http_free(s);
    }
    return NULL;
}

uint16_t http_port(http_server *s)
{
    assert(http_state_of(s) == HTTP_SERVING);
    return s->port;
}

/* Sleeps one drain poll, or less when until (model_mono_ns) comes sooner. */
static void http_sleep_until(int64_t until)
{
    int64_t left = until - model_mono_ns();
    struct timespec ts;

    if (left <= 0)
        return;
    if (left > HTTP_DRAIN_POLL_NS)
        left = HTTP_DRAIN_POLL_NS;
    ts.tv_sec = 0;
    ts.tv_nsec = (long)left;
    nanosleep(&ts, NULL);
}

/*
 * Drain order: stop accepting; let requests in flight finish while the
 * engine commits (parked ones are resumed by commits or their deadlines);
 * at half the timeout, answer every parked request as it stands (not
 * durable unless it is) and stop parking new ones, which leaves the other
 * half for those answers to go out; then http_teardown, which closes idle
 * keep-alive connections. Requests in flight are counted by us, not MHD's
 * connection count, so idle keep-alive connections do not hold the stop for
 * the whole timeout.
 *
 * The budget: the drain ends HTTP_STOP_RESERVE_NS (at most a tenth of the
 * timeout) before the deadline, and the teardown's steps are each bounded by
 * one callback, one timer pass or the handler calls in progress, so the stop
 * as a whole stays within timeout.
 */
void http_stop(http_server *s, double timeout)
{
    int64_t start, budget, reserve, release_at, drain_end;
    MHD_socket listen_fd;
    bool released = false;

    if (s == NULL)
        return;
    /* Once per server: it frees s. */
    assert(http_state_of(s) == HTTP_SERVING);
    lockcheck_assert_not_held(&s->mu);
    start = model_mono_ns();
    budget = http_seconds_ns(timeout);
    reserve = budget / 10 < HTTP_STOP_RESERVE_NS ? budget / 10 : HTTP_STOP_RESERVE_NS;
    release_at = start + budget / 2;
    drain_end = start + budget - reserve;

    /*
     * No new connections, and every answer from now on carries
     * "Connection: close", so a keep-alive client cannot go on sending
     * requests through the drain: its connection ends after its answer.
     */
    lockcheck_lock(&s->mu);
    http_state_advance(s, HTTP_STOPPING);
    lockcheck_unlock(&s->mu);
    listen_fd = MHD_quiesce_daemon(s->daemon);
    engine_flush_soon(s->e);
    for (;;) {
        int64_t now = model_mono_ns();

        if (atomic_load(&s->inflight) == 0 || now >= drain_end)
            break;
        if (!released && now >= release_at) {
            lockcheck_lock(&s->mu);
            http_state_advance(s, HTTP_RELEASED);
            lockcheck_unlock(&s->mu);
            http_release_all(s);
            released = true;
            continue;
        }
        http_sleep_until(released ? drain_end : release_at);
    }
    if (atomic_load(&s->inflight) > 0)
        http_log(s, NS_LOG_WARN, "http_drain_timeout", "in_flight=%zu",
                 atomic_load(&s->inflight));

    http_teardown(s);
    /* Ours since MHD_quiesce_daemon, and only closable after the stop. */
    if (listen_fd != MHD_INVALID_SOCKET)
        close(listen_fd);
    http_free(s);
}
