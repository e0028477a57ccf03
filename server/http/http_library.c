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

/*
 * MHD's own diagnostics (bind failures, out of memory, protocol trouble)
 * become one logfmt line each, the text quoted so the line stays parseable.
 */
void http_mhd_log(void *cls, const char *fm, va_list ap)
{
    http_server *s = cls;
    char text[400];
    char quoted[2 * sizeof text + 3];
    size_t n;

    vsnprintf(text, sizeof text, fm, ap);
    if (!atomic_exchange(&s->start_msg_taken, true))
        snprintf(s->start_msg, sizeof s->start_msg, "%.*s",
                 (int)sizeof s->start_msg - 1, text);
    http_on_library_message(s, text);
    if (s->log == NULL)
        return;
    n = strlen(text); /* MHD ends its messages with a newline: not part of the text */
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r'))
        text[--n] = '\0';
    http_log(s, NS_LOG_WARN, "http_library", "detail=%s",
             logfmt_quote(quoted, sizeof quoted, text));
}
