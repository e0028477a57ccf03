#include "http_internal.h"

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
void http_timer_nudge(http_server *s, int64_t ns)
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
void http_release_all(http_server *s)
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
void http_on_durable(void *ctx, int64_t durable_seq)
{
    http_server *s = ctx;
    http_req *ready = NULL;
    waitq_item *w;

    watch_on_durable(s->hub, durable_seq);
    lockcheck_assert_not_held(&s->mu);
    lockcheck_lock(&s->mu);
    while ((w = waitq_lowest(&s->waiters)) != NULL && w->seq <= durable_seq)
        http_waiter_take(s, HTTP_OWNER(w, http_req, wait), true, &ready);
    lockcheck_unlock(&s->mu);
    http_resume_all(ready);
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
void *http_timer_main(void *arg)
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
void http_timer_stop(http_server *s)
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


/*
 * Parks r (whose api answer waits for resp.wait_seq) until the writer reports
 * it durable or its deadline passes. The connection is suspended before r
 * goes on the waiters so that any resume finds it suspended; durable_seq is
 * checked again after linking so that a commit landing in between is not
 * missed. While http_stop is closing, nothing parks: r is resumed at once,
 * and so it is when the deadline heap cannot grow (answered not durable
 * unless it already is, rather than failing the request).
 */
void http_park(http_server *s, http_req *r)
{
    bool resume_now = false;
    bool no_memory = false;
    bool released;
    int64_t deadline_ns;

    /* What the answer needs of the body the api kept (api_wait): no second copy waits with it. */
    free(r->body);
    r->body = NULL;
    r->len = r->cap = 0;
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
