/*
 * main: the nodestate process. Reads the configuration, opens the engine,
 * serves HTTP until SIGTERM or SIGINT, then shuts down in order: stop taking
 * requests, answer those in flight, flush the queue, close the store.
 * Exit status: 0 clean, 1 failed to start or left updates unwritten, 2 bad
 * configuration.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api.h"
#include "config.h"
#include "engine.h"
#include "http.h"
#include "log.h"

#ifndef NODESTATE_VERSION
#define NODESTATE_VERSION "0.0.0"
#endif

/* The wait of ?wait=true without ?timeout= (seconds), before --max-wait caps it. */
#define DEFAULT_WAIT 10.0

/*
 * Blocks SIGTERM and SIGINT so every thread started later inherits the mask
 * and only sigwait in main sees them; ignores SIGPIPE so a client hanging up
 * is an EPIPE on that one socket, not the death of the process, and SIGHUP,
 * SIGUSR1 and SIGUSR2, whose default would end the process without a flush
 * when its terminal goes away or an operator or a tool sends one out of
 * habit (log rotation, a reload): the accepted updates still queued were
 * lost as with SIGKILL.
 */
static int setup_signals(sigset_t *stop)
{
    struct sigaction ign;

    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    if (sigaction(SIGPIPE, &ign, NULL) != 0 || sigaction(SIGHUP, &ign, NULL) != 0 ||
        sigaction(SIGUSR1, &ign, NULL) != 0 || sigaction(SIGUSR2, &ign, NULL) != 0)
        return -1;
    if (sigemptyset(stop) != 0 || sigaddset(stop, SIGTERM) != 0 ||
        sigaddset(stop, SIGINT) != 0)
        return -1;
    return pthread_sigmask(SIG_BLOCK, stop, NULL) == 0 ? 0 : -1;
}

/*
 * Start-up can take long before anything is served: a big sidecar replayed
 * (a gigabyte: ~6 s), a database another process keeps locked. A SIGTERM
 * or SIGINT meanwhile is taken by this guard's thread, and start-up goes
 * on for at most --shutdown-timeout from the signal; past that the process
 * exits at once, as a SIGKILL would leave it, which loses nothing: an
 * unfinished replay is rolled back and its sidecar stays for the next
 * start. A start-up that finishes in time stops at once (start_guard_end),
 * with what is left of the budget counted from the signal.
 */
typedef struct start_guard {
    sigset_t stop;
    double timeout;          /* --shutdown-timeout */
    logger *log;
    atomic_int sig;          /* the signal that came during start-up; 0: none */
    int64_t sig_ns;          /* when (model_mono_ns), set before sig */
    atomic_bool over;        /* start-up ended (or failed): the guard goes */
    pthread_t thread;
    bool running;
} start_guard;

static void *start_guard_main(void *arg)
{
    start_guard *g = arg;
    const struct timespec tick = { 0, 50 * 1000000L };
    while (!atomic_load(&g->over)) {
        int sig = sigtimedwait(&g->stop, NULL, &tick);
        if (sig <= 0)
            continue;
        g->sig_ns = model_mono_ns();
        atomic_store(&g->sig, sig);
        log_printf(g->log, NS_LOG_INFO, "stopping", "signal=%s during=start-up",
                   sig == SIGTERM ? "TERM" : "INT");
        int64_t give_up = g->sig_ns + (int64_t)(g->timeout * 1e9);
        while (!atomic_load(&g->over) && model_mono_ns() < give_up)
            nanosleep(&tick, NULL);
        if (atomic_load(&g->over))
            break;
        log_printf(g->log, NS_LOG_WARN, "start-abandoned",
                   "detail=\"--shutdown-timeout passed during start-up; a sidecar not yet "
                   "replayed stays for the next start\"");
        _exit(0);
    }
    return NULL;
}

static int start_guard_begin(start_guard *g, const sigset_t *stop, double timeout, logger *log)
{
    memset(g, 0, sizeof *g);
    g->stop = *stop;
    g->timeout = timeout;
    g->log = log;
    atomic_init(&g->sig, 0);
    atomic_init(&g->over, false);
    g->running = pthread_create(&g->thread, NULL, start_guard_main, g) == 0;
    return g->running ? 0 : -1;
}

/*
 * Start-up is over: the guard goes. The signal it took (0: none), to stop
 * at once, and when it came (*sig_ns).
 */
static int start_guard_end(start_guard *g, int64_t *sig_ns)
{
    atomic_store(&g->over, true);
    if (g->running)
        pthread_join(g->thread, NULL);
    g->running = false;
    int sig = atomic_load(&g->sig);
    if (sig_ns != NULL)
        *sig_ns = g->sig_ns;
    return sig;
}

