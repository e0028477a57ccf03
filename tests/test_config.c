/* Unit tests of server/config: defaults, flags, environment, errors, help. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

/* Every option of spec.md "Service" with its variable: the test's own list. */
static const char *const option_names[][2] = {
    {"--listen", "NODESTATE_LISTEN"},
    {"--db", "NODESTATE_DB"},
    {"--batch-size", "NODESTATE_BATCH_SIZE"},
    {"--batch-interval", "NODESTATE_BATCH_INTERVAL"},
    {"--queue-capacity", "NODESTATE_QUEUE_CAPACITY"},
    {"--cache-max-nodes", "NODESTATE_CACHE_MAX_NODES"},
    {"--shutdown-timeout", "NODESTATE_SHUTDOWN_TIMEOUT"},
    {"--synchronous", "NODESTATE_SYNCHRONOUS"},
    {"--threads", "NODESTATE_THREADS"},
    {"--max-body-bytes", "NODESTATE_MAX_BODY_BYTES"},
    {"--max-error-bytes", "NODESTATE_MAX_ERROR_BYTES"},
    {"--max-connections", "NODESTATE_MAX_CONNECTIONS"},
    {"--connection-timeout", "NODESTATE_CONNECTION_TIMEOUT"},
    {"--max-wait", "NODESTATE_MAX_WAIT"},
    {"--log-level", "NODESTATE_LOG_LEVEL"},
    {"--token", "NODESTATE_TOKEN"},
    {"--token-file", "NODESTATE_TOKEN_FILE"},
    {"--access-log", "NODESTATE_ACCESS_LOG"},
    {"--queue-max-bytes", "NODESTATE_QUEUE_MAX_BYTES"},
    {"--cache-max-bytes", "NODESTATE_CACHE_MAX_BYTES"},
    {"--max-connections-per-ip", "NODESTATE_MAX_CONNECTIONS_PER_IP"},
    {"--header-timeout", "NODESTATE_HEADER_TIMEOUT"},
    {"--port-file", "NODESTATE_PORT_FILE"},
    {"--tls-cert", "NODESTATE_TLS_CERT"},
    {"--tls-key", "NODESTATE_TLS_KEY"},
    {"--max-backups", "NODESTATE_MAX_BACKUPS"},
    {"--retention", "NODESTATE_RETENTION"},
    {"--retention-interval", "NODESTATE_RETENTION_INTERVAL"},
    {"--max-batch-updates", "NODESTATE_MAX_BATCH_UPDATES"},
    {"--max-batch-body-bytes", "NODESTATE_MAX_BATCH_BODY_BYTES"},
    {"--group-commit-delay", "NODESTATE_GROUP_COMMIT_DELAY"},
};
#define N_OPTIONS (sizeof option_names / sizeof option_names[0])

/*
 * A token file for the cases that need one, made fresh in each test's
 * process (Criterion forks one per test) so parallel runs never share it.
 */
static char token_dir[64];
static char token_path[128];
#define FILE_TOKEN "filetoken"

/* Writes text (len bytes) to path, replacing it. */
static void write_file(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "w");

    cr_assert_not_null(f, "%s: %s", path, strerror(errno));
    cr_assert_eq(fwrite(text, 1, len, f), len);
    cr_assert_eq(fclose(f), 0);
}

/* The test process may inherit NODESTATE_* from whoever runs it. */
static void clear_env(void)
{
    for (size_t i = 0; i < N_OPTIONS; i++)
        unsetenv(option_names[i][1]);
}

static void setup(void)
{
    clear_env();
    snprintf(token_dir, sizeof token_dir, "/tmp/nodestate-test-config-XXXXXX");
    cr_assert_not_null(mkdtemp(token_dir), "mkdtemp: %s", strerror(errno));
    snprintf(token_path, sizeof token_path, "%s/token", token_dir);
    write_file(token_path, FILE_TOKEN "\n", strlen(FILE_TOKEN "\n"));
}

static void teardown(void)
{
    unlink(token_path);
    rmdir(token_dir);
}

TestSuite(config, .init = setup, .fini = teardown);

typedef struct run {
    config_outcome outcome;
    config c;
    char err[512];
    char out[16384];
} run;

/* Parses argv (NULL-terminated, without the program name) with getenv. */
static run *parse(const char *const *args)
{
    static run r;  /* one parse at a time per test process */
    char *argv[64];
    int argc = 0;
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);

    cr_assert_not_null(out);
    argv[argc++] = "nodestate";
    for (; *args != NULL; args++) {
        cr_assert_lt(argc, 63);
        argv[argc++] = (char *)*args;
    }
    argv[argc] = NULL;
    memset(&r, 0, sizeof r);
    r.outcome = config_parse(&r.c, argc, argv, getenv, out, r.err, sizeof r.err);
    cr_assert_eq(fclose(out), 0);
    snprintf(r.out, sizeof r.out, "%s", buf ? buf : "");
    free(buf);
    return &r;
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})
#define NO_ARGS ((const char *const[]){NULL})

