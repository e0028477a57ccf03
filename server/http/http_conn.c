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

/* ---- connections and their header deadlines ---------------------------------- */

/*
 * Connections still owing their request's headers at now are shut down (mu
 * held). A registered connection's fd is still MHD's own (it is closed only
 * after MHD_CONNECTION_NOTIFY_CLOSED, which unregisters under mu), so the
 * shutdown cannot hit a reused descriptor. MHD then sees the end of the
 * stream on its next poll and closes the connection itself, notifying us as
 * for any close: trickled bytes do not help a client, whereas MHD's own
 * timeout counts only idle time.
 */
size_t http_expire_headers(http_server *s, int64_t now)
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

/* The connection's http_conn, or NULL (out of memory at its start). */
http_conn *http_conn_of(struct MHD_Connection *con)
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
void http_headers_arm(http_server *s, http_conn *c)
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
void http_headers_disarm(http_server *s, http_conn *c)
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
void http_on_connection(void *cls, struct MHD_Connection *con,
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
