/*
 * server: the nodestate process of an integration test: its temporary
 * directory, its start (and the wait for its port file), the thread that
 * keeps its log, its stop by signal and the reaping of its exit code; and
 * ns_run for a run of the binary that must end by itself.
 */
#include "server.h"

#include "pg_check.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bounded_wait.h"
#include "http_client.h"
#include "tmp_files.h"

#ifndef NODESTATE_BIN
#error "NODESTATE_BIN must name the nodestate binary (tests/CMakeLists.txt sets it)"
#endif

extern char **environ;

/* How long the server may take to write its port file: a bound, not an
 * expectation (the suite runs on busy machines). */
#define NS_START_TIMEOUT_MS 30000
/* How long ns_stop waits for a clean exit before SIGKILL. */
#define NS_STOP_TIMEOUT_MS 60000
/* Polling step of every bounded wait here. */
#define NS_POLL_MS 10
#define NS_MAX_ARGS 64

struct ns_server {
    char bin[PATH_MAX];      /* the binary ns_start_bin was given */
    char **env;              /* its extra NAME=VALUE strings (a copy) */
    char dir[PATH_MAX];
    char db[PATH_MAX];
    char port_file[PATH_MAX];  /* --port-file: the server writes its port here */
    pid_t pid;
    bool running;            /* a child process exists and is not reaped */
    int exit_code;           /* of the last process, once reaped */
    int log_fd;              /* read end of the child's stderr/stdout */
    pthread_t reader;
    bool reader_started;
    bool verbose;            /* echo the log to our stderr */
    ns_client *client;       /* for the main thread (ns_req) */
    int port;                /* read from port_file; 0 until then */

    /* Guarded by mu: written by the reader thread, read by the tests. */
    pthread_mutex_t mu;
    char *log;
    size_t log_len;
    size_t log_cap;
    bool eof;                /* the child closed its end of the pipe */
};


/* ---- the log reader ---------------------------------------------------- */