static void assert_same(const config *got, const config *want, const char *what)
{
    cr_assert_str_eq(got->listen_host, want->listen_host, "%s: listen host", what);
    cr_assert_eq(got->listen_port, want->listen_port, "%s: listen port", what);
    cr_assert_str_eq(got->db_path, want->db_path, "%s: db", what);
    cr_assert_eq(got->batch_size, want->batch_size, "%s: batch_size", what);
    cr_assert_eq(got->batch_interval, want->batch_interval, "%s: batch_interval", what);
    cr_assert_eq(got->queue_capacity, want->queue_capacity, "%s: queue_capacity", what);
    cr_assert_eq(got->shutdown_timeout, want->shutdown_timeout, "%s: shutdown_timeout", what);
    cr_assert_eq(got->synchronous_full, want->synchronous_full, "%s: synchronous", what);
    cr_assert_eq(got->threads, want->threads, "%s: threads", what);
    cr_assert_eq(got->max_body_bytes, want->max_body_bytes, "%s: max_body_bytes", what);
    cr_assert_eq(got->max_error_bytes, want->max_error_bytes, "%s: max_error_bytes", what);
    cr_assert_eq(got->max_batch_updates, want->max_batch_updates, "%s: max_batch_updates", what);
    cr_assert_eq(got->max_batch_body_bytes, want->max_batch_body_bytes,
                 "%s: max_batch_body_bytes", what);
    cr_assert_eq(got->cache_max_nodes, want->cache_max_nodes, "%s: cache_max_nodes", what);
    cr_assert_eq(got->max_connections, want->max_connections, "%s: max_connections", what);
    cr_assert_eq(got->connection_timeout, want->connection_timeout, "%s: connection_timeout", what);
    cr_assert_eq(got->max_wait, want->max_wait, "%s: max_wait", what);
    cr_assert_eq(got->log_level, want->log_level, "%s: log_level", what);
    cr_assert_str_eq(got->token, want->token, "%s: token", what);
    cr_assert_str_eq(got->token_file, want->token_file, "%s: token_file", what);
    cr_assert_eq(got->access_log, want->access_log, "%s: access_log", what);
    cr_assert_eq(got->queue_max_bytes, want->queue_max_bytes, "%s: queue_max_bytes", what);
    cr_assert_eq(got->cache_max_bytes, want->cache_max_bytes, "%s: cache_max_bytes", what);
    cr_assert_eq(got->max_connections_per_ip, want->max_connections_per_ip,
                 "%s: max_connections_per_ip", what);
    cr_assert_eq(got->header_timeout, want->header_timeout, "%s: header_timeout", what);
    cr_assert_eq(got->group_commit_delay, want->group_commit_delay, "%s: group_commit_delay",
                 what);
    cr_assert_str_eq(got->port_file, want->port_file, "%s: port_file", what);
    cr_assert_str_eq(got->tls_cert, want->tls_cert, "%s: tls_cert", what);
    cr_assert_str_eq(got->tls_key, want->tls_key, "%s: tls_key", what);
    cr_assert_eq(got->max_backups, want->max_backups, "%s: max_backups", what);
    cr_assert_eq(got->retention, want->retention, "%s: retention", what);
    cr_assert_eq(got->retention_interval, want->retention_interval, "%s: retention_interval",
                 what);
}

/* The defaults written out by hand, independent of config.c's table. */
static void want_defaults(config *c)
{
    memset(c, 0, sizeof *c);
    strcpy(c->listen_host, "127.0.0.1");
    c->listen_port = 8080;
    strcpy(c->db_path, "./nodestate.db");
    c->batch_size = 8192;
    c->batch_interval = 0.1;
    c->queue_capacity = 262144;
    c->shutdown_timeout = 10;
    c->synchronous_full = false;
    c->threads = 0;
    c->max_body_bytes = 1048576;
    c->max_error_bytes = 65536;
    c->cache_max_nodes = 1000000;
    c->max_connections = 1024;
    c->connection_timeout = 60;
    c->max_wait = 60;
    c->log_level = NS_LOG_INFO;
    c->queue_max_bytes = 128u << 20;
    c->cache_max_bytes = 256u << 20;
    c->max_connections_per_ip = 256;
    c->header_timeout = 10;
    c->max_backups = 1;
    /* token, token_file, port_file, tls_cert and tls_key "", access_log
     * false: the memset. */
    c->retention = 0;
    c->retention_interval = 60;
    c->max_batch_updates = 10000;
    c->max_batch_body_bytes = 16u << 20;
    c->group_commit_delay = 0;
}

Test(config, defaults)
{
    config c, want;

    want_defaults(&want);
    config_defaults(&c);
    assert_same(&c, &want, "config_defaults");

    run *r = parse(NO_ARGS);
    cr_assert_eq(r->outcome, CONFIG_RUN, "err: %s", r->err);
    assert_same(&r->c, &want, "no arguments");
    cr_assert_str_eq(r->out, "", "nothing printed on a normal start");
}

/* One non-default value per option and what it must set. */
typedef struct option_case {
    const char *flag;
    const char *env;
    const char *value;         /* NULL: the token file's path */
    void (*expect)(config *c);
    bool alone;                /* an on/off flag: "--flag" stands alone */
    bool not_with_token;       /* excludes --token (so skipped in "all together") */
} option_case;

static const char *case_value(const option_case *k)
{
    return k->value != NULL ? k->value : token_path;
}

static void x_listen(config *c) { strcpy(c->listen_host, "0.0.0.0"); c->listen_port = 9090; }
static void x_db(config *c) { strcpy(c->db_path, "/tmp/some dir/state.db"); }
static void x_batch_size(config *c) { c->batch_size = 1000000; }
static void x_batch_interval(config *c) { c->batch_interval = 0.25; }
static void x_queue_capacity(config *c) { c->queue_capacity = 1; }
static void x_shutdown_timeout(config *c) { c->shutdown_timeout = 2.5; }
static void x_synchronous(config *c) { c->synchronous_full = true; }
static void x_threads(config *c) { c->threads = 256; }
static void x_max_body_bytes(config *c) { c->max_body_bytes = 1073741824; }
static void x_max_connections(config *c) { c->max_connections = 7; }
static void x_max_error_bytes(config *c) { c->max_error_bytes = 10; }
static void x_cache_max_nodes(config *c) { c->cache_max_nodes = 0; }
static void x_connection_timeout(config *c) { c->connection_timeout = 0; }
static void x_max_wait(config *c) { c->max_wait = 0; }
static void x_log_level(config *c) { c->log_level = NS_LOG_DEBUG; }
static void x_token(config *c) { strcpy(c->token, "Tok-en.~+/=123"); }
static void x_token_file(config *c)
{
    strcpy(c->token_file, token_path);
    strcpy(c->token, FILE_TOKEN);
}
static void x_access_log(config *c) { c->access_log = true; }
static void x_queue_max_bytes(config *c) { c->queue_max_bytes = (size_t)3 << 30; }
static void x_cache_max_bytes(config *c) { c->cache_max_bytes = 0; }
static void x_max_connections_per_ip(config *c) { c->max_connections_per_ip = 0; }
static void x_header_timeout(config *c) { c->header_timeout = 2.5; }
static void x_port_file(config *c) { strcpy(c->port_file, "/tmp/ns.port"); }
static void x_tls_cert(config *c) { strcpy(c->tls_cert, "/etc/ns/cert.pem"); }
static void x_tls_key(config *c) { strcpy(c->tls_key, "/etc/ns/key.pem"); }
static void x_max_backups(config *c) { c->max_backups = 64; }
static void x_retention(config *c) { c->retention = 7 * 86400; }
static void x_retention_interval(config *c) { c->retention_interval = 90; }
static void x_max_batch_updates(config *c) { c->max_batch_updates = 1; }
static void x_max_batch_body_bytes(config *c) { c->max_batch_body_bytes = 64u << 20; }
static void x_group_commit_delay(config *c) { c->group_commit_delay = 0.0025; }

