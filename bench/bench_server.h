/*
 * bench_server: what the benchmarks that drive the real binary over HTTP
 * (durable_bench, memory_bench) share. It starts nodestate on 127.0.0.1:0
 * with its stderr in a log file, reads the address from the binary's
 * `msg=listening addr=HOST:PORT` line, and stops it with SIGTERM (SIGKILL
 * past a bound), checking it exited 0 and logged msg=stopped. Around that:
 * the default binary path, the report's machine line, clocks, and a
 * keep-alive libcurl handle that reads counters from JSON /stats.
 *
 * Messages go to stderr prefixed with the calling program's name (prog).
 */
#ifndef NODESTATE_BENCH_SERVER_H
#define NODESTATE_BENCH_SERVER_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <curl/curl.h>

/* A response body beyond this is cut: only its first bytes are looked at. */
#define BENCH_BODY_MAX 65536

/* One service process. Zero it, then set log_path before starting. */
typedef struct bench_server {
    pid_t pid;                 /* 0 when no process runs */
    char log_path[PATH_MAX];   /* its stderr (created or truncated) */
    char addr[96];             /* HOST:PORT from its msg=listening line */
} bench_server;

/*
 * Runs argv (argv[0] the binary, NULL-terminated; the caller gives --listen
 * 127.0.0.1:0, --db and the rest) with stdin and stdout on /dev/null and
 * stderr in srv->log_path, and waits up to start_limit_ms for its address.
 * Returns 0, or -1 with the reason and the log's tail printed (the process is
 * gone then).
 */
int bench_server_start(bench_server *srv, const char *prog,
                       const char *const *argv, int start_limit_ms);
/*
 * SIGTERM, then waits for the exit (SIGKILL after stop_limit_ms). Returns 0
 * when it exited 0 and logged msg=stopped, else -1 with the log's tail
 * printed.
 */
int bench_server_stop(bench_server *srv, const char *prog, int stop_limit_ms);
/* SIGKILL and reap when a process still runs: for cleanup paths. */
void bench_server_kill(bench_server *srv);

/* Unlinks a database file and its -wal and -shm. */
void bench_remove_db(const char *db_path);
/* The nodestate binary one directory above this program's ("nodestate" when
 * /proc/self/exe cannot be read). */
void bench_default_server(char *out, size_t size);
/* Prints "machine: nproc, cpu, kernel, sqlite, libcurl" on stdout. */
void bench_print_machine(void);

uint64_t bench_now_ns(void);   /* CLOCK_MONOTONIC */
void bench_sleep_ms(long ms);

/* The start of one response body, NUL-terminated. */
typedef struct bench_body {
    char data[BENCH_BODY_MAX];
    size_t len;
} bench_body;

/*
 * A keep-alive handle writing answers into body, with headers (may be NULL)
 * on every request and a transport timeout of timeout_s; the URL and method
 * are set per request. NULL when libcurl refuses any option.
 */
CURL *bench_curl_new(bench_body *body, struct curl_slist *headers,
                     long timeout_s);
/*
 * GET base/stats?format=json (base is http://HOST:PORT) on c and returns the
 * integer after "key": in the answer, or -1. The stats object is flat and
 * its keys unique, so a string search is enough here.
 */
int64_t bench_get_stat(CURL *c, bench_body *body, const char *base,
                       const char *key);

#endif