static void *ns_reader_main(void *arg)
{
    ns_server *s = arg;
    char chunk[4096];
    for (;;) {
        /* Waits unlocked, then reads and appends under mu, so that bytes are
         * never out of the pipe but not yet in the log (ns_log_sync). */
        struct pollfd pfd = { .fd = s->log_fd, .events = POLLIN };
        if (poll(&pfd, 1, -1) == -1) {
            if (errno == EINTR)
                continue;
            break;
        }
        pthread_mutex_lock(&s->mu);
        ssize_t n = read(s->log_fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) {
            pthread_mutex_unlock(&s->mu);
            continue;
        }
        if (n <= 0) {
            pthread_mutex_unlock(&s->mu);
            break;
        }
        if (s->verbose)
            fwrite(chunk, 1, (size_t)n, stderr);
        if (s->log_len + (size_t)n + 1 > s->log_cap) {
            size_t cap = s->log_cap ? s->log_cap : 8192;
            while (cap < s->log_len + (size_t)n + 1)
                cap *= 2;
            char *grown = realloc(s->log, cap);
            if (grown == NULL) {
                /* Keep what we have; the rest of the log is lost. */
                pthread_mutex_unlock(&s->mu);
                continue;
            }
            s->log = grown;
            s->log_cap = cap;
        }
        memcpy(s->log + s->log_len, chunk, (size_t)n);
        s->log_len += (size_t)n;
        s->log[s->log_len] = '\0';
        pthread_mutex_unlock(&s->mu);
    }
    pthread_mutex_lock(&s->mu);
    s->eof = true;
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/*
 * Waits (bounded) until everything the server wrote so far is in the log: the
 * pipe is empty while mu is held, and the reader reads and appends only under
 * mu. Main thread only (it owns log_fd).
 */
static void ns_log_sync(ns_server *s)
{
    long long deadline = ns_mono_ms() + NS_START_TIMEOUT_MS;
    long rounds = NS_START_TIMEOUT_MS + 1; /* 1 ms apart */
    for (long i = 0; i < rounds && s->log_fd >= 0; i++) {
        int pending = 0;
        pthread_mutex_lock(&s->mu);
        bool drained = s->eof || ioctl(s->log_fd, FIONREAD, &pending) == -1 ||
                       pending == 0;
        pthread_mutex_unlock(&s->mu);
        if (drained || ns_mono_ms() >= deadline)
            return;
        ns_sleep_ms(1);
    }
}

/* ---- process ----------------------------------------------------------- */

static int ns_code(int wstatus)
{
    if (WIFEXITED(wstatus))
        return WEXITSTATUS(wstatus);
    if (WIFSIGNALED(wstatus))
        return 128 + WTERMSIG(wstatus);
    return -1;
}

/* Joins the reader (the pipe is at EOF once the child is gone). */
static void ns_reap_reader(ns_server *s)
{
    if (s->reader_started) {
        pthread_join(s->reader, NULL);
        s->reader_started = false;
    }
    if (s->log_fd >= 0) {
        close(s->log_fd);
        s->log_fd = -1;
    }
}

/* Waits up to timeout_ms for the child to exit; true when it was reaped. */
static bool ns_wait_exit(ns_server *s, long long timeout_ms)
{
    long long deadline = ns_mono_ms() + timeout_ms;
    long rounds = timeout_ms / NS_POLL_MS + 1;
    for (long i = 0; i < rounds; i++) {
        int wstatus;
        pid_t r = waitpid(s->pid, &wstatus, WNOHANG);
        if (r == s->pid) {
            s->exit_code = ns_code(wstatus);
            s->running = false;
            return true;
        }
        if (r < 0 && errno != EINTR) {
            s->exit_code = -1;
            s->running = false;
            return true;
        }
        if (ns_mono_ms() >= deadline)
            break;
        ns_sleep_ms(NS_POLL_MS);
    }
    return false;
}

static void ns_dump_log(ns_server *s, const char *why)
{
    pthread_mutex_lock(&s->mu);
    fprintf(stderr, "harness: %s (dir %s); server log:\n%s\n", why, s->dir,
            s->log != NULL ? s->log : "");
    pthread_mutex_unlock(&s->mu);
}

/* Whether env (NAME=VALUE strings) sets the variable of var (NAME=...). */
static bool ns_env_sets(char *const *env, const char *var)
{
    size_t n = strcspn(var, "=");
    for (size_t i = 0; env != NULL && env[i] != NULL; i++)
        if (strncmp(env[i], var, n) == 0 && env[i][n] == '=')
            return true;
    return false;
}

/*
 * The child's environment: ours as it is now (tests may setenv before a
 * start), less what env replaces, then env (may be NULL). The array is
 * malloc'd, its strings borrowed. NULL when out of memory.
 */
static char **ns_child_env(char *const *env)
{
    size_t n_own = 0, n_env = 0;
    while (environ[n_own] != NULL)
        n_own++;
    while (env != NULL && env[n_env] != NULL)
        n_env++;
    char **out = calloc(n_own + n_env + 1, sizeof *out);
    if (out == NULL)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n_own; i++)
        if (!ns_env_sets(env, environ[i]))
            out[k++] = environ[i];
    for (size_t i = 0; i < n_env; i++)
        out[k++] = env[i];
    out[k] = NULL;
    return out;
}

/*
 * The port in a --port-file: digits and a newline, written whole (the server
 * renames a finished temporary file over it). 0 while the file is absent.
 */
static int ns_read_port_file(const char *path)
{
    char buf[16];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *end;
    long port = strtol(buf, &end, 10);
    if (end == buf || *end != '\n' || port <= 0 || port > 65535)
        return 0;
    return (int)port;
}

/*
 * Forks and execs bin with argv and envp, stdin from in_fd, stdout to out_fd
 * and stderr to err_fd. The pid, or -1. Main thread only: the caller builds
 * everything before the fork, as the child may only make async-signal-safe
 * calls.
 */