static const option_case option_cases[] = {
    {"--listen", "NODESTATE_LISTEN", "0.0.0.0:9090", x_listen, false, false},
    {"--db", "NODESTATE_DB", "/tmp/some dir/state.db", x_db, false, false},
    {"--batch-size", "NODESTATE_BATCH_SIZE", "1000000", x_batch_size, false, false},
    {"--batch-interval", "NODESTATE_BATCH_INTERVAL", "0.25", x_batch_interval, false, false},
    {"--queue-capacity", "NODESTATE_QUEUE_CAPACITY", "1", x_queue_capacity, false, false},
    {"--shutdown-timeout", "NODESTATE_SHUTDOWN_TIMEOUT", "2.5", x_shutdown_timeout, false, false},
    {"--synchronous", "NODESTATE_SYNCHRONOUS", "full", x_synchronous, false, false},
    {"--threads", "NODESTATE_THREADS", "256", x_threads, false, false},
    {"--max-body-bytes", "NODESTATE_MAX_BODY_BYTES", "1073741824", x_max_body_bytes, false, false},
    {"--max-connections", "NODESTATE_MAX_CONNECTIONS", "7", x_max_connections, false, false},
    {"--max-error-bytes", "NODESTATE_MAX_ERROR_BYTES", "10", x_max_error_bytes, false, false},
    {"--cache-max-nodes", "NODESTATE_CACHE_MAX_NODES", "0", x_cache_max_nodes, false, false},
    {"--connection-timeout", "NODESTATE_CONNECTION_TIMEOUT", "0", x_connection_timeout, false, false},
    {"--max-wait", "NODESTATE_MAX_WAIT", "0", x_max_wait, false, false},
    {"--log-level", "NODESTATE_LOG_LEVEL", "debug", x_log_level, false, false},
    {"--token", "NODESTATE_TOKEN", "Tok-en.~+/=123", x_token, false, false},
    {"--token-file", "NODESTATE_TOKEN_FILE", NULL, x_token_file, false, true},
    {"--access-log", "NODESTATE_ACCESS_LOG", "true", x_access_log, true, false},
    {"--queue-max-bytes", "NODESTATE_QUEUE_MAX_BYTES", "3G", x_queue_max_bytes, false, false},
    {"--cache-max-bytes", "NODESTATE_CACHE_MAX_BYTES", "0", x_cache_max_bytes, false, false},
    {"--max-connections-per-ip", "NODESTATE_MAX_CONNECTIONS_PER_IP", "0",
     x_max_connections_per_ip, false, false},
    {"--header-timeout", "NODESTATE_HEADER_TIMEOUT", "2.5", x_header_timeout, false, false},
    {"--group-commit-delay", "NODESTATE_GROUP_COMMIT_DELAY", "0.0025", x_group_commit_delay, false,
     false},
    {"--port-file", "NODESTATE_PORT_FILE", "/tmp/ns.port", x_port_file, false, false},
    {"--tls-cert", "NODESTATE_TLS_CERT", "/etc/ns/cert.pem", x_tls_cert, false, false},
    {"--tls-key", "NODESTATE_TLS_KEY", "/etc/ns/key.pem", x_tls_key, false, false},
    {"--max-backups", "NODESTATE_MAX_BACKUPS", "64", x_max_backups, false, false},
    {"--retention", "NODESTATE_RETENTION", "7d", x_retention, false, false},
    {"--retention-interval", "NODESTATE_RETENTION_INTERVAL", "1.5m", x_retention_interval, false,
     false},
    {"--max-batch-updates", "NODESTATE_MAX_BATCH_UPDATES", "1", x_max_batch_updates, false, false},
    {"--max-batch-body-bytes", "NODESTATE_MAX_BATCH_BODY_BYTES", "64M", x_max_batch_body_bytes,
     false, false},
};
#define N_CASES (sizeof option_cases / sizeof option_cases[0])

Test(config, every_option_from_flag)
{
    cr_assert_eq(N_CASES, N_OPTIONS, "a case per option");
    for (size_t i = 0; i < N_CASES; i++) {
        const option_case *k = &option_cases[i];
        config want;
        run *r = k->alone ? parse(ARGS(k->flag)) : parse(ARGS(k->flag, case_value(k)));

        cr_assert_eq(r->outcome, CONFIG_RUN, "%s: %s", k->flag, r->err);
        want_defaults(&want);
        k->expect(&want);
        assert_same(&r->c, &want, k->flag);
    }
}

Test(config, every_option_from_flag_with_equals)
{
    for (size_t i = 0; i < N_CASES; i++) {
        const option_case *k = &option_cases[i];
        char arg[256];
        config want;

        snprintf(arg, sizeof arg, "%s=%s", k->flag, case_value(k));
        run *r = parse(ARGS(arg));
        cr_assert_eq(r->outcome, CONFIG_RUN, "%s: %s", arg, r->err);
        want_defaults(&want);
        k->expect(&want);
        assert_same(&r->c, &want, arg);
    }
}