/*
 * Overwrites the value of --token in argv with NULs, so that the secret
 * leaves /proc/<pid>/cmdline (and ps) once parsed. config_parse never takes
 * a value starting with "--", so scanning left to right finds exactly the
 * values it read. The environment copy of NODESTATE_TOKEN is left alone:
 * only the same user (or root) can read /proc/<pid>/environ.
 */
static void hide_token_argument(int argc, char **argv)
{
    static const char flag[] = "--token";

    for (int i = 1; i < argc; i++) {
        char *value = NULL;

        if (strcmp(argv[i], flag) == 0 && i + 1 < argc)
            value = argv[++i];
        else if (strncmp(argv[i], flag, strlen(flag)) == 0 &&
                 argv[i][strlen(flag)] == '=')
            value = argv[i] + strlen(flag) + 1;
        if (value != NULL)
            memset(value, 0, strlen(value));
    }
}

/*
 * Writes the bound port and a newline to path, through a temporary file
 * renamed over it, so a reader that sees the file sees the whole number.
 * 0, or -1 with errno set.
 */
static int write_port_file(const char *path, unsigned port)
{
    char tmp[4096 + 16];
    FILE *f;
    int rc;

    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        errno = ENAMETOOLONG;
        return -1;
    }
    f = fopen(tmp, "w");
    if (f == NULL)
        return -1;
    rc = fprintf(f, "%u\n", port) < 0 ? -1 : 0;
    if (fclose(f) != 0)
        rc = -1;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -1;
    if (rc != 0) {
        int saved = errno;
        unlink(tmp);
        errno = saved;
    }
    return rc;
}

/* Largest PEM file read for --tls-cert / --tls-key: a long chain fits easily. */
#define PEM_MAX (1024 * 1024)

/*
 * Reads a whole PEM file for --tls-cert or --tls-key into *out (malloc'd,
 * NUL-terminated). Only a first sanity check: GnuTLS parses it in
 * http_start and says what it refuses. 0, or -1 with a message in err.
 */
static int read_pem(const char *option, const char *path, char **out,
                    size_t *outlen, char *err, size_t errlen)
{
    FILE *f = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc = -1;

    *out = NULL;
    *outlen = 0;
    f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "--%s: cannot read \"%.300s\": %s", option, path,
                 strerror(errno));
        goto out;
    }
    text = malloc(PEM_MAX + 1);
    if (text == NULL) {
        snprintf(err, errlen, "--%s: out of memory", option);
        goto out;
    }
    len = fread(text, 1, PEM_MAX + 1, f);
    if (ferror(f)) {
        snprintf(err, errlen, "--%s: cannot read \"%.300s\": %s", option, path,
                 strerror(errno));
        goto out;
    }
    if (len > PEM_MAX) {
        snprintf(err, errlen, "--%s: \"%.300s\" is larger than %d bytes", option,
                 path, PEM_MAX);
        goto out;
    }
    text[len] = '\0';
    if (memchr(text, '\0', len) != NULL || strstr(text, "-----BEGIN ") == NULL) {
        snprintf(err, errlen, "--%s: \"%.300s\" is not a PEM file (no -----BEGIN line)",
                 option, path);
        goto out;
    }
    *out = text;
    *outlen = len;
    text = NULL;
    rc = 0;
out:
    if (text != NULL) {
        memset(text, 0, len);
        free(text);
    }
    if (f != NULL)
        fclose(f);
    return rc;
}

/* Frees a PEM buffer from read_pem, wiping it first: it may be a private key. */
static void free_pem(char *text, size_t len)
{
    if (text == NULL)
        return;
    /* volatile: the compiler must not drop a wipe of memory about to be freed. */
    for (volatile char *p = text; p < text + len; p++)
        *p = 0;
    free(text);
}

/*
 * --tls-cert and --tls-key: both or neither. Both read into memory (the
 * key is the process's to keep out of files it writes). 0 (and NULLs
 * without TLS), or -1 with a message in err.
 */
