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
#include "http_internal.h"

/* How often http_stop looks at the number of requests in flight. */
#define HTTP_DRAIN_POLL_NS 10000000LL
/*
 * The tail of http_stop's budget kept for the teardown after the drain
 * (unhooking the durable callback, joining the timer, MHD_stop_daemon), so
 * that the whole stop fits in its timeout. At most a tenth of the budget.
 */
#define HTTP_STOP_RESERVE_NS 50000000LL

/* ---- the life cycle ------------------------------------------------------- */

http_state http_state_of(const http_server *s)
{
    return (http_state)atomic_load(&s->state);
}

/* Moves the state forward to `to`; a later state already reached stays. mu held. */
void http_state_advance(http_server *s, http_state to)
{
    lockcheck_assert_held(&s->mu);
    if (http_state_of(s) < to)
        atomic_store(&s->state, (int)to);
}

/* ---- logging ------------------------------------------------------------ */

void http_log(http_server *s, int level, const char *msg,
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


/* ---- time ---------------------------------------------------------------- */

/* seconds as ns; NaN and negatives become 0, absurd values the park cap. */
int64_t http_seconds_ns(double seconds)
{
    if (!(seconds > 0))
        return 0;
    if (seconds > HTTP_MAX_PARK_SECONDS)
        seconds = HTTP_MAX_PARK_SECONDS;
    return (int64_t)(seconds * 1e9);
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

/* ---- accepting connections ---------------------------------------------- */

/* How long the acceptor backs off after an accept error such as EMFILE. */
#define HTTP_ACCEPT_BACKOFF_NS 10000000L

/*
 * Creates the listening socket as MHD would. SO_REUSEADDR only: a restart
 * can bind while old connections sit in TIME_WAIT, a second live listener
 * still gets EADDRINUSE (SO_REUSEPORT would let two servers share the
 * port). IPv6 only on an IPv6 address. Returns the fd, or -1 with errno set.
 */
static int http_listen_open(const struct addrinfo *ai)
{
    int fd, on = 1, saved;

    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0)
        return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0
        || (ai->ai_family == AF_INET6
            && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on) != 0)
        || bind(fd, ai->ai_addr, ai->ai_addrlen) != 0
        || listen(fd, SOMAXCONN) != 0) {
        saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

/* The port the listening socket is bound to, or 0. */
static uint16_t http_listen_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;

    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return 0;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return 0;
}

/*
 * The acceptor thread: accepts and hands every connection to MHD, which
 * closes it itself when it cannot take it (the connection or per-address
 * limit). Ends when accept_stop is set and the socket shut down.
 */
static void *http_acceptor_main(void *arg)
{
    http_server *s = arg;
    bool warned = false;    /* one log line per streak of failures, not one per retry */

    for (;;) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept(s->listen_fd, (struct sockaddr *)&ss, &len);

        if (atomic_load(&s->accept_stop)) {
            if (fd >= 0)
                close(fd);
            break;
        }
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN)
                continue;
            /* Out of descriptors or memory: let MHD close some first. */
            if (!warned)
                http_log(s, NS_LOG_WARN, "accept_failed", "error=\"%s\"", strerror(errno));
            warned = true;
            nanosleep(&(struct timespec){0, HTTP_ACCEPT_BACKOFF_NS}, NULL);
            continue;
        }
        warned = false;
        (void)MHD_add_connection(s->daemon, fd, (const struct sockaddr *)&ss, len);
    }
    return NULL;
}