Test(config, every_option_from_env)
{
    for (size_t i = 0; i < N_CASES; i++) {
        const option_case *k = &option_cases[i];
        config want;

        clear_env();
        cr_assert_eq(setenv(k->env, case_value(k), 1), 0);
        run *r = parse(NO_ARGS);
        cr_assert_eq(r->outcome, CONFIG_RUN, "%s: %s", k->env, r->err);
        want_defaults(&want);
        k->expect(&want);
        assert_same(&r->c, &want, k->env);
    }
}

Test(config, all_options_together)
{
    const char *args[2 * N_CASES + 1];
    size_t n = 0;
    config want;

    want_defaults(&want);
    for (size_t i = 0; i < N_CASES; i++) {
        if (option_cases[i].not_with_token)
            continue;
        args[n++] = option_cases[i].flag;
        if (!option_cases[i].alone)
            args[n++] = case_value(&option_cases[i]);
        option_cases[i].expect(&want);
    }
    args[n] = NULL;
    run *r = parse(args);
    cr_assert_eq(r->outcome, CONFIG_RUN, "%s", r->err);
    assert_same(&r->c, &want, "all flags");
}

Test(config, flag_beats_env)
{
    cr_assert_eq(setenv("NODESTATE_BATCH_SIZE", "100", 1), 0);
    cr_assert_eq(setenv("NODESTATE_DB", "/env.db", 1), 0);
    run *r = parse(ARGS("--batch-size", "200"));
    cr_assert_eq(r->outcome, CONFIG_RUN, "%s", r->err);
    cr_assert_eq(r->c.batch_size, 200);
    cr_assert_str_eq(r->c.db_path, "/env.db", "env applies where no flag is given");

    r = parse(ARGS("--batch-size=300"));
    cr_assert_eq(r->c.batch_size, 300);
}

Test(config, overridden_bad_env_is_not_judged)
{
    cr_assert_eq(setenv("NODESTATE_BATCH_SIZE", "abc", 1), 0);
    run *r = parse(ARGS("--batch-size", "5"));
    cr_assert_eq(r->outcome, CONFIG_RUN, "%s", r->err);
    cr_assert_eq(r->c.batch_size, 5);

    r = parse(NO_ARGS);
    cr_assert_eq(r->outcome, CONFIG_ERROR);
}

Test(config, empty_env_means_unset)
{
    cr_assert_eq(setenv("NODESTATE_LISTEN", "", 1), 0);
    run *r = parse(NO_ARGS);
    cr_assert_eq(r->outcome, CONFIG_RUN, "%s", r->err);
    cr_assert_eq(r->c.listen_port, 8080);
}

Test(config, last_flag_wins)
{
    run *r = parse(ARGS("--threads", "3", "--threads=4"));
    cr_assert_eq(r->outcome, CONFIG_RUN, "%s", r->err);
    cr_assert_eq(r->c.threads, 4);
}

Test(config, listen_forms)
{
    run *r = parse(ARGS("--listen", "[::1]:0"));
    cr_assert_eq(r->outcome, CONFIG_RUN, "%s", r->err);
    cr_assert_str_eq(r->c.listen_host, "::1", "brackets are not part of the host");
    cr_assert_eq(r->c.listen_port, 0);

    r = parse(ARGS("--listen=[2001:db8::7]:65535"));
    cr_assert_eq(r->outcome, CONFIG_RUN, "%s", r->err);
    cr_assert_str_eq(r->c.listen_host, "2001:db8::7");
    cr_assert_eq(r->c.listen_port, 65535);

    r = parse(ARGS("--listen", "localhost:80"));
    cr_assert_eq(r->outcome, CONFIG_RUN, "%s", r->err);
    cr_assert_str_eq(r->c.listen_host, "localhost");
    cr_assert_eq(r->c.listen_port, 80);

    cr_assert_eq(setenv("NODESTATE_LISTEN", "[::]:8081", 1), 0);
    r = parse(NO_ARGS);
    cr_assert_eq(r->outcome, CONFIG_RUN, "%s", r->err);
    cr_assert_str_eq(r->c.listen_host, "::");
    cr_assert_eq(r->c.listen_port, 8081);
}

Test(config, exact_error_text)
{
    cr_assert_eq(setenv("NODESTATE_BATCH_SIZE", "abc", 1), 0);
    run *r = parse(NO_ARGS);
    cr_assert_eq(r->outcome, CONFIG_ERROR);
    cr_assert_str_eq(r->err,
                     "--batch-size: \"abc\" is not a whole number (from NODESTATE_BATCH_SIZE)");
}

/* A bad value for an option and the class of problem it stands for. */
typedef struct bad_case {
    const char *option;  /* without "--" */
    const char *value;
    const char *why;
} bad_case;