static pid_t ns_spawn(const char *bin, char *const argv[], char *const envp[],
                      int in_fd, int out_fd, int err_fd)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    /* Only async-signal-safe calls until execve. The process dies with the
     * test process, so a failed assert never leaves one behind. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
    if (dup2(in_fd, 0) == -1 || dup2(out_fd, 1) == -1 || dup2(err_fd, 2) == -1)
        _exit(127);
    execve(bin, argv, envp);
    _exit(127);
}

/*
 * Runs the binary with the fixed arguments plus the blank-separated words of
 * extra, and waits for its port. 0, or -1 with the child gone.
 */
static int ns_launch(ns_server *s, const char *extra)
{
    char *words = strdup(extra != NULL ? extra : "");
    if (words == NULL)
        return -1;
    char **envp = NULL;
    char *argv[NS_MAX_ARGS + 10];
    /* A restart must not read the port of the process before. */
    if (unlink(s->port_file) == -1 && errno != ENOENT) {
        fprintf(stderr, "harness: cannot remove %s: %s\n", s->port_file, strerror(errno));
        free(words);
        return -1;
    }
    int argc = 0;
    argv[argc++] = s->bin;
    argv[argc++] = (char *)"--listen";
    argv[argc++] = (char *)"127.0.0.1:0";
    argv[argc++] = (char *)"--db";
    argv[argc++] = s->db;
    argv[argc++] = (char *)"--port-file";
    argv[argc++] = s->port_file;
    /* PostgreSQL's sidecar goes where SQLite's would: in the test's directory. */
    char spill[PATH_MAX + 32];
    if (ns_pg_uri(s->db)) {
        snprintf(spill, sizeof spill, "%s/nodestate.db.spill", s->dir);
        argv[argc++] = (char *)"--spill-path";
        argv[argc++] = spill;
    }
    char *save = NULL;
    for (char *w = strtok_r(words, " \t\n", &save); w != NULL;
         w = strtok_r(NULL, " \t\n", &save)) {
        if (argc >= NS_MAX_ARGS + 9) {
            fprintf(stderr, "harness: too many arguments\n");
            free(words);
            return -1;
        }
        argv[argc++] = w;
    }
    argv[argc] = NULL;
    /* Built before fork: the child may only make async-signal-safe calls. */
    envp = ns_child_env(s->env);
    if (envp == NULL) {
        fprintf(stderr, "harness: out of memory\n");
        free(words);
        return -1;
    }

    s->port = 0;
    pthread_mutex_lock(&s->mu);
    s->log_len = 0;
    s->eof = false;
    if (s->log != NULL)
        s->log[0] = '\0';
    pthread_mutex_unlock(&s->mu);

    int fds[2] = { -1, -1 };
    int devnull = -1;
    /* Tests fork only from their main thread, so setting FD_CLOEXEC after
     * pipe() cannot race another fork. */
    if (pipe(fds) == -1 || fcntl(fds[0], F_SETFD, FD_CLOEXEC) == -1 ||
        fcntl(fds[1], F_SETFD, FD_CLOEXEC) == -1)
        goto fail;
    devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull == -1)
        goto fail;
    pid_t pid = ns_spawn(s->bin, argv, envp, devnull, fds[1], fds[1]);
    if (pid == -1)
        goto fail;
    close(fds[1]);
    fds[1] = -1;
    close(devnull);
    devnull = -1;
    free(words);
    words = NULL;
    free(envp);
    envp = NULL;
    s->pid = pid;
    s->running = true;
    s->exit_code = -1;
    s->log_fd = fds[0];
    if (pthread_create(&s->reader, NULL, ns_reader_main, s) != 0) {
        kill(pid, SIGKILL);
        ns_wait_exit(s, NS_STOP_TIMEOUT_MS);
        close(s->log_fd);
        s->log_fd = -1;
        return -1;
    }
    s->reader_started = true;

    /* Until the port file appears (the server writes it once it listens) or
     * the process exits: whichever comes first ends the wait. */
    long long deadline = ns_mono_ms() + NS_START_TIMEOUT_MS;
    long rounds = NS_START_TIMEOUT_MS / NS_POLL_MS + 1;
    const char *why = "server did not write its port file in time";
    for (long i = 0; i < rounds; i++) {
        int port = ns_read_port_file(s->port_file);
        if (port > 0) {
            s->port = port;
            /* The server logged up to msg=listening before it wrote the
             * file: callers may look for those lines at once. */
            ns_log_sync(s);
            return 0;
        }
        if (ns_wait_exit(s, 0)) {
            why = "server exited before writing its port file";
            break;
        }
        if (ns_mono_ms() >= deadline)
            break;
        ns_sleep_ms(NS_POLL_MS);
    }
    if (s->running) {
        kill(pid, SIGKILL);
        ns_wait_exit(s, NS_STOP_TIMEOUT_MS);
    }
    ns_reap_reader(s);
    char msg[PATH_MAX + 128];
    snprintf(msg, sizeof msg, "%s (%s, exit code %d)", why, s->port_file, s->exit_code);
    ns_dump_log(s, msg);
    return -1;