/* Stops accepting: no new connections from here on. Idempotent. */
static void http_acceptor_stop(http_server *s)
{
    if (s->acceptor_started) {
        atomic_store(&s->accept_stop, true);
        /* Wakes the accept() in progress (it fails with EINVAL). */
        (void)shutdown(s->listen_fd, SHUT_RDWR);
        pthread_join(s->acceptor, NULL);
        s->acceptor_started = false;
    }
    if (s->listen_fd >= 0) {
        close(s->listen_fd);
        s->listen_fd = -1;
    }
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
    http_acceptor_stop(s);
    lockcheck_lock(&s->mu);
    http_state_advance(s, HTTP_RELEASED);
    lockcheck_unlock(&s->mu);
    if (s->durable_hooked) {
        engine_on_durable(s->e, NULL, NULL);
        s->durable_hooked = false;
    }
    if (s->change_hooked) {
        engine_on_change(s->e, NULL, NULL);
        s->change_hooked = false;
    }
    http_timer_stop(s);
    /* Parks seen after this resume themselves (RELEASED), on MHD's own threads. */
    http_release_all(s);
    /* Every stream and long poll resumed and ended; none parks from now on. */
    if (s->hub != NULL)
        watch_release(s->hub);
    if (s->daemon != NULL) {
        MHD_stop_daemon(s->daemon);
        s->daemon = NULL;
    }
}

/* Frees what http_teardown left: nothing runs on s any more. */
static void http_free(http_server *s)
{
    /* The daemon is stopped: every stream's response is freed, so every watcher closed. */
    watch_hub_free(s->hub);
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

/* http_tls_check's logger: keeps the first line libmicrohttpd says. */
static void http_tls_check_log(void *cls, const char *fm, va_list ap)
{
    char *msg = cls;
    if (msg[0] == '\0')
        vsnprintf(msg, 200, fm, ap);
}

/* http_tls_check's daemon never has a connection to answer. */
static enum MHD_Result http_tls_check_request(void *cls, struct MHD_Connection *con,
                                              const char *url, const char *method,
                                              const char *version, const char *data,
                                              size_t *size, void **req)
{
    (void)cls, (void)con, (void)url, (void)method, (void)version, (void)data, (void)size;
    (void)req;
    return MHD_NO;
}

/* Both PEM texts given, and a libmicrohttpd with TLS. 0, or -1 with err set. */
static int http_tls_usable(const char *cert, const char *key, char *err, size_t errlen)
{
    if (cert == NULL || key == NULL) {
        snprintf(err, errlen, "HTTPS needs both a certificate and its key");
        return -1;
    }
    if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
        snprintf(err, errlen, "this libmicrohttpd was built without TLS");
        return -1;
    }
    return 0;
}

int http_tls_check(const char *cert, const char *key, char *err, size_t errlen)
{
    char msg[200] = "";
    if (http_tls_usable(cert, key, err, errlen) != 0)
        return -1;
    /* No socket, no thread: MHD_start_daemon parses both, which is the check. */
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_NO_LISTEN_SOCKET | MHD_USE_TLS | MHD_USE_ERROR_LOG, 0, NULL, NULL,
        http_tls_check_request, NULL, MHD_OPTION_EXTERNAL_LOGGER, http_tls_check_log, msg,
        MHD_OPTION_HTTPS_MEM_CERT, cert, MHD_OPTION_HTTPS_MEM_KEY, key, MHD_OPTION_END);
    if (d == NULL) {
        size_t m = strcspn(msg, "\r\n");
        snprintf(err, errlen, "the TLS certificate and key are refused: %.*s", (int)m,
                 m ? msg : "(no reason given)");
        return -1;
    }
    MHD_stop_daemon(d);
    return 0;
}