static int load_tls(const config *cfg, char **cert, size_t *cert_len,
                    char **key, size_t *key_len, char *err, size_t errlen)
{
    if ((cfg->tls_cert[0] == '\0') != (cfg->tls_key[0] == '\0')) {
        snprintf(err, errlen, "--tls-cert and --tls-key: give both for HTTPS "
                 "(only --%s was given)", cfg->tls_cert[0] != '\0' ? "tls-cert" : "tls-key");
        return -1;
    }
    if (cfg->tls_cert[0] == '\0')
        return 0;
    if (read_pem("tls-cert", cfg->tls_cert, cert, cert_len, err, errlen) != 0)
        return -1;
    if (read_pem("tls-key", cfg->tls_key, key, key_len, err, errlen) != 0) {
        free_pem(*cert, *cert_len);
        *cert = NULL;
        return -1;
    }
    /* As GnuTLS will take them, now: a pair it refuses must not cost a database open. */
    if (http_tls_check(*cert, *key, err, errlen) != 0) {
        free_pem(*cert, *cert_len);
        free_pem(*key, *key_len);
        *cert = *key = NULL;
        return -1;
    }
    return 0;
}

/* HOST:PORT, or [HOST]:PORT for an IPv6 host. */
static void format_addr(char *buf, size_t size, const char *host,
                        unsigned port)
{
    if (strchr(host, ':') != NULL)
        snprintf(buf, size, "[%s]:%u", host, port);
    else
        snprintf(buf, size, "%s:%u", host, port);
}

