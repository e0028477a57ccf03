/*
 * http_internal: what the files of the HTTP transport (server/http/http*.c)
 * share and nothing else sees: the server, request and connection structs,
 * the life-cycle states, and the few functions one file calls in another.
 * http.c is the MHD adapter's life cycle (start, stop, logging);
 * http_request.c the access handler (bodies, answers, parking a request);
 * http_wait.c the parked requests and the timer thread; http_conn.c the
 * connection registry and its header deadlines; http_library.c the answers
 * libmicrohttpd gives itself. Only these files include microhttpd.h.
 */
#ifndef NODESTATE_HTTP_INTERNAL_H
#define NODESTATE_HTTP_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <microhttpd.h>

#include "http.h"
#include "deadline.h"
#include "framing.h"
#include "lockcheck.h"
#include "waitq.h"
#include "watch.h"

/*
 * Longest park (and stop timeout) we honour; the api caps ?timeout= far below
 * this already. It also keeps deadlines in ns far from int64 overflow.
 */
#define HTTP_MAX_PARK_SECONDS 86400.0
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
    HTTP_STOPPING,  /* http_stop: no more accepts, every answer closes its connection */
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
    size_t max_body;            /* that limit: api_body_limit of the method and path */
    size_t declared;            /* the Content-Length (0: none), SIZE_MAX past a size_t */
    bool must_close;            /* the answer ends the connection (bad framing) */
    bool oom;                   /* buffering the body ran out of memory */
    bool discard;               /* the api refuses it 401: its body is read and dropped */
    http_phase phase;
    api_response resp;          /* the api's first answer while parked */
    waitq_item wait;            /* in http_server.waiters (mu); wait.seq is set
                                   before parking, then read-only; deadlines on
                                   the model_mono_ns() clock */
    bool durable;               /* set by the resumer */
    int64_t start_ns;           /* model_mono_ns() at the first call, for the access log */
    struct http_req *ready;     /* the taker's ready list once taken */
    watcher *poll;              /* a parked long poll's watcher (http_stream.c) */
    int64_t poll_deadline_ns;   /* when the long poll answers empty; 0 before its first park */
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
     * Our own listening socket and the thread accepting on it, handing each
     * connection to MHD (MHD_add_connection), which places it on its worker
     * threads in turn: MHD's workers racing to accept on a shared socket
     * left one with most connections (CPU split 50/15 seen here).
     */
    int listen_fd;              /* -1 once closed */
    pthread_t acceptor;
    _Atomic bool accept_stop;   /* the acceptor ends; set before shutdown(listen_fd) */
    bool acceptor_started;      /* joined (and false again) by http_acceptor_stop */
    /*
     * What the teardown must undo, whatever the state: these say which
     * resources exist (a failed http_start has only some of them).
     */
    bool timer_started;         /* joined (and false again) by http_timer_stop */
    bool durable_hooked;        /* http_on_durable is registered with the engine */
    bool mu_init;
    bool cv_init;
    /*
     * MHD's first message, kept to say why MHD_start_daemon failed (a
     * certificate it refused, say): written once by whoever claims it,
     * read only after a failed start, when no MHD thread is left.
     */
    _Atomic bool start_msg_taken;
    char start_msg[200];
    /* Streams and long polls (watch.h); created before the daemon, freed after it. */
    watch_hub *hub;
    bool change_hooked;         /* watch_on_change is registered with the engine */
};

/* ---- http.c: the life cycle and logging ---- */

