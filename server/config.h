/*
 * config: the service's options. Every option is a flag and an environment
 * variable NODESTATE_<NAME> (--batch-size / NODESTATE_BATCH_SIZE); the flag
 * wins. --help lists them with their defaults; a bad value is an error that
 * names the option.
 *
 * The bearer token is a secret: --help shows no default for it, errors never
 * echo it, config_format writes only whether it is set, and
 * config_clear_secrets zeroes it once the api holds its own copy.
 */
#ifndef NODESTATE_CONFIG_H
#define NODESTATE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct config {
    char listen_host[256];        /* --listen HOST:PORT, default 127.0.0.1:8080 */
    uint16_t listen_port;         /* 0 asks the kernel for a free port */
    char db_path[4096];           /* --db, default ./nodestate.db */
    char spill_path[4096];        /* --spill-path; "": the store's default */
    size_t batch_size;            /* --batch-size */
    double batch_interval;        /* --batch-interval seconds, default 0.1 */
    size_t queue_capacity;        /* --queue-capacity */
    size_t queue_max_bytes;       /* --queue-max-bytes: bytes of queued updates */
    size_t cache_max_nodes;       /* --cache-max-nodes: 0 = no bound */
    size_t cache_max_bytes;       /* --cache-max-bytes: 0 = no bound */
    double shutdown_timeout;      /* --shutdown-timeout seconds */
    bool synchronous_full;        /* --synchronous normal|full, default normal */
    unsigned threads;             /* --threads: HTTP worker threads, 0 = one per core */
    size_t max_body_bytes;        /* --max-body-bytes: larger bodies get 413 */
    size_t max_error_bytes;       /* --max-error-bytes: longer last_error gets 422 */
    unsigned max_connections;     /* --max-connections */
    unsigned max_connections_per_ip; /* --max-connections-per-ip: 0 = no bound */
    double header_timeout;        /* --header-timeout: seconds to send the headers; 0 = none */
    unsigned connection_timeout;  /* --connection-timeout: idle seconds before closing */
    double max_wait;              /* --max-wait: cap on ?timeout= for ?wait=true */
    int log_level;                /* --log-level debug|info|warn|error (NS_LOG_*) */
    char token[4096];             /* --token, or read from --token-file; "" = no auth */
    char token_file[4096];        /* --token-file PATH the token came from; "" = none */
    bool access_log;              /* --access-log: one info line per answered request */
    char port_file[4096];         /* --port-file: where to write the bound port; "" = none */
} config;

typedef enum config_outcome {
    CONFIG_RUN,       /* parsed: start the service */
    CONFIG_EXIT_OK,   /* --help or --version was printed: exit 0 */
    CONFIG_ERROR      /* err names the option and the problem: exit non-zero */
} config_outcome;

/* Fills c with the defaults. */
void config_defaults(config *c);
/*
 * Defaults, then the environment (through env, e.g. getenv), then argv.
 * Flags take "--name value" and "--name=value"; an on/off option
 * (--access-log) takes "--name" alone or "--name=true|false", its variable
 * 1/true/yes/on or 0/false/no/off. --token and --token-file together are an
 * error; the file's content, trailing newline stripped, becomes the token.
 * Help and version text go to out.
 */
config_outcome config_parse(config *c, int argc, char **argv,
                            char *(*env)(const char *name), FILE *out,
                            char *err, size_t errlen);

/* Zeroes the token (in a way the compiler keeps); token_file stays. */
void config_clear_secrets(config *c);

/*
 * Writes every setting of c as logfmt "listen=127.0.0.1:8080 db=... ..."
 * (keys are the option names with '-' as '_', values quoted where logfmt
 * needs it) into buf, truncating to fit; the token appears only as
 * token=set or token=unset. Returns buf.
 */
const char *config_format(const config *c, char *buf, size_t size);

#endif
