/*
 * server: starts and stops the real nodestate binary (NODESTATE_BIN, or
 * another build of it such as nodestate-faults) for the integration tests.
 * A server listens on 127.0.0.1 port 0 with its database in a fresh
 * temporary directory; the real port is read from the file the server writes
 * with --port-file, and the process's log is kept in memory by a reader
 * thread. ns_run runs the binary to its end for a start that must fail.
 *
 * Every wait is bounded in loop count and time, so a misbehaving server makes
 * a test fail, never hang. Functions return 0 / -1 (or NULL) and never
 * assert.
 */
#ifndef NODESTATE_SERVER_H
#define NODESTATE_SERVER_H

#include <stdbool.h>
#include <sys/types.h>

typedef struct ns_server ns_server;
typedef struct ns_client ns_client;

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
/*
 * ns_run with env added to the environment as ns_start_bin adds it (may be
 * NULL), stdout to *out and stderr to *err (each malloc'd when not NULL). With
 * err NULL, stderr goes to *out with stdout.
 */
int ns_run_env(const char *const *args, const char *const *env,
               double timeout_s, char **out, char **err);

int ns_port(const ns_server *s);
/* The running server process, or -1 when none runs (stopped or killed). */
pid_t ns_pid(const ns_server *s);
/*
 * A memory figure of the running server from /proc/<pid>/status, in KiB
 * ("VmRSS": resident now, "VmHWM": the most resident so far), -1 when it
 * cannot be read. Under a sanitizer most of it is the sanitizer's (shadow
 * memory, ASan's quarantine): NS_MEMORY_TELLS_OURS says whether a test
 * may judge the server's own memory by it.
 */
long ns_status_kib(const ns_server *s, const char *field);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define NS_MEMORY_TELLS_OURS false
#else
#define NS_MEMORY_TELLS_OURS true
#endif
const char *ns_dir(const ns_server *s);
const char *ns_db_path(const ns_server *s);
/* The server's own keep-alive HTTP client: main thread only. */
ns_client *ns_main_client(ns_server *s);
/*
 * A copy of the log (free it), or NULL when out of memory. It holds every
 * line the server wrote before the call: the call first waits (bounded) for
 * the pipe to drain. Main thread only, like ns_stop.
 */
char *ns_log(ns_server *s);
/* Whether the log (as ns_log has it) contains needle. Main thread only. */
bool ns_log_contains(ns_server *s, const char *needle);

#endif