http_server *http_start(const http_config *cfg, api *a, engine *e, char *err,
                        size_t errlen)
{
    http_server *s = NULL;
    struct addrinfo hints, *list = NULL;
    const struct addrinfo *ai;
    char port_text[8];
    char addr[300];
    unsigned flags;
    struct MHD_OptionItem opts[10];
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
    s->listen_fd = -1;
    atomic_init(&s->accept_stop, false);
    atomic_init(&s->inflight, 0);
    atomic_init(&s->start_msg_taken, false);

    if (lockcheck_init(&s->mu) != 0) {
        snprintf(err, errlen, "cannot create a mutex");
        goto fail;
    }
    s->mu_init = true;
    if (lockcheck_cond_init(&s->timer_cv) != 0) {
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

    /* Before the durable callback, which tells the hub of commits. */
    {
        watch_config wc = {
            .max_watchers = cfg->max_watchers,
            .buffer_bytes = cfg->watch_buffer_bytes,
            .heartbeat = cfg->watch_heartbeat,
            .durable_seq = engine_durable_seq(e),
            .resume = http_stream_resume,
            .encode = http_stream_encode,
            .fetch = http_stream_fetch,
            .encode_ctx = e,
            .stats = engine_stats(e),
        };

        s->hub = watch_hub_new(&wc);
        if (s->hub == NULL) {
            snprintf(err, errlen, "cannot start the watchers' thread");
            goto fail;
        }
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
    engine_on_change(e, watch_on_change, s->hub);
    s->change_hooked = true;

    s->listen_fd = http_listen_open(ai);
    if (s->listen_fd < 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", addr, strerror(errno));
        goto fail;
    }

    /*
     * poll(), not epoll (measured alike with wrk here: 62-64k vs 50-61k
     * req/s in alternating runs). MHD has no listening socket of its own:
     * http_acceptor_main hands it every connection, and MHD_add_connection
     * places them on the workers in turn, where the workers racing to accept
     * left one with most of them. It also means no MHD_quiesce_daemon at
     * stop (with epoll, 0.9.75's quiesce could MHD_PANIC).
     */
    flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_NO_LISTEN_SOCKET |
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
    if (cfg->tls_cert != NULL || cfg->tls_key != NULL) {
        if (http_tls_usable(cfg->tls_cert, cfg->tls_key, err, errlen) != 0)
            goto fail;
        /* MHD parses both in MHD_start_daemon; GnuTLS keeps its own copy. */
        flags |= MHD_USE_TLS;
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0,
                                            (void *)(uintptr_t)cfg->tls_cert};
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0,
                                            (void *)(uintptr_t)cfg->tls_key};
    }
    opts[n] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};

    errno = 0;
    /* The logger goes first: MHD reports options given before it on its own stderr logger. */
    s->daemon = MHD_start_daemon(flags, 0, NULL, NULL, http_on_request, s,
                                 MHD_OPTION_EXTERNAL_LOGGER, http_mhd_log, s,
                                 MHD_OPTION_NOTIFY_COMPLETED, http_on_completed, s,
                                 MHD_OPTION_UNESCAPE_CALLBACK, http_unescape_none, NULL,
                                 MHD_OPTION_ARRAY, opts,
                                 MHD_OPTION_END);
    saved_errno = errno;
    if (s->daemon == NULL) {
        size_t m = strcspn(s->start_msg, "\r\n");

        if (m > 0)
            snprintf(err, errlen, "cannot start the HTTP%s server on %s: %.*s",
                     cfg->tls_cert != NULL ? "S" : "", addr, (int)m, s->start_msg);
        else if (saved_errno != 0)
            snprintf(err, errlen, "cannot start the HTTP server on %s: %s", addr,
                     strerror(saved_errno));
        else
            snprintf(err, errlen, "cannot start the HTTP server on %s", addr);
        goto fail;
    }

    s->port = http_listen_port(s->listen_fd);
    if (s->port == 0) {
        snprintf(err, errlen, "cannot read the bound port of %s", addr);
        goto fail;
    }
    if (pthread_create(&s->acceptor, NULL, http_acceptor_main, s) != 0) {
        snprintf(err, errlen, "cannot start the HTTP acceptor thread");
        goto fail;
    }
    s->acceptor_started = true;
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
    http_acceptor_stop(s);
    engine_flush_soon(s->e);
    /* Streams end once they have sent the final flush's changes; long polls answer now. */
    watch_stop(s->hub);
    for (;;) {
        int64_t now = model_mono_ns();

        if (atomic_load(&s->inflight) == 0 || now >= drain_end)
            break;
        if (!released && now >= release_at) {
            lockcheck_lock(&s->mu);
            http_state_advance(s, HTTP_RELEASED);
            lockcheck_unlock(&s->mu);
            http_release_all(s);
            watch_release(s->hub);
            released = true;
            continue;
        }
        http_sleep_until(released ? drain_end : release_at);
    }
    if (atomic_load(&s->inflight) > 0)
        http_log(s, NS_LOG_WARN, "http_drain_timeout", "in_flight=%zu",
                 atomic_load(&s->inflight));

    http_teardown(s);
    http_free(s);
}