fail:
    fprintf(stderr, "harness: cannot start %s: %s\n", s->bin, strerror(errno));
    if (fds[0] >= 0)
        close(fds[0]);
    if (fds[1] >= 0)
        close(fds[1]);
    if (devnull >= 0)
        close(devnull);
    free(words);
    free(envp);
    return -1;
}

static char *ns_vformat(const char *fmt, va_list ap)
{
    if (fmt == NULL)
        return strdup("");
    va_list copy;
    va_copy(copy, ap);
    int n = vsnprintf(NULL, 0, fmt, copy);
    va_end(copy);
    if (n < 0)
        return NULL;
    char *text = malloc((size_t)n + 1);
    if (text == NULL)
        return NULL;
    vsnprintf(text, (size_t)n + 1, fmt, ap);
    return text;
}

static void ns_strv_free(char **v)
{
    for (size_t i = 0; v != NULL && v[i] != NULL; i++)
        free(v[i]);
    free(v);
}

/*
 * A copy of env (NULL counts as empty), or NULL when out of memory or when an
 * entry is not NAME=VALUE.
 */
static char **ns_env_dup(const char *const *env)
{
    size_t n = 0;
    while (env != NULL && env[n] != NULL)
        n++;
    char **copy = calloc(n + 1, sizeof *copy);
    if (copy == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        const char *eq = strchr(env[i], '=');
        if (eq == NULL || eq == env[i]) {
            fprintf(stderr, "harness: environment entry \"%s\" is not NAME=VALUE\n",
                    env[i]);
            ns_strv_free(copy);
            return NULL;
        }
        copy[i] = strdup(env[i]);
        if (copy[i] == NULL) {
            ns_strv_free(copy);
            return NULL;
        }
    }
    return copy;
}

