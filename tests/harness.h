/*
 * harness: what the integration tests (tests/it_*.c) share. It starts the real
 * nodestate binary (NODESTATE_BIN, or another build of it such as
 * nodestate-faults) on 127.0.0.1 port 0 with its database in a
 * fresh temporary directory, keeps the process's log in memory and reads the
 * real port from the file the server writes with --port-file; it talks HTTP with
 * libcurl over keep-alive handles, reads the SQLite file directly (read-only)
 * to check what is durable, and polls /stats with bounded waits.
 *
 * Every wait here is bounded in both loop count and time, so a misbehaving
 * server makes a test fail, never hang. Functions return 0 / -1 (or NULL);
 * none of them asserts, so they may be called from any thread (Criterion's
 * asserts belong to the test's main thread).
 */
#ifndef NODESTATE_HARNESS_H
#define NODESTATE_HARNESS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct ns_server ns_server;
typedef struct ns_client ns_client;

/* One HTTP answer. Zero it before the first use; ns_*req frees the old body. */
typedef struct ns_resp {
    long status;               /* HTTP status; 0 when the request failed */
    char *body;                /* NUL-terminated, "" when empty (malloc'd) */
    size_t body_len;
    char content_type[256];    /* selected response headers, "" when absent */
    char etag[128];
    char retry_after[64];
    char allow[256];
    char error[256];           /* transport error when status == 0 */
} ns_resp;

/* ---- process ---------------------------------------------------------- */

/*
 * Makes a temporary directory and runs bin --listen 127.0.0.1:0
 * --db <dir>/nodestate.db --port-file <dir>/port plus the extra arguments (printf-style, split on
 * blanks; may be NULL or ""). The process inherits our environment with env
 * added: NAME=VALUE strings, NULL-terminated, each replacing an inherited
 * variable of the same name (env may be NULL). Returns once the server wrote
 * its port file, or NULL (with the log echoed to stderr) when it exited first
 * or did not within ~30 s. Set NS_IT_VERBOSE=1 to echo the server's log to stderr as
 * it comes.
 */