http_state http_state_of(const http_server *s);
/* Moves the state forward to `to`; a later state already reached stays. mu held. */
void http_state_advance(http_server *s, http_state to);
void http_log(http_server *s, int level, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* seconds as ns; NaN and negatives become 0, absurd values the park cap. */
int64_t http_seconds_ns(double seconds);

/* ---- http_wait.c: parked requests and the timer thread ---- */

/* A new deadline at ns: the timer must look again when it sleeps towards a later one. */
void http_timer_nudge(http_server *s, int64_t ns);
/* Takes every parked request off the waiters, durable or not by the engine's word. */
void http_release_all(http_server *s);
/* engine_on_durable callback: resumes the requests now durable. */
void http_on_durable(void *ctx, int64_t durable_seq);
/* The timer thread (pthread_create start routine). */
void *http_timer_main(void *arg);
/* Stops the timer thread and waits for it (advances to HTTP_STOPPED). */
void http_timer_stop(http_server *s);
/* Parks r until its seq is durable or its deadline passes. */
void http_park(http_server *s, http_req *r);

/* ---- http_conn.c: the connection registry and header deadlines ---- */

/* Shuts connections owing headers at now; how many (mu held). */
size_t http_expire_headers(http_server *s, int64_t now);
/* The connection's http_conn, or NULL (out of memory at its start). */
http_conn *http_conn_of(struct MHD_Connection *con);
/* c owes a request's headers from now. */
void http_headers_arm(http_server *s, http_conn *c);
/* The headers came: no deadline until the request ends. */
void http_headers_disarm(http_server *s, http_conn *c);
/* MHD_OPTION_NOTIFY_CONNECTION. */
void http_on_connection(void *cls, struct MHD_Connection *con,
                        void **socket_context,
                        enum MHD_ConnectionNotificationCode toe);

/* ---- http_library.c: MHD's own answers ---- */

/* MHD_OPTION_EXTERNAL_LOGGER: every MHD log line. */
void http_mhd_log(void *cls, const char *fm, va_list ap);

/* ---- http_request.c: the access handler ---- */

/* The verdict on the request's Content-Length / Transfer-Encoding fields. */
framing_verdict http_framing(struct MHD_Connection *con);
/* The client's address as text, or "-" when MHD cannot tell. */
void http_remote(struct MHD_Connection *con, char *buf, size_t size);
/* MHD_OPTION_UNESCAPE_CALLBACK. */
size_t http_unescape_none(void *cls, struct MHD_Connection *con, char *s);
/* The access handler. */
enum MHD_Result http_on_request(void *cls, struct MHD_Connection *con,
                                const char *url, const char *method,
                                const char *version,
                                const char *upload_data,
                                size_t *upload_data_size, void **con_cls);
/*
 * Calls the api for the request (or answers the body's 413 / out of
 * memory); no_wait answers a long poll as it stands.
 */
void http_api_call(http_server *s, http_req *r, const char *method, const char *url,
                   struct MHD_Connection *con, bool no_wait, api_response *resp);
/* Queues resp on the connection and frees it; MHD_NO when MHD cannot take it. */
enum MHD_Result http_queue(http_server *s, const http_req *r, const char *method,
                           const char *url, struct MHD_Connection *con,
                           api_response *resp);
/* MHD_OPTION_NOTIFY_COMPLETED. */
void http_on_completed(void *cls, struct MHD_Connection *con,
                       void **con_cls, enum MHD_RequestTerminationCode toe);

/* ---- http_stream.c: event streams and long polls ---- */

/* watch_config.resume and .encode. */
void http_stream_resume(void *owner);
char *http_stream_encode(void *ctx, const ns_row *row, bool durable, size_t *len);
/* watch_config.fetch: the node's current row from the engine (ctx). */
int http_stream_fetch(void *ctx, const char *run_id, const char *node_id, ns_row **row);
/* Answers resp (api_response.events) with the run's event stream, or a problem. */
enum MHD_Result http_stream_start(http_server *s, http_req *r, const char *method,
                                  const char *url, struct MHD_Connection *con,
                                  api_response *resp);
/* Parks a long poll; false with resp the answer to give now. */
bool http_poll_park(http_server *s, http_req *r, const char *method, const char *url,
                    struct MHD_Connection *con, api_response *resp);
/* A parked long poll resumed: parks it again (true) or leaves the answer in resp. */
bool http_poll_resumed(http_server *s, http_req *r, const char *method, const char *url,
                       struct MHD_Connection *con, api_response *resp);

#endif
