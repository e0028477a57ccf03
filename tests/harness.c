#include "harness.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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
/* Per-request bounds: a server that does not answer fails the request. */
#define NS_HTTP_TIMEOUT_MS 30000L
#define NS_CONNECT_TIMEOUT_MS 5000L
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

struct ns_client {
    CURL *h;
    int port;
};

/* ---- clocks ----------------------------------------------------------- */

long long ns_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

long long ns_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void ns_sleep_ms(long ms)
{
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

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
    for (size_t i = 0; env[i] != NULL; i++)
        if (strncmp(env[i], var, n) == 0 && env[i][n] == '=')
            return true;
    return false;
}

/*
 * The child's environment: ours as it is now (tests may setenv before a
 * start), less what env replaces, then env. The array is malloc'd, its
 * strings borrowed. NULL when out of memory.
 */
static char **ns_child_env(char *const *env)
{
    size_t n_own = 0, n_env = 0;
    while (environ[n_own] != NULL)
        n_own++;
    while (env[n_env] != NULL)
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
 * Runs the binary with the fixed arguments plus the blank-separated words of
 * extra, and waits for its port. 0, or -1 with the child gone.
 */
static int ns_launch(ns_server *s, const char *extra)
{
    char *words = strdup(extra != NULL ? extra : "");
    if (words == NULL)
        return -1;
    char **envp = NULL;
    char *argv[NS_MAX_ARGS + 8];
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
    char *save = NULL;
    for (char *w = strtok_r(words, " \t\n", &save); w != NULL;
         w = strtok_r(NULL, " \t\n", &save)) {
        if (argc >= NS_MAX_ARGS + 7) {
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
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == -1)
        goto fail;
    if (pid == 0) {
        /* Only async-signal-safe calls until execv. The server dies with the
         * test process, so a failed assert never leaves one behind. */
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        if (dup2(devnull, 0) == -1 || dup2(fds[1], 1) == -1 ||
            dup2(fds[1], 2) == -1)
            _exit(127);
        execve(s->bin, argv, envp);
        _exit(127);
    }
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
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return NULL;
    ns_server *s = calloc(1, sizeof *s);
    if (s == NULL)
        goto fail_curl;
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
    const char *tmp = getenv("TMPDIR");
    if (tmp == NULL || tmp[0] == '\0')
        tmp = "/tmp";
    n = snprintf(s->dir, sizeof s->dir, "%s/nodestate-it-XXXXXX", tmp);
    if (n < 0 || (size_t)n >= sizeof s->dir || mkdtemp(s->dir) == NULL)
        goto fail_mutex;
    n = snprintf(s->db, sizeof s->db, "%s/nodestate.db", s->dir);
    if (n < 0 || (size_t)n >= sizeof s->db)
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
fail_curl:
    curl_global_cleanup();
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

/* Removes the server's directory; it holds only files (db, -wal, -shm). */
static void ns_rm_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char path[PATH_MAX];
            int n = snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            if (n > 0 && (size_t)n < sizeof path)
                unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

void ns_free(ns_server *s)
{
    if (s == NULL)
        return;
    ns_kill(s);
    ns_client_free(s->client);
    ns_rm_dir(s->dir);
    pthread_mutex_destroy(&s->mu);
    ns_strv_free(s->env);
    free(s->log);
    free(s);
    curl_global_cleanup();
}

/* The whole of the file at fd from its start (malloc'd), or NULL. */
static char *ns_slurp(int fd)
{
    size_t len = 0, cap = 4096;
    char *text = malloc(cap);
    if (text == NULL || lseek(fd, 0, SEEK_SET) == -1)
        goto fail;
    for (;;) {
        if (cap - len < 2) {
            char *grown = realloc(text, cap * 2);
            if (grown == NULL)
                goto fail;
            text = grown;
            cap *= 2;
        }
        ssize_t n = read(fd, text + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto fail;
        if (n == 0)
            break;
        len += (size_t)n;
    }
    text[len] = '\0';
    return text;
fail:
    free(text);
    return NULL;
}

int ns_run(const char *const *args, double timeout_s, char **output)
{
    char *argv[NS_MAX_ARGS + 2];
    int argc = 0, code = -1, out_fd = -1, devnull = -1;
    if (output != NULL)
        *output = NULL;
    argv[argc++] = (char *)NODESTATE_BIN;
    for (; args != NULL && *args != NULL; args++) {
        if (argc > NS_MAX_ARGS) {
            fprintf(stderr, "harness: too many arguments\n");
            return -1;
        }
        argv[argc++] = (char *)*args;
    }
    argv[argc] = NULL;
    const char *tmp = getenv("TMPDIR");
    char out_path[PATH_MAX];
    snprintf(out_path, sizeof out_path, "%s/nodestate-run-XXXXXX",
             tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
    out_fd = mkstemp(out_path);
    if (out_fd == -1)
        goto fail;
    unlink(out_path);
    devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull == -1)
        goto fail;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == -1)
        goto fail;
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        if (dup2(devnull, 0) == -1 || dup2(out_fd, 1) == -1 || dup2(out_fd, 2) == -1)
            _exit(127);
        execv(NODESTATE_BIN, argv);
        _exit(127);
    }
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
    if (output != NULL)
        *output = ns_slurp(out_fd);
    close(out_fd);
    close(devnull);
    return code;

fail:
    fprintf(stderr, "harness: cannot run %s: %s\n", NODESTATE_BIN, strerror(errno));
    if (out_fd != -1)
        close(out_fd);
    if (devnull != -1)
        close(devnull);
    return -1;
}

int ns_port(const ns_server *s)
{
    return s->port;
}

pid_t ns_pid(const ns_server *s)
{
    return s != NULL && s->running ? s->pid : -1;
}

const char *ns_dir(const ns_server *s)
{
    return s->dir;
}

const char *ns_db_path(const ns_server *s)
{
    return s->db;
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

/* ---- HTTP -------------------------------------------------------------- */

/* The response being filled by curl's callbacks. */
typedef struct ns_fill {
    ns_resp *out;
    size_t cap;
    bool oom;
} ns_fill;

static size_t ns_on_body(char *data, size_t size, size_t nmemb, void *ctx)
{
    ns_fill *f = ctx;
    size_t n = size * nmemb;
    ns_resp *r = f->out;
    if (r->body_len + n + 1 > f->cap) {
        size_t cap = f->cap ? f->cap : 1024;
        while (cap < r->body_len + n + 1)
            cap *= 2;
        char *grown = realloc(r->body, cap);
        if (grown == NULL) {
            f->oom = true;
            return 0; /* makes curl fail the request */
        }
        r->body = grown;
        f->cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return n;
}

static void ns_copy_value(char *dst, size_t dst_len, const char *v, size_t n)
{
    while (n > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        n--;
    }
    while (n > 0 && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' '))
        n--;
    if (n >= dst_len)
        n = dst_len - 1;
    memcpy(dst, v, n);
    dst[n] = '\0';
}

static size_t ns_on_header(char *data, size_t size, size_t nmemb, void *ctx)
{
    ns_fill *f = ctx;
    ns_resp *r = f->out;
    size_t n = size * nmemb;
    /* A new status line (after a 100 Continue, say) starts a new header set. */
    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        r->content_type[0] = r->etag[0] = r->retry_after[0] = r->allow[0] = '\0';
        return n;
    }
    static const struct {
        const char *name;
        size_t off;
        size_t len;
    } wanted[] = {
        { "content-type", offsetof(ns_resp, content_type), sizeof r->content_type },
        { "etag", offsetof(ns_resp, etag), sizeof r->etag },
        { "retry-after", offsetof(ns_resp, retry_after), sizeof r->retry_after },
        { "allow", offsetof(ns_resp, allow), sizeof r->allow },
    };
    for (size_t i = 0; i < sizeof wanted / sizeof *wanted; i++) {
        size_t nl = strlen(wanted[i].name);
        if (n > nl && data[nl] == ':' && strncasecmp(data, wanted[i].name, nl) == 0)
            ns_copy_value((char *)r + wanted[i].off, wanted[i].len,
                          data + nl + 1, n - nl - 1);
    }
    return n;
}

/* curl_easy_setopt with its result checked; jumps to fail on error. */
#define NS_SETOPT(h, opt, val)                                                \
    do {                                                                      \
        CURLcode rc_ = curl_easy_setopt((h), (opt), (val));                   \
        if (rc_ != CURLE_OK) {                                                \
            snprintf(out->error, sizeof out->error, "curl_easy_setopt(%s): %s", \
                     #opt, curl_easy_strerror(rc_));                          \
            goto fail;                                                        \
        }                                                                     \
    } while (0)

ns_client *ns_client_new(const ns_server *s)
{
    ns_client *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->port = s->port;
    c->h = curl_easy_init();
    if (c->h == NULL) {
        free(c);
        return NULL;
    }
    ns_resp scratch = { 0 };
    ns_resp *out = &scratch; /* where NS_SETOPT reports */
    NS_SETOPT(c->h, CURLOPT_NOSIGNAL, 1L);
    NS_SETOPT(c->h, CURLOPT_TIMEOUT_MS, NS_HTTP_TIMEOUT_MS);
    NS_SETOPT(c->h, CURLOPT_CONNECTTIMEOUT_MS, NS_CONNECT_TIMEOUT_MS);
    NS_SETOPT(c->h, CURLOPT_WRITEFUNCTION, ns_on_body);
    NS_SETOPT(c->h, CURLOPT_HEADERFUNCTION, ns_on_header);
    NS_SETOPT(c->h, CURLOPT_TCP_NODELAY, 1L);
    NS_SETOPT(c->h, CURLOPT_PROXY, ""); /* never an environment proxy */
    return c;
fail:
    fprintf(stderr, "harness: %s\n", scratch.error);
    curl_easy_cleanup(c->h);
    free(c);
    return NULL;
}

void ns_client_free(ns_client *c)
{
    if (c == NULL)
        return;
    curl_easy_cleanup(c->h);
    free(c);
}

void ns_resp_free(ns_resp *r)
{
    if (r == NULL)
        return;
    free(r->body);
    memset(r, 0, sizeof *r);
}

static bool ns_has_header(const char *const *headers, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i++)
        if (strncasecmp(headers[i], name, n) == 0 && headers[i][n] == ':')
            return true;
    return false;
}

int ns_client_req_len(ns_client *c, const char *method, const char *path,
                      const char *body, size_t body_len,
                      const char *const *headers, ns_resp *out)
{
    struct curl_slist *list = NULL;
    ns_resp_free(out);
    out->body = calloc(1, 1);
    if (out->body == NULL) {
        snprintf(out->error, sizeof out->error, "out of memory");
        return -1;
    }
    ns_fill fill = { .out = out, .cap = 1 };

    char url[2048];
    int n = snprintf(url, sizeof url, "http://127.0.0.1:%d%s", c->port, path);
    if (n < 0 || (size_t)n >= sizeof url) {
        snprintf(out->error, sizeof out->error, "path too long");
        goto fail;
    }
    /* Expect: 100-continue would add a round trip to every larger body. */
    const char *fixed[3] = { "Expect:", NULL, NULL };
    if (body != NULL && !ns_has_header(headers, "Content-Type"))
        fixed[1] = "Content-Type: application/json";
    for (size_t i = 0; fixed[i] != NULL; i++) {
        struct curl_slist *l = curl_slist_append(list, fixed[i]);
        if (l == NULL)
            goto oom;
        list = l;
    }
    for (size_t i = 0; headers != NULL && headers[i] != NULL; i++) {
        struct curl_slist *l = curl_slist_append(list, headers[i]);
        if (l == NULL)
            goto oom;
        list = l;
    }

    CURL *h = c->h;
    NS_SETOPT(h, CURLOPT_URL, url);
    NS_SETOPT(h, CURLOPT_HTTPHEADER, list);
    NS_SETOPT(h, CURLOPT_WRITEDATA, &fill);
    NS_SETOPT(h, CURLOPT_HEADERDATA, &fill);
    NS_SETOPT(h, CURLOPT_NOBODY, 0L);
    /* The handle is reused: reset the method first, then set this one. */
    NS_SETOPT(h, CURLOPT_HTTPGET, 1L);
    NS_SETOPT(h, CURLOPT_CUSTOMREQUEST, (char *)NULL);
    if (body != NULL) {
        NS_SETOPT(h, CURLOPT_POST, 1L);
        NS_SETOPT(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
        NS_SETOPT(h, CURLOPT_POSTFIELDS, body);
    }
    if (strcmp(method, "HEAD") == 0)
        NS_SETOPT(h, CURLOPT_NOBODY, 1L);
    else if (strcmp(method, "GET") != 0 && strcmp(method, "POST") != 0)
        NS_SETOPT(h, CURLOPT_CUSTOMREQUEST, method);
    else if (strcmp(method, "POST") == 0 && body == NULL)
        NS_SETOPT(h, CURLOPT_CUSTOMREQUEST, "POST");

    CURLcode rc = curl_easy_perform(h);
    if (rc != CURLE_OK) {
        snprintf(out->error, sizeof out->error, "%s %s: %s%s", method, path,
                 curl_easy_strerror(rc), fill.oom ? " (out of memory)" : "");
        goto fail;
    }
    long status = 0;
    if (curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK) {
        snprintf(out->error, sizeof out->error, "no response code");
        goto fail;
    }
    out->status = status;
    /* The list must outlive the request only; detach it before freeing. */
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
    curl_slist_free_all(list);
    return 0;

oom:
    snprintf(out->error, sizeof out->error, "out of memory");
fail:
    curl_easy_setopt(c->h, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
    curl_slist_free_all(list);
    out->status = 0;
    return -1;
}

int ns_client_req(ns_client *c, const char *method, const char *path,
                  const char *body, const char *const *headers, ns_resp *out)
{
    return ns_client_req_len(c, method, path, body,
                             body != NULL ? strlen(body) : 0, headers, out);
}

int ns_req(ns_server *s, const char *method, const char *path,
           const char *body, const char *const *headers, ns_resp *out)
{
    return ns_client_req(s->client, method, path, body, headers, out);
}

int ns_req_len(ns_server *s, const char *method, const char *path,
               const char *body, size_t body_len, const char *const *headers,
               ns_resp *out)
{
    return ns_client_req_len(s->client, method, path, body, body_len, headers,
                             out);
}

/* The node's state path; 0, or -1 with out's error set when it is too long. */
static int ns_state_path(char *path, size_t size, const char *run,
                         const char *node, const char *query, ns_resp *out)
{
    int n = snprintf(path, size, "/runs/%s/nodes/%s/state%s", run, node,
                     query != NULL ? query : "");
    if (n < 0 || (size_t)n >= size) {
        ns_resp_free(out);
        snprintf(out->error, sizeof out->error, "path too long");
        return -1;
    }
    return 0;
}

int ns_post_state(ns_server *s, const char *run, const char *node,
                  const char *query, const char *json, ns_resp *out)
{
    char path[1024];
    if (ns_state_path(path, sizeof path, run, node, query, out) != 0)
        return -1;
    return ns_req(s, "POST", path, json, NULL, out);
}

int ns_client_post_state(ns_client *c, const char *run, const char *node,
                         const char *json, ns_resp *out)
{
    char path[1024];
    if (ns_state_path(path, sizeof path, run, node, NULL, out) != 0)
        return -1;
    return ns_client_req(c, "POST", path, json, NULL, out);
}

int ns_get_state(ns_server *s, const char *run, const char *node, ns_resp *out)
{
    char path[1024];
    if (ns_state_path(path, sizeof path, run, node, NULL, out) != 0)
        return -1;
    return ns_req(s, "GET", path, NULL, NULL, out);
}

/* ---- JSON -------------------------------------------------------------- */

json_t *ns_resp_json(const ns_resp *r)
{
    if (r->body == NULL || r->body_len == 0)
        return NULL;
    json_error_t err;
    return json_loadb(r->body, r->body_len, 0, &err);
}

const char *ns_jstr(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

int ns_jint(const json_t *o, const char *key, long long *out)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        return -1;
    *out = (long long)json_integer_value(v);
    return 0;
}

bool ns_jnull(const json_t *o, const char *key)
{
    return json_is_null(json_object_get(o, key));
}

int ns_check_problem(const ns_resp *r, long status, const char *slug,
                     char *why, size_t why_len)
{
    int rc = -1;
    json_t *doc = NULL;
    if (r->status != status) {
        snprintf(why, why_len, "status %ld, want %ld (body %.300s)", r->status,
                 status, r->body != NULL ? r->body : "");
        goto out;
    }
    if (strncasecmp(r->content_type, "application/problem+json", 24) != 0) {
        snprintf(why, why_len, "Content-Type \"%s\", want application/problem+json",
                 r->content_type);
        goto out;
    }
    doc = ns_resp_json(r);
    if (!json_is_object(doc)) {
        snprintf(why, why_len, "body is not a JSON object: %.300s",
                 r->body != NULL ? r->body : "");
        goto out;
    }
    char want_type[160];
    snprintf(want_type, sizeof want_type, "urn:nodestate:problem:%s", slug);
    const char *type = ns_jstr(doc, "type");
    const char *title = ns_jstr(doc, "title");
    const char *detail = ns_jstr(doc, "detail");
    long long st = 0;
    if (type == NULL || strcmp(type, want_type) != 0) {
        snprintf(why, why_len, "type %s, want %s", type ? type : "(missing)",
                 want_type);
        goto out;
    }
    if (title == NULL || title[0] == '\0') {
        snprintf(why, why_len, "title missing or empty: %.300s", r->body);
        goto out;
    }
    if (ns_jint(doc, "status", &st) != 0 || st != status) {
        snprintf(why, why_len, "body status missing or not %ld: %.300s", status,
                 r->body);
        goto out;
    }
    if (detail == NULL || detail[0] == '\0') {
        snprintf(why, why_len, "detail missing or empty: %.300s", r->body);
        goto out;
    }
    rc = 0;
    if (why_len > 0)
        why[0] = '\0';
out:
    json_decref(doc);
    return rc;
}

long long ns_ts_ms(const char *ts)
{
    if (ts == NULL)
        return -1;
    struct tm tm = { 0 };
    int ms = 0, used = 0;
    if (sscanf(ts, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon,
               &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &used) != 6)
        return -1;
    const char *p = ts + used;
    if (*p == '.') {
        p++;
        int digits = 0;
        while (*p >= '0' && *p <= '9') {
            if (digits < 3)
                ms = ms * 10 + (*p - '0');
            digits++;
            p++;
        }
        for (; digits < 3; digits++)
            ms *= 10;
    }
    if (strcmp(p, "Z") != 0)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t secs = timegm(&tm);
    if (secs == (time_t)-1)
        return -1;
    return (long long)secs * 1000 + ms;
}

/* ---- /stats ------------------------------------------------------------ */

json_t *ns_stats(ns_server *s)
{
    ns_resp r = { 0 };
    json_t *doc = NULL;
    if (ns_req(s, "GET", "/stats?format=json", NULL, NULL, &r) == 0 &&
        r.status == 200)
        doc = ns_resp_json(&r);
    ns_resp_free(&r);
    if (doc != NULL && !json_is_object(doc)) {
        json_decref(doc);
        doc = NULL;
    }
    return doc;
}

long long ns_stat(ns_server *s, const char *key)
{
    json_t *doc = ns_stats(s);
    long long v = -1;
    if (doc == NULL || ns_jint(doc, key, &v) != 0)
        v = -1;
    json_decref(doc);
    return v;
}

int ns_wait_stats(ns_server *s, bool (*pred)(const json_t *stats, void *ctx),
                  void *ctx, double timeout_s)
{
    const long step_ms = 20;
    long long timeout_ms = (long long)(timeout_s * 1000.0);
    long long deadline = ns_mono_ms() + timeout_ms;
    long rounds = (long)(timeout_ms / step_ms) + 1;
    for (long i = 0; i < rounds; i++) {
        json_t *doc = ns_stats(s);
        bool ok = doc != NULL && pred(doc, ctx);
        json_decref(doc);
        if (ok)
            return 0;
        if (ns_mono_ms() >= deadline)
            break;
        ns_sleep_ms(step_ms);
    }
    return -1;
}

typedef struct ns_stat_cond {
    const char *key;
    long long value;
    bool at_least;
} ns_stat_cond;

static bool ns_stat_pred(const json_t *stats, void *ctx)
{
    const ns_stat_cond *c = ctx;
    long long v;
    if (ns_jint(stats, c->key, &v) != 0)
        return false;
    return c->at_least ? v >= c->value : v == c->value;
}

int ns_wait_stat_eq(ns_server *s, const char *key, long long value,
                    double timeout_s)
{
    ns_stat_cond c = { key, value, false };
    return ns_wait_stats(s, ns_stat_pred, &c, timeout_s);
}

int ns_wait_stat_ge(ns_server *s, const char *key, long long value,
                    double timeout_s)
{
    ns_stat_cond c = { key, value, true };
    return ns_wait_stats(s, ns_stat_pred, &c, timeout_s);
}

static bool ns_idle_pred(const json_t *stats, void *ctx)
{
    (void)ctx;
    long long queued, processed, depth;
    if (ns_jint(stats, "updates_queued", &queued) != 0 ||
        ns_jint(stats, "updates_processed", &processed) != 0 ||
        ns_jint(stats, "queue_depth", &depth) != 0)
        return false;
    return queued == processed && depth == 0;
}

int ns_wait_idle(ns_server *s, double timeout_s)
{
    return ns_wait_stats(s, ns_idle_pred, NULL, timeout_s);
}

int ns_prom_value(const char *text, const char *series, double *out)
{
    size_t n = strlen(series);
    for (const char *line = text; line != NULL && *line != '\0';) {
        if (strncmp(line, series, n) == 0 && line[n] == ' ') {
            char *end;
            double v = strtod(line + n + 1, &end);
            if (end == line + n + 1)
                return -1;
            *out = v;
            return 0;
        }
        line = strchr(line, '\n');
        if (line != NULL)
            line++;
    }
    return -1;
}

/* ---- SQLite file ------------------------------------------------------- */

static void ns_dbrow_release(ns_dbrow *row)
{
    if (row == NULL)
        return;
    for (int i = 0; i < row->ncols; i++) {
        if (row->names != NULL)
            free(row->names[i]);
        if (row->values != NULL)
            free(row->values[i]);
    }
    free(row->names);
    free(row->values);
    free(row);
}

void ns_dbrow_free(ns_dbrow *row)
{
    ns_dbrow_release(row);
}

/*
 * Runs sql with the string arguments in ap and packs the first row into *out.
 * Returns 1 with a row, 0 with none, -1 on error (reported on stderr).
 */
static int ns_db_first(ns_server *s, const char *sql, va_list ap, ns_dbrow **out)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    ns_dbrow *row = NULL;
    int rc = -1;
    *out = NULL;
    if (sqlite3_open_v2(s->db, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        goto fail;
    if (sqlite3_busy_timeout(db, 5000) != SQLITE_OK)
        goto fail;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        goto fail;
    int nparams = sqlite3_bind_parameter_count(st);
    for (int i = 1; i <= nparams; i++) {
        const char *arg = va_arg(ap, const char *);
        if (arg == NULL) {
            fprintf(stderr, "harness: %s needs %d arguments\n", sql, nparams);
            goto fail_quiet;
        }
        if (sqlite3_bind_text(st, i, arg, -1, SQLITE_TRANSIENT) != SQLITE_OK)
            goto fail;
    }
    int step = sqlite3_step(st);
    if (step == SQLITE_DONE) {
        rc = 0;
        goto out;
    }
    if (step != SQLITE_ROW)
        goto fail;
    row = calloc(1, sizeof *row);
    if (row == NULL)
        goto fail_quiet;
    int ncols = sqlite3_column_count(st);
    row->names = calloc((size_t)ncols + 1, sizeof *row->names);
    row->values = calloc((size_t)ncols + 1, sizeof *row->values);
    if (row->names == NULL || row->values == NULL)
        goto fail_quiet;
    row->ncols = ncols;
    for (int i = 0; i < ncols; i++) {
        const char *name = sqlite3_column_name(st, i);
        row->names[i] = strdup(name != NULL ? name : "");
        if (row->names[i] == NULL)
            goto fail_quiet;
        if (sqlite3_column_type(st, i) != SQLITE_NULL) {
            const unsigned char *v = sqlite3_column_text(st, i);
            if (v == NULL)
                goto fail;
            row->values[i] = strdup((const char *)v);
            if (row->values[i] == NULL)
                goto fail_quiet;
        }
    }
    *out = row;
    row = NULL;
    rc = 1;
    goto out;

fail:
    fprintf(stderr, "harness: sqlite %s: %s\n", sql,
            db != NULL ? sqlite3_errmsg(db) : "cannot open");
fail_quiet:
    rc = -1;
out:
    ns_dbrow_release(row);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc;
}

char *ns_db_text(ns_server *s, bool *err, const char *sql, ...)
{
    va_list ap;
    va_start(ap, sql);
    ns_dbrow *row = NULL;
    int rc = ns_db_first(s, sql, ap, &row);
    va_end(ap);
    if (err != NULL)
        *err = rc < 0;
    char *text = NULL;
    if (rc == 1 && row->ncols > 0 && row->values[0] != NULL) {
        text = row->values[0];
        row->values[0] = NULL;
    }
    ns_dbrow_release(row);
    return text;
}

long long ns_db_int(ns_server *s, const char *sql, ...)
{
    va_list ap;
    va_start(ap, sql);
    ns_dbrow *row = NULL;
    int rc = ns_db_first(s, sql, ap, &row);
    va_end(ap);
    long long v = -1;
    if (rc == 1 && row->ncols > 0 && row->values[0] != NULL) {
        char *end;
        errno = 0;
        v = strtoll(row->values[0], &end, 10);
        if (errno != 0 || *end != '\0')
            v = -1;
    }
    ns_dbrow_release(row);
    return v;
}

ns_dbrow *ns_db_row(ns_server *s, const char *sql, ...)
{
    va_list ap;
    va_start(ap, sql);
    ns_dbrow *row = NULL;
    int rc = ns_db_first(s, sql, ap, &row);
    va_end(ap);
    return rc == 1 ? row : NULL;
}

const char *ns_dbrow_get(const ns_dbrow *row, const char *name)
{
    for (int i = 0; row != NULL && i < row->ncols; i++)
        if (strcmp(row->names[i], name) == 0)
            return row->values[i];
    return NULL;
}

bool ns_dbrow_has(const ns_dbrow *row, const char *name)
{
    for (int i = 0; row != NULL && i < row->ncols; i++)
        if (strcmp(row->names[i], name) == 0)
            return true;
    return false;
}