ns_server *ns_start_bin(const char *bin, const char *const *env,
                        const char *extra_args_fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* ns_start_bin of NODESTATE_BIN with no extra environment. */
ns_server *ns_start(const char *extra_args_fmt, ...)
    __attribute__((format(printf, 1, 2)));
/*
 * Starts the same binary with the same extra environment again on the same
 * directory and database after ns_stop or ns_kill, with new extra arguments.
 * The log starts over. 0 or -1.
 */
int ns_restart(ns_server *s, const char *extra_args_fmt, ...)
    __attribute__((format(printf, 2, 3)));
/*
 * Sends sig and waits (bounded, ~60 s) for the process to exit, then SIGKILLs
 * it. Returns the exit code, 128 + signal when a signal ended it, -1 on error.
 * Calling it again returns the same code.
 */
int ns_stop(ns_server *s, int sig);
/* SIGKILL and reap; returns like ns_stop. */
int ns_kill(ns_server *s);
/* Kills the process if it still runs, removes the directory, frees s. */
void ns_free(ns_server *s);

/*
 * Runs NODESTATE_BIN with args (NULL-terminated, after the program name) in
 * our environment to its end, for a process expected to exit by itself (a
 * start that must fail). Its stdout and stderr go to *output when output is
 * not NULL (malloc'd, NUL-terminated; free it). Waits at most timeout_s, then
 * SIGKILLs it. Returns the exit code, 128 + signal, or -1 on error or when it
 * had to be killed.
 */
int ns_run(const char *const *args, double timeout_s, char **output);

int ns_port(const ns_server *s);
/* The running server process, or -1 when none runs (stopped or killed). */
pid_t ns_pid(const ns_server *s);
const char *ns_dir(const ns_server *s);
const char *ns_db_path(const ns_server *s);
/*
 * A copy of the log (free it), or NULL when out of memory. It holds every
 * line the server wrote before the call: the call first waits (bounded) for
 * the pipe to drain. Main thread only, like ns_stop.
 */
char *ns_log(ns_server *s);
/* Whether the log (as ns_log has it) contains needle. Main thread only. */
bool ns_log_contains(ns_server *s, const char *needle);

/* ---- HTTP ------------------------------------------------------------- */

/* A keep-alive client of its own, for one thread at a time. */
ns_client *ns_client_new(const ns_server *s);
void ns_client_free(ns_client *c);
/*
 * One request: method, path (with query), body (NULL for none; when given it
 * is sent with Content-Type: application/json unless headers set one; a
 * header "Content-Type:" with no value sends none), extra headers as a
 * NULL-terminated list ("Name: value") or NULL. Returns 0 when an HTTP answer
 * came (any status), -1 when the request failed (out->error tells why).
 */
int ns_client_req(ns_client *c, const char *method, const char *path,
                  const char *body, const char *const *headers, ns_resp *out);
/* The same with a body of body_len bytes (may hold NULs). */
int ns_client_req_len(ns_client *c, const char *method, const char *path,
                      const char *body, size_t body_len,
                      const char *const *headers, ns_resp *out);
/* ns_client_req on the server's own client: main thread only. */
int ns_req(ns_server *s, const char *method, const char *path,
           const char *body, const char *const *headers, ns_resp *out);
/* ns_client_req_len on the server's own client: main thread only. */
int ns_req_len(ns_server *s, const char *method, const char *path,
               const char *body, size_t body_len, const char *const *headers,
               ns_resp *out);
/* POST /runs/{run}/nodes/{node}/state{query} with a JSON body, on s's client. */
int ns_post_state(ns_server *s, const char *run, const char *node,
                  const char *query, const char *json, ns_resp *out);
int ns_client_post_state(ns_client *c, const char *run, const char *node,
                         const char *json, ns_resp *out);
/* GET /runs/{run}/nodes/{node}/state on s's client. */
int ns_get_state(ns_server *s, const char *run, const char *node, ns_resp *out);
void ns_resp_free(ns_resp *r);

/* ---- JSON ------------------------------------------------------------- */

/* The body parsed as JSON (json_decref it), or NULL when it is not JSON. */
json_t *ns_resp_json(const ns_resp *r);
/* Member key as a string, or NULL when absent or not a string. */
const char *ns_jstr(const json_t *o, const char *key);
/* Member key as an integer into *out; 0, or -1 when absent or not an integer. */
int ns_jint(const json_t *o, const char *key, long long *out);
/* Whether member key is present and JSON null. */
bool ns_jnull(const json_t *o, const char *key);
/*
 * Whether r is an RFC 9457 problem as the spec wants it: the HTTP status,
 * Content-Type application/problem+json, and a body with type
 * "urn:nodestate:problem:<slug>", a non-empty title, status equal to the HTTP
 * status, a non-empty detail. 0, or -1 with the reason in why.
 */
int ns_check_problem(const ns_resp *r, long status, const char *slug,
                     char *why, size_t why_len);
/* Milliseconds since the epoch of an RFC 3339 "...Z" timestamp, or -1. */
long long ns_ts_ms(const char *ts);
/* Wall clock (CLOCK_REALTIME) and monotonic clock in ms. */
long long ns_wall_ms(void);
long long ns_mono_ms(void);

/* ---- /stats ----------------------------------------------------------- */

/* GET /stats?format=json on s's client, parsed (json_decref it), or NULL. */
json_t *ns_stats(ns_server *s);
/* One integer counter of JSON /stats, or -1 when it cannot be read. */
long long ns_stat(ns_server *s, const char *key);
/*
 * Polls JSON /stats (every ~20 ms, at most timeout_s seconds and a bounded
 * number of rounds) until pred(stats, ctx) is true. 0 when it became true,
 * -1 when it did not in time.
 */
int ns_wait_stats(ns_server *s, bool (*pred)(const json_t *stats, void *ctx),
                  void *ctx, double timeout_s);
/* Waits until counter key == value. */
int ns_wait_stat_eq(ns_server *s, const char *key, long long value,
                    double timeout_s);
/* Waits until counter key >= value. */
int ns_wait_stat_ge(ns_server *s, const char *key, long long value,
                    double timeout_s);
/* Waits until updates_queued == updates_processed and queue_depth == 0. */
int ns_wait_idle(ns_server *s, double timeout_s);
/*
 * The value of one Prometheus sample in text: series is the metric name with
 * its labels exactly as printed (`nodestate_batch_updates_bucket{le="10"}`).
 * 0, or -1 when there is no such line.
 */
int ns_prom_value(const char *text, const char *series, double *out);

/* ---- SQLite file ------------------------------------------------------ */

/*
 * Runs sql on a fresh read-only connection to the database, binding the
 * NULL-terminated string arguments to its ?s in order, and returns the
 * first column of the first row as malloc'd text. NULL when there is no row,
 * the value is NULL, or on error (*err, when given, is set true on error).
 */
char *ns_db_text(ns_server *s, bool *err, const char *sql, ...)
    __attribute__((sentinel));
/* The same as an integer; -1 when there is no row, a NULL or an error. */
long long ns_db_int(ns_server *s, const char *sql, ...)
    __attribute__((sentinel));

/* The first row of a query, every column as text (NULL for SQL NULL). */
typedef struct ns_dbrow {
    int ncols;
    char **names;
    char **values;
} ns_dbrow;
/* Like ns_db_text but the whole first row; NULL when no row or on error. */
ns_dbrow *ns_db_row(ns_server *s, const char *sql, ...)
    __attribute__((sentinel));
/* Column name's text, or NULL (SQL NULL or no such column). */
const char *ns_dbrow_get(const ns_dbrow *row, const char *name);
bool ns_dbrow_has(const ns_dbrow *row, const char *name);
void ns_dbrow_free(ns_dbrow *row);

#endif