/* ns_start_bin with its arguments in ap. */
static ns_server *ns_vstart(const char *bin, const char *const *env,
                            const char *extra_args_fmt, va_list ap)
{
    if (bin == NULL)
        return NULL;
    if (ns_http_global_init() != 0)
        return NULL;
    ns_server *s = calloc(1, sizeof *s);
    if (s == NULL)
        goto fail_http;
    s->log_fd = -1;
    int n = snprintf(s->bin, sizeof s->bin, "%s", bin);
    if (n < 0 || (size_t)n >= sizeof s->bin)
        goto fail_free;
    s->env = ns_env_dup(env);
    if (s->env == NULL)
        goto fail_free;
    const char *verbose = getenv("NS_IT_VERBOSE");
    s->verbose = verbose != NULL && strcmp(verbose, "1") == 0;
    if (pthread_mutex_init(&s->mu, NULL) != 0)
        goto fail_free;
    if (ns_tmp_dir(s->dir, sizeof s->dir, "it") != 0)
        goto fail_mutex;
    n = snprintf(s->db, sizeof s->db, "%s/nodestate.db", s->dir);
    if (n < 0 || (size_t)n >= sizeof s->db)
        goto fail_dir;
    if (ns_pg_base() != NULL && ns_pg_create(s->db, sizeof s->db) != 0)
        goto fail_dir;
    n = snprintf(s->port_file, sizeof s->port_file, "%s/port", s->dir);
    if (n < 0 || (size_t)n >= sizeof s->port_file)
        goto fail_dir;

    char *extra = ns_vformat(extra_args_fmt, ap);
    if (extra == NULL)
        goto fail_dir;
    int rc = ns_launch(s, extra);
    free(extra);
    if (rc != 0)
        goto fail_dir;
    s->client = ns_client_new(s);
    if (s->client == NULL) {
        ns_kill(s);
        goto fail_dir;
    }
    return s;

fail_dir:
    rmdir(s->dir); /* left in place when the server wrote files: evidence */
fail_mutex:
    pthread_mutex_destroy(&s->mu);
fail_free:
    ns_strv_free(s->env);
    free(s->log);
    free(s);
fail_http:
    ns_http_global_cleanup();
    return NULL;
}

ns_server *ns_start_bin(const char *bin, const char *const *env,
                        const char *extra_args_fmt, ...)
{
    va_list ap;
    va_start(ap, extra_args_fmt);
    ns_server *s = ns_vstart(bin, env, extra_args_fmt, ap);
    va_end(ap);
    return s;
}

ns_server *ns_start(const char *extra_args_fmt, ...)
{
    va_list ap;
    va_start(ap, extra_args_fmt);
    ns_server *s = ns_vstart(NODESTATE_BIN, NULL, extra_args_fmt, ap);
    va_end(ap);
    return s;
}

int ns_restart(ns_server *s, const char *extra_args_fmt, ...)
{
    if (s == NULL || s->running)
        return -1;
    va_list ap;
    va_start(ap, extra_args_fmt);
    char *extra = ns_vformat(extra_args_fmt, ap);
    va_end(ap);
    if (extra == NULL)
        return -1;
    int rc = ns_launch(s, extra);
    free(extra);
    if (rc != 0)
        return -1;
    /* A new port: the old keep-alive handle points at the old one. */
    ns_client_free(s->client);
    s->client = ns_client_new(s);
    if (s->client == NULL) {
        ns_kill(s);
        return -1;
    }
    return 0;
}

int ns_stop(ns_server *s, int sig)
{
    if (s == NULL)
        return -1;
    if (!s->running)
        return s->exit_code;
    if (kill(s->pid, sig) == -1 && errno != ESRCH)
        return -1;
    if (!ns_wait_exit(s, NS_STOP_TIMEOUT_MS)) {
        ns_dump_log(s, "server did not exit in time; SIGKILL");
        kill(s->pid, SIGKILL);
        ns_wait_exit(s, NS_STOP_TIMEOUT_MS);
    }
    ns_reap_reader(s);
    return s->exit_code;
}

int ns_kill(ns_server *s)
{
    return ns_stop(s, SIGKILL);
}

void ns_free(ns_server *s)
{
    if (s == NULL)
        return;
    ns_kill(s);
    ns_client_free(s->client);
    if (ns_pg_uri(s->db))
        ns_pg_drop(s->db);
    ns_rm_dir(s->dir);
    pthread_mutex_destroy(&s->mu);
    ns_strv_free(s->env);
    free(s->log);
    free(s);
    ns_http_global_cleanup();
}


