/*
 * http: the HTTP transport on libmicrohttpd, and the only module whose files
 * (server/http/http*.c, sharing http_internal.h) include microhttpd.h. It
 * accepts connections on its own listening socket in an acceptor thread and
 * hands them to MHD's thread pool in turn, collects each request's body
 * (answering 413 past max_body_bytes before buffering more), hands whole
 * requests to the api, and parks ?wait=true requests with MHD's
 * suspend/resume until the engine reports their seq durable (or they time out),
 * so a waiting request holds no worker thread.
 *
 * Life cycle (http_state in http_internal.h; it only moves forward):
 *
 *   STARTING ──http_start: socket bound, daemon and acceptor started──▶ SERVING
 *   SERVING ──http_stop: acceptor stopped, socket closed──▶ STOPPING
 *            no new connections, every answer closes its connection,
 *            requests in flight are answered, parked ones wait for commits
 *   STOPPING ──http_stop at half its timeout, or its teardown──▶ RELEASED
 *            parked requests answered as they stand, nothing parks any more
 *   RELEASED ──http_stop's teardown──▶ STOPPED
 *            timer thread joined, daemon stopped; http_stop then frees
 *
 * A failed http_start goes from STARTING through RELEASED to STOPPED and
 * frees. http_port needs SERVING; http_stop is called once per server (it
 * frees it). Debug builds assert both.
 */
#ifndef NODESTATE_HTTP_H
#define NODESTATE_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api.h"
#include "engine.h"

typedef struct http_server http_server;

typedef struct http_config {
    const char *host;             /* numeric IPv4/IPv6 address or "localhost" */
    uint16_t port;                /* 0: any free port (see http_port) */
    unsigned threads;             /* worker threads, >= 1 */
    size_t max_body_bytes;
    unsigned max_connections;
    unsigned connection_timeout;  /* idle seconds */
    unsigned max_connections_per_ip; /* 0: no bound */
    double header_timeout;        /* seconds to receive a request's headers; 0: none */
    /* One info line per answered request, "msg=access method=… path=…
     * status=… bytes=… duration_ms=… remote=…", written when the answer is
     * queued (413s and parked ?wait=true requests included). */
    bool access_log;
    /* PEM text (not file names) of the certificate chain and its private
     * key: both set, the server speaks HTTPS only; both NULL, plain HTTP. */
    const char *tls_cert;
    const char *tls_key;
    /* GET /runs/{run_id}/events streams and long polls (watch.h). */
    size_t max_watchers;          /* open at once; beyond, 503 */
    size_t watch_buffer_bytes;    /* unsent bytes past which a stream is dropped */
    double watch_heartbeat;       /* seconds between comment lines; 0: none */
    ns_log_fn *log;
    void *log_ctx;
} http_config;

/*
 * Whether GnuTLS takes the PEM certificate chain and key (http_config's
 * tls_cert and tls_key) as http_start will, without binding anything, so
 * a pair it refuses (a key of another certificate) fails a start before
 * the database is opened. 0, or -1 with the reason in err.
 */
int http_tls_check(const char *cert, const char *key, char *err, size_t errlen);
/* Binds and starts serving; NULL with a message in err on failure (e.g. port in use). */
http_server *http_start(const http_config *cfg, api *a, engine *e, char *err,
                        size_t errlen);
/* The bound port (useful after asking for port 0). */
uint16_t http_port(http_server *s);
/*
 * Stops accepting connections, gives requests in flight up to timeout
 * seconds to be answered, then stops and frees. Parked ?wait=true requests
 * are answered as they stand (not durable unless they are) at timeout / 2
 * at the latest. Returns within timeout (plus the handler calls MHD is in
 * the middle of), so a caller can give the engine what is left of its own.
 */
void http_stop(http_server *s, double timeout);

#endif