static const bad_case bad_cases[] = {
    {"batch-size", "abc", "not a number"},
    {"batch-size", "12x", "trailing garbage"},
    {"batch-size", "-1", "negative"},
    {"batch-size", "+5", "signed"},
    {"batch-size", " 5", "leading blank"},
    {"batch-size", "", "empty"},
    {"batch-size", "0", "below range"},
    {"batch-size", "1000001", "above range"},
    {"batch-size", "99999999999999999999999", "overflows 64 bits"},
    {"batch-size", "1.5", "fraction"},
    {"queue-capacity", "0", "below range"},
    {"threads", "257", "above range"},
    {"threads", "-0", "signed"},
    {"max-body-bytes", "0", "below range"},
    {"max-body-bytes", "1073741825", "above 1 GiB"},
    {"max-body-bytes", "2G", "above 1 GiB with a suffix"},
    {"max-body-bytes", "1T", "unknown suffix"},
    {"max-body-bytes", "K", "a suffix alone"},
    {"max-body-bytes", "1.5M", "fraction with a suffix"},
    {"max-body-bytes", "-1K", "negative with a suffix"},
    {"queue-max-bytes", "99999999999G", "overflows 64 bits after the suffix"},
    {"queue-max-bytes", "1K", "below 1 MiB"},
    {"header-timeout", "3601", "above an hour"},
    {"port-file", "", "empty"},
    {"tls-cert", "", "empty"},
    {"tls-key", "", "empty"},
    {"max-backups", "0", "below range"},
    {"max-backups", "65", "above range"},
    {"max-connections", "0", "below range"},
    {"max-batch-updates", "0", "below range"},
    {"max-batch-updates", "1000001", "above range"},
    {"max-batch-body-bytes", "0", "below range"},
    {"max-batch-body-bytes", "2G", "above 1 GiB with a suffix"},
    {"connection-timeout", "1.5", "not whole seconds"},
    {"batch-interval", "61", "above 60"},
    {"batch-interval", "-0.1", "negative"},
    {"batch-interval", "nan", "not finite"},
    {"batch-interval", "inf", "not finite"},
    {"batch-interval", "1e999", "overflows to infinity"},
    {"batch-interval", "0x10", "hex"},
    {"batch-interval", "0.1s", "trailing garbage"},
    {"batch-interval", "", "empty"},
    {"group-commit-delay", "61", "above 60"},
    {"group-commit-delay", "-0.001", "negative"},
    {"group-commit-delay", "1ms", "trailing garbage"},
    {"shutdown-timeout", "-1", "negative"},
    {"shutdown-timeout", "abc", "not a number"},
    {"max-wait", "infinity", "not finite"},
    {"max-wait", "1e300", "absurdly large"},
    {"listen", "127.0.0.1", "no port"},
    {"listen", "127.0.0.1:", "empty port"},
    {"listen", "127.0.0.1:65536", "port too large"},
    {"listen", "127.0.0.1:-1", "negative port"},
    {"listen", "127.0.0.1:http", "port not a number"},
    {"listen", ":8080", "empty host"},
    {"listen", "::1:8080", "IPv6 without brackets"},
    {"listen", "[::1:8080", "missing ]"},
    {"listen", "[::1]8080", "missing : after ]"},
    {"listen", "[127.0.0.1]:80", "IPv4 in brackets"},
    {"listen", "[]:80", "empty IPv6"},
    {"listen", "example.com:80", "a name, not an address"},
    {"listen", "300.1.1.1:80", "not an IPv4 address"},
    {"db", "", "empty"},
    {"synchronous", "off", "not normal|full"},
    {"synchronous", "", "empty"},
    {"log-level", "verbose", "not a level"},
    {"log-level", "", "empty"},
    {"token", "", "empty"},
    {"token", "two words", "a blank"},
    {"token", "tab\there", "a control character"},
    {"token", "caf\xc3\xa9", "not ASCII"},
    {"token-file", "", "empty path"},
    {"token-file", "/nonexistent-dir/token", "no such file"},
    {"token-file", "/", "a directory"},
    {"access-log", "maybe", "not a boolean"},
    {"access-log", "2", "not a boolean"},
    {"access-log", "", "empty"},
    {"retention", "7w", "unknown unit"},
    {"retention", "d", "a unit alone"},
    {"retention", "-1d", "negative"},
    {"retention", "1dd", "two units"},
    {"retention", "5ms", "milliseconds are not a unit"},
    {"retention", "1 d", "a blank before the unit"},
    {"retention", "3651d", "above ten years"},
    {"retention", "nand", "not finite"},
    {"retention", "0x10s", "hex"},
    {"retention", "never", "not a duration"},
    {"retention", "", "empty"},
    {"retention-interval", "1y", "unknown unit"},
};

Test(config, bad_values_from_flag)
{
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *b = &bad_cases[i];
        char arg[256], name[64];

        snprintf(arg, sizeof arg, "--%s=%s", b->option, b->value);
        snprintf(name, sizeof name, "--%s", b->option);
        run *r = parse(ARGS(arg));
        cr_assert_eq(r->outcome, CONFIG_ERROR, "%s (%s) accepted", arg, b->why);
        cr_assert_not_null(strstr(r->err, name), "%s: err \"%s\" names no option",
                           arg, r->err);
        cr_assert_not_null(strstr(r->err, "command line"),
                           "%s: err \"%s\" names no source", arg, r->err);
    }
}

Test(config, bad_values_from_env)
{
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *b = &bad_cases[i];
        char env[64], name[64];

        if (b->value[0] == '\0')
            continue;  /* an empty variable is taken as unset */
        snprintf(name, sizeof name, "--%s", b->option);
        snprintf(env, sizeof env, "NODESTATE_");
        for (const char *p = b->option; *p; p++) {
            size_t n = strlen(env);
            env[n] = *p == '-' ? '_' : (char)(*p - 'a' + 'A');
            env[n + 1] = '\0';
        }
        clear_env();
        cr_assert_eq(setenv(env, b->value, 1), 0);
        run *r = parse(NO_ARGS);
        cr_assert_eq(r->outcome, CONFIG_ERROR, "%s=%s (%s) accepted", env,
                     b->value, b->why);
        cr_assert_not_null(strstr(r->err, name), "err \"%s\" names no option", r->err);
        cr_assert_not_null(strstr(r->err, env), "err \"%s\" names no variable", r->err);
    }
}