int ns_run_env(const char *const *args, const char *const *env,
               double timeout_s, char **out, char **err)
{
    char *argv[NS_MAX_ARGS + 2];
    char **envp = NULL;
    int argc = 0, code = -1, out_fd = -1, err_fd = -1, devnull = -1;
    if (out != NULL)
        *out = NULL;
    if (err != NULL)
        *err = NULL;
    argv[argc++] = (char *)NODESTATE_BIN;
    for (; args != NULL && *args != NULL; args++) {
        if (argc > NS_MAX_ARGS) {
            fprintf(stderr, "harness: too many arguments\n");
            return -1;
        }
        argv[argc++] = (char *)*args;
    }
    argv[argc] = NULL;
    /* Built before fork: the child may only make async-signal-safe calls. */
    envp = ns_child_env((char *const *)env);
    if (envp == NULL)
        goto fail;
    out_fd = ns_tmp_fd("run");
    if (out_fd == -1)
        goto fail;
    if (err != NULL) {
        err_fd = ns_tmp_fd("run");
        if (err_fd == -1)
            goto fail;
    }
    devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull == -1)
        goto fail;
    pid_t pid = ns_spawn(NODESTATE_BIN, argv, envp, devnull, out_fd,
                         err_fd != -1 ? err_fd : out_fd);
    if (pid == -1)
        goto fail;
    long long timeout_ms = (long long)(timeout_s * 1000.0);
    long long deadline = ns_mono_ms() + timeout_ms;
    long rounds = (long)(timeout_ms / NS_POLL_MS) + 1;
    int wstatus = 0;
    pid_t done = 0;
    for (long i = 0; i < rounds && done == 0; i++) {
        done = waitpid(pid, &wstatus, WNOHANG);
        if (done == 0 && ns_mono_ms() >= deadline)
            break;
        if (done == 0)
            ns_sleep_ms(NS_POLL_MS);
    }
    if (done == pid) {
        code = ns_code(wstatus);
    } else {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        fprintf(stderr, "harness: %s did not exit within %.0f s; killed\n",
                NODESTATE_BIN, timeout_s);
    }
    if (out != NULL)
        *out = ns_fd_slurp(out_fd);
    if (err != NULL)
        *err = ns_fd_slurp(err_fd);
    goto done;

fail:
    fprintf(stderr, "harness: cannot run %s: %s\n", NODESTATE_BIN, strerror(errno));
done:
    if (out_fd != -1)
        close(out_fd);
    if (err_fd != -1)
        close(err_fd);
    if (devnull != -1)
        close(devnull);
    free(envp);
    return code;
}

int ns_run(const char *const *args, double timeout_s, char **output)
{
    return ns_run_env(args, NULL, timeout_s, output, NULL);
}

int ns_port(const ns_server *s)
{
    return s->port;
}

pid_t ns_pid(const ns_server *s)
{
    return s != NULL && s->running ? s->pid : -1;
}

long ns_status_kib(const ns_server *s, const char *field)
{
    char path[64], line[128];
    size_t n = strlen(field);
    long kib = -1;
    pid_t pid = ns_pid(s);
    if (pid <= 0)
        return -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        if (strncmp(line, field, n) == 0 && line[n] == ':' &&
            sscanf(line + n + 1, "%ld", &kib) == 1)
            break;
    if (f != NULL)
        fclose(f);
    return kib;
}

const char *ns_dir(const ns_server *s)
{
    return s->dir;
}

const char *ns_db_path(const ns_server *s)
{
    return s->db;
}

ns_client *ns_main_client(ns_server *s)
{
    return s->client;
}

char *ns_log(ns_server *s)
{
    ns_log_sync(s);
    pthread_mutex_lock(&s->mu);
    char *copy = strdup(s->log != NULL ? s->log : "");
    pthread_mutex_unlock(&s->mu);
    return copy;
}

bool ns_log_contains(ns_server *s, const char *needle)
{
    ns_log_sync(s);
    pthread_mutex_lock(&s->mu);
    bool found = s->log != NULL && strstr(s->log, needle) != NULL;
    pthread_mutex_unlock(&s->mu);
    return found;
}
