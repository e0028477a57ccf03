/*
 * bench_common: what the benchmark programs (engine_bench, durable_bench,
 * memory_bench, bigrun_bench) share, so each keeps only its own measurement:
 *
 *   - the command line: a table-driven parser for their --name VALUE options
 *     (--help and -h built in);
 *   - the report's machine line, clocks, temporary directories and files;
 *   - the direct-SQLite write of the design we replace: a full-row upsert on
 *     a file whose schema the service's own store laid out;
 *   - the real binary: started on 127.0.0.1:0 with its stderr in a log file,
 *     its address read from its `msg=listening addr=HOST:PORT` line, stopped
 *     with SIGTERM (SIGKILL past a bound) and checked to have exited 0 and
 *     logged msg=stopped; a keep-alive libcurl handle reads /stats.
 *
 * Messages go to stderr prefixed with the calling program's name (prog).
 */
#ifndef NODESTATE_BENCH_COMMON_H
#define NODESTATE_BENCH_COMMON_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <curl/curl.h>
#include <sqlite3.h>

/* ---- the command line --------------------------------------------------- */

/* Most extra arguments --server-arg may pass to the service. */
#define BENCH_MAX_SERVER_ARGS 32

/* --sync MODE: which synchronous modes to measure. */
enum { BENCH_SYNC_NORMAL = 1, BENCH_SYNC_FULL = 2 };

/* The extra service arguments (--server-arg, repeatable). */
typedef struct bench_arg_list {
    const char *args[BENCH_MAX_SERVER_ARGS];
    size_t n;
} bench_arg_list;

/* What an option's value is and where it goes (dst's type). */
typedef enum bench_opt_kind {
    BENCH_OPT_FLAG,      /* bool; takes no value */
    BENCH_OPT_STRING,    /* const char *, pointing into argv */
    BENCH_OPT_PATH,      /* char[PATH_MAX], copied */
    BENCH_OPT_ARG_LIST,  /* bench_arg_list, appended to */
    BENCH_OPT_SYNC,      /* int: normal, full or both as BENCH_SYNC_* bits */
    BENCH_OPT_UNSIGNED,  /* unsigned in [min, max] */
    BENCH_OPT_SIZE,      /* size_t in [min, max] */
    BENCH_OPT_U64,       /* uint64_t in [min, max] */
    BENCH_OPT_NUMBER     /* double in [lo, hi] */
} bench_opt_kind;

/* max of an integer option bounded only by what the program can hold: for
 * BENCH_OPT_SIZE SIZE_MAX / 8, so a count times an element size fits. */
#define BENCH_NO_MAX UINT64_MAX

/* One option of a program's table. */
typedef struct bench_opt {
    const char *name;    /* "--updates" */
    bench_opt_kind kind;
    void *dst;
    uint64_t min, max;   /* the integer kinds; max may be BENCH_NO_MAX */
    double lo, hi;       /* BENCH_OPT_NUMBER */
} bench_opt;

/*
 * Parses argv against opts over the defaults already in the destinations.
 * Returns 0 to run, 1 after --help or -h (usage printed on stdout), or -1
 * with the reason on stderr (and the usage after an unknown option).
 */
int bench_parse_args(const char *prog, const bench_opt *opts, size_t n_opts,
                     void (*usage)(FILE *out), int argc, char **argv);

/* TMPDIR, or /tmp: where the temporary directory goes unless --dir. */
const char *bench_default_dir(void);
/* Creates the directory PARENT/PROG.XXXXXX into out. 0, or -1 with the
 * reason printed. */
int bench_make_dir(const char *prog, const char *parent, char *out,
                   size_t size);

/* Unlinks a database file and its -wal and -shm. */
void bench_remove_db(const char *db_path);

/* ---- the machine and the clock ------------------------------------------ */

/* Prints "machine: nproc, cpu, kernel, sqlite[, libcurl]" on stdout. */
void bench_print_machine(bool with_libcurl);

uint64_t bench_now_ns(void);   /* CLOCK_MONOTONIC */
void bench_sleep_ms(long ms);

/* ---- direct SQLite: one commit per update ------------------------------- */

/*
 * Lays out the service's schema in path with the service's own store (WAL,
 * the sync mode), so a direct writer and the service write the same table,
 * index and file layout. 0, or -1 with the reason printed.
 */
int bench_direct_init(const char *prog, const char *path, bool sync_full);
/*
 * Opens a connection to path (set up by bench_direct_init) as the old design
 * did: the given synchronous mode, busy_timeout 5000, default cache and
 * checkpointing, and prepares the full-row upsert on it. Returns 0, or -1
 * with *db left for the caller's message (sqlite3_errmsg) and cleanup.
 */
int bench_direct_open(const char *path, bool sync_full, sqlite3 **db,
                      sqlite3_stmt **upsert);
/*
 * Binds one full row to the upsert: attempt 1, the status, the scheduled,
 * started and completed times in ts (NS_TS_NULL for none), updated_at now,
 * the seq. Returns SQLITE_OK or the first failing bind's code.
 */
int bench_direct_bind(sqlite3_stmt *upsert, const char *run, const char *node,
                      const char *status, const int64_t ts[3], int64_t now,
                      int64_t seq);

/* ---- the service -------------------------------------------------------- */

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

/* The nodestate binary one directory above this program's ("nodestate" when
 * /proc/self/exe cannot be read). */
void bench_default_server(char *out, size_t size);
/* 0 when server is executable, else -1 with "(use --server)" printed. */
int bench_check_server(const char *prog, const char *server);
/*
 * Fills argv (room for BENCH_MAX_SERVER_ARGS + 10 entries) with
 * `server --listen 127.0.0.1:0 --db db_path`, the n_extra entries of extra,
 * then args, NULL-terminated. Returns the number of arguments.
 */
size_t bench_server_argv(const char **argv, const char *server,
                         const char *db_path, const char *const *extra,
                         size_t n_extra, const bench_arg_list *args);
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
/* The headers of a JSON POST (Content-Type, no Expect: 100-continue), or
 * NULL when out of memory. Free with curl_slist_free_all. */
struct curl_slist *bench_json_headers(void);
/*
 * GET base/stats?format=json (base is http://HOST:PORT) on c and returns the
 * integer after "key": in the answer, or -1. The stats object is flat and
 * its keys unique, so a string search is enough here.
 */
int64_t bench_get_stat(CURL *c, bench_body *body, const char *base,
                       const char *key);
/*
 * Polls /stats every 100 ms until durable_seq reaches last_seq (everything
 * accepted is committed). 0, or -1 after limit_ms.
 */
int bench_wait_drained(CURL *c, bench_body *body, const char *base,
                       int limit_ms);

#endif