Test(config, unknown_flags_and_arguments)
{
    run *r = parse(ARGS("--nope", "1"));
    cr_assert_eq(r->outcome, CONFIG_ERROR);
    cr_assert_not_null(strstr(r->err, "--nope"), "%s", r->err);

    r = parse(ARGS("--nope=1"));
    cr_assert_eq(r->outcome, CONFIG_ERROR);
    cr_assert_not_null(strstr(r->err, "--nope"), "%s", r->err);

    r = parse(ARGS("-b", "5"));
    cr_assert_eq(r->outcome, CONFIG_ERROR);

    r = parse(ARGS("stray"));
    cr_assert_eq(r->outcome, CONFIG_ERROR);
    cr_assert_not_null(strstr(r->err, "stray"), "%s", r->err);

    /* A prefix of a real option is not that option. */
    r = parse(ARGS("--batch", "5"));
    cr_assert_eq(r->outcome, CONFIG_ERROR);
}

Test(config, missing_value)
{
    run *r = parse(ARGS("--db"));
    cr_assert_eq(r->outcome, CONFIG_ERROR);
    cr_assert_not_null(strstr(r->err, "--db"), "%s", r->err);

    r = parse(ARGS("--db", "--batch-size", "5"));
    cr_assert_eq(r->outcome, CONFIG_ERROR, "a flag is not taken as a value");
    cr_assert_not_null(strstr(r->err, "--db"), "%s", r->err);
}

Test(config, help_lists_every_option)
{
    run *r = parse(ARGS("--help"));
    cr_assert_eq(r->outcome, CONFIG_EXIT_OK);
    for (size_t i = 0; i < N_OPTIONS; i++) {
        char flag[64];
        /* Followed by a blank, so "--db" is not found inside another name. */
        snprintf(flag, sizeof flag, "%s ", option_names[i][0]);
        cr_assert_not_null(strstr(r->out, flag), "help lacks %s", flag);
        cr_assert_not_null(strstr(r->out, option_names[i][1]), "help lacks %s",
                           option_names[i][1]);
    }
    const char *defaults[] = {"127.0.0.1:8080", "./nodestate.db", "8192", "0.1",
                              "262144", "1M", "64K", "128M", "256M", "1024", "normal", "info"};
    for (size_t i = 0; i < sizeof defaults / sizeof defaults[0]; i++)
        cr_assert_not_null(strstr(r->out, defaults[i]), "help lacks default %s",
                           defaults[i]);
    cr_assert_not_null(strstr(r->out, "--version"));

    r = parse(ARGS("-h"));
    cr_assert_eq(r->outcome, CONFIG_EXIT_OK);
    cr_assert_not_null(strstr(r->out, "--listen"));
}

Test(config, help_despite_bad_env)
{
    cr_assert_eq(setenv("NODESTATE_THREADS", "many", 1), 0);
    run *r = parse(ARGS("--help"));
    cr_assert_eq(r->outcome, CONFIG_EXIT_OK);
    cr_assert_not_null(strstr(r->out, "NODESTATE_THREADS"));
}

Test(config, version)
{
    run *r = parse(ARGS("--version"));
    cr_assert_eq(r->outcome, CONFIG_EXIT_OK);
    cr_assert_str_eq(r->out, "nodestate " NODESTATE_VERSION "\n");
}