int main(int argc, char **argv)
{
    config cfg;
    char err[512];
    char quoted[2048];
    char db[8192];
    char settings[16384];
    char addr[300];
    sigset_t stop;
    engine_config ec;
    api_config ac;
    http_config hc;
    logger *log = NULL;
    start_guard guard = { .running = false };
    engine *e = NULL;
    api *a = NULL;
    http_server *srv = NULL;
    int sig = 0;
    engine_closing closing;
    char *tls_cert = NULL, *tls_key = NULL;
    size_t tls_cert_len = 0, tls_key_len = 0;
    int status;

    /* Before any thread exists: threads inherit the signal mask. */
    if (setup_signals(&stop) != 0) {
        fprintf(stderr, "nodestate: cannot set up signal handling\n");
        return 1;
    }

    switch (config_parse(&cfg, argc, argv, getenv, stdout, err, sizeof err)) {
    case CONFIG_RUN:
        break;
    case CONFIG_EXIT_OK:
        return 0;
    case CONFIG_ERROR:
        config_clear_secrets(&cfg);
        fprintf(stderr, "nodestate: %s\n", err);
        return 2;
    }
    hide_token_argument(argc, argv);

    log = log_new(stderr, cfg.log_level);
    if (log == NULL) {
        config_clear_secrets(&cfg);
        fprintf(stderr, "nodestate: out of memory\n");
        return 1;
    }

    if (cfg.threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        cfg.threads = n < 1 ? 1 : n > 256 ? 256 : (unsigned)n;
    }

    ec = (engine_config){
        .db_path = cfg.db_path,
        .spill_path = cfg.spill_path,
        .batch_size = cfg.batch_size,
        .batch_interval = cfg.batch_interval,
        .group_commit_delay = cfg.group_commit_delay,
        .queue_capacity = cfg.queue_capacity,
        .queue_max_bytes = cfg.queue_max_bytes,
        .cache_max_nodes = cfg.cache_max_nodes,
        .cache_max_bytes = cfg.cache_max_bytes,
        .max_backups = cfg.max_backups,
        .shutdown_timeout = cfg.shutdown_timeout,
        .synchronous_full = cfg.synchronous_full,
        .retention = cfg.retention,
        .retention_interval = cfg.retention_interval,
        .log = log_write,
        .log_ctx = log,
    };
    if (start_guard_begin(&guard, &stop, cfg.shutdown_timeout, log) != 0) {
        log_write(log, NS_LOG_ERROR, "start-failed", "error=\"cannot start a thread\"");
        goto fail;
    }
    /* Before the engine: a bad certificate must not cost a database open. */
    if (load_tls(&cfg, &tls_cert, &tls_cert_len, &tls_key, &tls_key_len, err,
                 sizeof err) != 0) {
        log_printf(log, NS_LOG_ERROR, "start-failed", "error=%s",
                   logfmt_quote(quoted, sizeof quoted, err));
        goto fail;
    }
    e = engine_open(&ec, err, sizeof err);
    if (e == NULL) {
        log_printf(log, NS_LOG_ERROR, "start-failed", "db=%s error=%s",
                   logfmt_quote(db, sizeof db, cfg.db_path),
                   logfmt_quote(quoted, sizeof quoted, err));
        goto fail;
    }

    ac = (api_config){
        .max_body_bytes = cfg.max_body_bytes,
        .max_error_bytes = cfg.max_error_bytes,
        .max_batch_updates = cfg.max_batch_updates,
        .max_batch_body_bytes = cfg.max_batch_body_bytes,
        .max_wait = cfg.max_wait,
        /* --max-wait caps the default too, or a small cap would be ignored. */
        .default_wait = DEFAULT_WAIT < cfg.max_wait ? DEFAULT_WAIT : cfg.max_wait,
        /* api_new copies it; ours is wiped once the started line is out. */
        .token = cfg.token[0] != '\0' ? cfg.token : NULL,
    };
    a = api_new(e, &ac);
    if (a == NULL) {
        log_write(log, NS_LOG_ERROR, "start-failed", "error=\"out of memory\"");
        goto fail;
    }

    hc = (http_config){
        .host = cfg.listen_host,
        .port = cfg.listen_port,
        .threads = cfg.threads,
        .max_body_bytes = cfg.max_body_bytes,
        .max_connections = cfg.max_connections,
        .connection_timeout = cfg.connection_timeout,
        .max_connections_per_ip = cfg.max_connections_per_ip,
        .header_timeout = cfg.header_timeout,
        .access_log = cfg.access_log,
        .tls_cert = tls_cert,
        .tls_key = tls_key,
        .max_watchers = cfg.max_watchers,
        .watch_buffer_bytes = cfg.watch_buffer_bytes,
        .watch_heartbeat = cfg.watch_heartbeat,
        .log = log_write,
        .log_ctx = log,
    };
    srv = http_start(&hc, a, e, err, sizeof err);
    if (srv == NULL) {
        format_addr(addr, sizeof addr, cfg.listen_host, cfg.listen_port);
        log_printf(log, NS_LOG_ERROR, "start-failed", "addr=%s error=%s", addr,
                   logfmt_quote(quoted, sizeof quoted, err));
        goto fail;
    }

    log_printf(log, NS_LOG_INFO, "started", "version=%s %s", NODESTATE_VERSION,
               config_format(&cfg, settings, sizeof settings));
    config_clear_secrets(&cfg);
    format_addr(addr, sizeof addr, cfg.listen_host, http_port(srv));
    log_printf(log, NS_LOG_INFO, "listening", "addr=%s scheme=%s", addr,
               tls_cert != NULL ? "https" : "http");
    if (cfg.port_file[0] != '\0' && write_port_file(cfg.port_file, http_port(srv)) != 0) {
        log_printf(log, NS_LOG_ERROR, "start-failed", "port_file=%s error=%s",
                   logfmt_quote(db, sizeof db, cfg.port_file),
                   logfmt_quote(quoted, sizeof quoted, strerror(errno)));
        http_stop(srv, 0);
        srv = NULL;
        goto fail;
    }

    /* A signal during start-up: stop now (the guard said so). Else wait for one. */
    int64_t stop_ns = 0;
    sig = start_guard_end(&guard, &stop_ns);
    if (sig == 0) {
        /* sigwait fails only for a bad set; then shut down rather than spin. */
        if (sigwait(&stop, &sig) != 0)
            sig = 0;
        stop_ns = model_mono_ns();
        log_printf(log, NS_LOG_INFO, "stopping", "signal=%s",
                   sig == SIGTERM ? "TERM" : sig == SIGINT ? "INT" : "other");
    }

    /*
     * One budget of --shutdown-timeout for the whole stop, from the signal
     * (during start-up, what start-up left of it): requests in flight get
     * half of what is left, and the engine's flush ends with
     * the budget; if the database will not take the rest, the spill to the
     * sidecar (begun as soon as the flush stalls) ends 0.5 s after it, so
     * the process is gone within the budget plus 1 s.
     */
    engine_drain_since(e, stop_ns); /* and /readyz says so while in-flight requests finish */
    double left = cfg.shutdown_timeout - (double)(model_mono_ns() - stop_ns) / 1e9;
    http_stop(srv, left > 0 ? left / 2 : 0);
    engine_close_counted(e, &closing);
    api_free(a);
    /* A script that waits for the file must not read this process's port once it is gone. */
    if (cfg.port_file[0] != '\0')
        unlink(cfg.port_file);
    log_printf(log, NS_LOG_INFO, "stopped", "flushed=%llu spilled=%zu unflushed=%zu",
               (unsigned long long)closing.flushed, closing.spilled, closing.lost);
    status = closing.lost == 0 ? 0 : 1;
    goto out;

fail:
    /* First: a failed start's close must not be cut short by the guard's _exit(0). */
    start_guard_end(&guard, NULL);
    config_clear_secrets(&cfg);
    if (a != NULL)
        api_free(a);
    if (e != NULL)
        engine_close(e);
    status = 1;
out:
    free_pem(tls_cert, tls_cert_len);
    free_pem(tls_key, tls_key_len);
    log_free(log);
    return status;
}