Test(config, format_lists_every_setting)
{
    config c;
    char buf[8192];

    config_defaults(&c);
    strcpy(c.db_path, "/a b/x.db");
    strcpy(c.listen_host, "::1");
    c.threads = 2;
    config_format(&c, buf, sizeof buf);
    const char *want[] = {"listen=[::1]:8080", "db=\"/a b/x.db\"", "batch_size=8192",
                          "batch_interval=0.1", "queue_capacity=262144",
                          "shutdown_timeout=10", "synchronous=normal", "threads=2",
                          "max_body_bytes=1048576", "max_connections=1024",
                          "queue_max_bytes=134217728", "header_timeout=10", "port_file=\"\"",
                          "group_commit_delay=0",
                          "connection_timeout=60", "max_wait=60", "log_level=info",
                          "token=unset", "token_file=\"\"", "access_log=false",
                          "tls_cert=\"\"", "tls_key=\"\"", "max_backups=1",
                          "retention=0s", "retention_interval=60s"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_assert_not_null(strstr(buf, want[i]), "\"%s\" lacks %s", buf, want[i]);

    /* Truncation stays inside the buffer. */
    char small[16];
    memset(small, 'x', sizeof small);
    config_format(&c, small, sizeof small);
    cr_assert_lt(strlen(small), sizeof small);
}

/* ---- the token, the token file and the access log ------------------------ */

Test(config, token_file_content)
{
    static const struct {
        const char *content;
        size_t len;
        const char *token;
    } cases[] = {
        {"abc", 3, "abc"},
        {"abc\n", 4, "abc"},
        {"abc\r\n", 5, "abc"},
        {"abc\n\n", 5, "abc"},
        {"a.b-c_d~e+f/g=", 14, "a.b-c_d~e+f/g="},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_file(token_path, cases[i].content, cases[i].len);
        run *r = parse(ARGS("--token-file", token_path));
        cr_assert_eq(r->outcome, CONFIG_RUN, "case %zu: %s", i, r->err);
        cr_assert_str_eq(r->c.token, cases[i].token, "case %zu", i);
        cr_assert_str_eq(r->c.token_file, token_path);
    }

    /* The longest token fits, with its newline; one byte more does not. */
    config c;
    char big[sizeof c.token + 2];
    memset(big, 'a', sizeof big);
    big[sizeof c.token - 1] = '\n';
    write_file(token_path, big, sizeof c.token);
    run *r = parse(ARGS("--token-file", token_path));
    cr_assert_eq(r->outcome, CONFIG_RUN, "%s", r->err);
    cr_assert_eq(strlen(r->c.token), sizeof c.token - 1);

    write_file(token_path, big, sizeof c.token - 1);
    big[sizeof c.token - 1] = 'a';
    write_file(token_path, big, sizeof c.token);
    r = parse(ARGS("--token-file", token_path));
    cr_assert_eq(r->outcome, CONFIG_ERROR);
    cr_assert_not_null(strstr(r->err, "longer"), "%s", r->err);
}

Test(config, token_file_problems_name_option_and_path)
{
    static const struct {
        const char *content;
        size_t len;
        const char *why;
    } cases[] = {
        {"", 0, "empty"},
        {"\n", 1, "empty"},
        {"\r\n\n", 3, "empty"},
        {"filetoken\nsecond\n", 17, "visible ASCII"},
        {"file token\n", 11, "visible ASCII"},
        {"file\0token\n", 11, "NUL"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_file(token_path, cases[i].content, cases[i].len);
        run *r = parse(ARGS("--token-file", token_path));
        cr_assert_eq(r->outcome, CONFIG_ERROR, "case %zu accepted", i);
        cr_assert_not_null(strstr(r->err, "--token-file"), "%s", r->err);
        cr_assert_not_null(strstr(r->err, token_path), "%s", r->err);
        cr_assert_not_null(strstr(r->err, cases[i].why), "case %zu: %s", i, r->err);
        cr_assert_null(strstr(r->err, "token\n"), "%s", r->err);
        cr_assert_null(strstr(r->err, "second"), "content echoed: %s", r->err);
        cr_assert_null(strstr(r->err, "file token"), "content echoed: %s", r->err);
    }

    char missing[256];
    snprintf(missing, sizeof missing, "%s/missing", token_dir);
    cr_assert_eq(setenv("NODESTATE_TOKEN_FILE", missing, 1), 0);
    run *r = parse(NO_ARGS);
    cr_assert_eq(r->outcome, CONFIG_ERROR);
    cr_assert_not_null(strstr(r->err, "--token-file"), "%s", r->err);
    cr_assert_not_null(strstr(r->err, "NODESTATE_TOKEN_FILE"), "%s", r->err);
    cr_assert_not_null(strstr(r->err, missing), "%s", r->err);
    cr_assert_not_null(strstr(r->err, strerror(ENOENT)), "%s", r->err);
}

/* --port-file never names the database or its files: the port over the database destroyed it. */
Test(config, port_file_is_not_the_databases_file)
{
    static const char *const clash[] = { "x.db", "x.db-wal", "x.db-shm", "x.db.lock",
                                         "x.db.spill", "side.spill" };
    for (size_t i = 0; i < sizeof clash / sizeof *clash; i++) {
        run *r = parse(ARGS("--db", "x.db", "--spill-path", "side.spill", "--port-file",
                            clash[i]));
        cr_assert_eq(r->outcome, CONFIG_ERROR, "%s", clash[i]);
        cr_assert_not_null(strstr(r->err, "--port-file"), "%s", r->err);
    }
    run *r = parse(ARGS("--db", "x.db", "--port-file", "x.db.port"));
    cr_assert_eq(r->outcome, CONFIG_RUN, "%s", r->err);
    /* Another name of the same file. */
    char other[160];
    snprintf(other, sizeof other, "%s.link", token_path);
    cr_assert_eq(link(token_path, other), 0, "%s", strerror(errno));
    r = parse(ARGS("--db", token_path, "--port-file", other));
    cr_assert_eq(r->outcome, CONFIG_ERROR, "a hard link to the database");
    unlink(other);
}

Test(config, token_and_token_file_exclude_each_other)
{
    /* Every mix of sources: which should win is a guess, so neither does. */
    run *r = parse(ARGS("--token", "flagtoken", "--token-file", token_path));
    cr_assert_eq(r->outcome, CONFIG_ERROR);
    cr_assert_str_eq(r->err,
                     "--token and --token-file: give only one of them (the token "
                     "from the command line, the file from the command line)");

    cr_assert_eq(setenv("NODESTATE_TOKEN", "envtoken", 1), 0);
    r = parse(ARGS("--token-file", token_path));
    cr_assert_eq(r->outcome, CONFIG_ERROR);
    cr_assert_not_null(strstr(r->err, "NODESTATE_TOKEN"), "%s", r->err);

    cr_assert_eq(setenv("NODESTATE_TOKEN_FILE", token_path, 1), 0);
    r = parse(NO_ARGS);
    cr_assert_eq(r->outcome, CONFIG_ERROR);
    cr_assert_not_null(strstr(r->err, "NODESTATE_TOKEN_FILE"), "%s", r->err);
    cr_assert_null(strstr(r->err, "envtoken"), "token echoed: %s", r->err);

    /* One of them alone is fine. */
    unsetenv("NODESTATE_TOKEN");
    r = parse(NO_ARGS);
    cr_assert_eq(r->outcome, CONFIG_RUN, "%s", r->err);
    cr_assert_str_eq(r->c.token, FILE_TOKEN);
}

Test(config, token_errors_never_echo_it)
{
    static const char *const bad[] = {"--token=my secret", "--token=my\tsecret",
                                      "--token=mysecret\xc3\xa9"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        run *r = parse(ARGS(bad[i]));
        cr_assert_eq(r->outcome, CONFIG_ERROR, "%s accepted", bad[i]);
        cr_assert_not_null(strstr(r->err, "--token"), "%s", r->err);
        cr_assert_null(strstr(r->err, "secret"), "token echoed: %s", r->err);
    }

    config c;
    char longtok[sizeof c.token + 16];
    memset(longtok, 's', sizeof longtok - 1);
    longtok[sizeof longtok - 1] = '\0';
    cr_assert_eq(setenv("NODESTATE_TOKEN", longtok, 1), 0);
    run *r = parse(NO_ARGS);
    cr_assert_eq(r->outcome, CONFIG_ERROR);
    cr_assert_not_null(strstr(r->err, "longer"), "%s", r->err);
    cr_assert_null(strstr(r->err, "ssss"), "token echoed: %s", r->err);
}

Test(config, help_shows_no_token)
{
    cr_assert_eq(setenv("NODESTATE_TOKEN", "envsecret", 1), 0);
    run *r = parse(ARGS("--token", "flagsecret", "--help"));
    cr_assert_eq(r->outcome, CONFIG_EXIT_OK);
    cr_assert_null(strstr(r->out, "secret"), "help shows the token:\n%s", r->out);

    /* The token's row ends after the variable's name: no default column. */
    const char *row = strstr(r->out, "--token TOKEN");
    cr_assert_not_null(row, "%s", r->out);
    const char *eol = strchr(row, '\n');
    cr_assert_not_null(eol);
    const char *var = strstr(row, "NODESTATE_TOKEN");
    cr_assert(var != NULL && var < eol, "row: %.*s", (int)(eol - row), row);
    cr_assert_eq(var + strlen("NODESTATE_TOKEN"), eol, "row: %.*s",
                 (int)(eol - row), row);
}

Test(config, format_redacts_the_token)
{
    run *r = parse(ARGS("--token", "flagsecret", "--access-log"));
    char buf[16384];

    cr_assert_eq(r->outcome, CONFIG_RUN, "%s", r->err);
    config_format(&r->c, buf, sizeof buf);
    cr_assert_null(strstr(buf, "secret"), "%s", buf);
    cr_assert_not_null(strstr(buf, " token=set"), "%s", buf);
    cr_assert_not_null(strstr(buf, " access_log=true"), "%s", buf);

    r = parse(ARGS("--token-file", token_path));
    cr_assert_eq(r->outcome, CONFIG_RUN, "%s", r->err);
    config_format(&r->c, buf, sizeof buf);
    cr_assert_null(strstr(buf, FILE_TOKEN), "%s", buf);
    cr_assert_not_null(strstr(buf, " token=set"), "%s", buf);
    char want[256];
    snprintf(want, sizeof want, " token_file=%s", token_path);
    cr_assert_not_null(strstr(buf, want), "%s", buf);
}

Test(config, clear_secrets_zeroes_the_token)
{
    run *r = parse(ARGS("--token", "flagsecret"));
    cr_assert_eq(r->outcome, CONFIG_RUN, "%s", r->err);
    config_clear_secrets(&r->c);
    for (size_t i = 0; i < sizeof r->c.token; i++)
        cr_assert_eq(r->c.token[i], 0, "byte %zu left", i);
    cr_assert_eq(r->c.batch_size, 8192, "other settings stay");
}

Test(config, access_log_values)
{
    static const struct {
        const char *value;
        bool on;
    } cases[] = {
        {"1", true}, {"true", true}, {"TRUE", true}, {"yes", true}, {"on", true},
        {"0", false}, {"false", false}, {"False", false}, {"no", false}, {"off", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char arg[64];

        clear_env();
        cr_assert_eq(setenv("NODESTATE_ACCESS_LOG", cases[i].value, 1), 0);
        run *r = parse(NO_ARGS);
        cr_assert_eq(r->outcome, CONFIG_RUN, "%s: %s", cases[i].value, r->err);
        cr_assert_eq(r->c.access_log, cases[i].on, "env %s", cases[i].value);

        clear_env();
        snprintf(arg, sizeof arg, "--access-log=%s", cases[i].value);
        r = parse(ARGS(arg));
        cr_assert_eq(r->outcome, CONFIG_RUN, "%s: %s", arg, r->err);
        cr_assert_eq(r->c.access_log, cases[i].on, "%s", arg);
    }

    /* Alone, it takes no value: the next word is the next option. */
    run *r = parse(ARGS("--access-log", "--threads", "3"));
    cr_assert_eq(r->outcome, CONFIG_RUN, "%s", r->err);
    cr_assert(r->c.access_log);
    cr_assert_eq(r->c.threads, 3);

    r = parse(ARGS("--access-log", "true"));
    cr_assert_eq(r->outcome, CONFIG_ERROR, "a separate value is a stray argument");

    /* The flag beats the variable, both ways. */
    cr_assert_eq(setenv("NODESTATE_ACCESS_LOG", "1", 1), 0);
    r = parse(ARGS("--access-log=false"));
    cr_assert_eq(r->outcome, CONFIG_RUN, "%s", r->err);
    cr_assert_not(r->c.access_log);
}

/* ---- sizes ------------------------------------------------------------------ */

Test(config, sizes_take_suffixes_in_powers_of_1024)
{
    static const struct {
        const char *value;
        size_t want;
    } cases[] = {
        {"1048576", 1048576}, {"64K", 65536}, {"64k", 65536},
        {"2M", (size_t)2 << 20}, {"1G", (size_t)1 << 30}, {"0", 0},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        run *r = parse(ARGS("--cache-max-bytes", cases[i].value));

        cr_assert_eq(r->outcome, CONFIG_RUN, "%s: %s", cases[i].value, r->err);
        cr_assert_eq(r->c.cache_max_bytes, cases[i].want, "%s", cases[i].value);
    }
}

/* The duration parser: units, fractions, off; checked in seconds. */
Test(config, durations_take_units)
{
    static const struct {
        const char *value;
        double want;
    } cases[] = {
        {"off", 0}, {"0", 0}, {"0d", 0}, {"45", 45}, {"45s", 45}, {"30m", 1800},
        {"12h", 43200}, {"7d", 604800}, {"1.5h", 5400}, {".5m", 30}, {"3650d", 315360000},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        run *r = parse(ARGS("--retention", cases[i].value));

        cr_assert_eq(r->outcome, CONFIG_RUN, "%s: %s", cases[i].value, r->err);
        cr_assert_float_eq(r->c.retention, cases[i].want, 1e-9, "%s", cases[i].value);
    }
    cr_assert_eq(setenv("NODESTATE_RETENTION", "12h", 1), 0);
    run *r = parse(NO_ARGS);
    cr_assert_eq(r->outcome, CONFIG_RUN, "%s", r->err);
    cr_assert_float_eq(r->c.retention, 43200, 1e-9);
    r = parse(ARGS("--retention", "7w"));
    cr_assert_str_eq(r->err, "--retention: \"7w\" is not a duration (a number with s, m, h or d "
                             "after it, or off) (from the command line)");
}
