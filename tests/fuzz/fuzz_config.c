/*
 * fuzz_config: config_parse with a command line and an environment built
 * from the input. Each line of the input is one item: "$NAME=value" is an
 * environment variable, any other line one argument (argv[0] is added).
 * Besides not crashing, a parse must keep the token secret: parsed again
 * with every token value in the input masked, it must give the same outcome,
 * error text and config_format text (so neither shows the token), and
 * config_clear_secrets must zero it.
 *
 * --token-file reads the file the input names; that is read-only, but a
 * device or FIFO could block, so inputs naming anything under /dev, /proc
 * or /sys are skipped (scripts/fuzz.sh also gives the fuzzer no stdin).
 * Nothing here writes a file: --port-file is only written by main.c.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzzkit.h"
#include "config.h"

#define CONFIG_MAX_ITEMS 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct config_input {
    char *argv[CONFIG_MAX_ITEMS + 2];
    int argc;
    char *env[CONFIG_MAX_ITEMS];    /* "NAME=value" */
    size_t env_count;
} config_input;

/* config_parse's env callback has no context, so the lookup reads this. */
static const config_input *config_current;

static char *config_getenv(const char *name)
{
    size_t n = strlen(name);
    char *found = NULL;
    /* The last definition wins, as with a shell's environment. */
    for (size_t i = 0; i < config_current->env_count; i++)
        if (strncmp(config_current->env[i], name, n) == 0 &&
            config_current->env[i][n] == '=')
            found = config_current->env[i] + n + 1;
    return found;
}

/*
 * Replaces each visible byte of a token value with 'Z' (blanks and other
 * bytes stay, so the value stays exactly as valid or invalid as it was).
 */
static void mask_value(char *v)
{
    for (; *v; v++)
        if ((unsigned char)*v > 0x20 && (unsigned char)*v < 0x7f)
            *v = 'Z';
}

/* Masks every token value the input gives, by flag or by variable. */
static void mask_tokens(config_input *in)
{
    for (int i = 1; i < in->argc; i++) {
        if (strncmp(in->argv[i], "--token=", 8) == 0)
            mask_value(in->argv[i] + 8);
        else if (strcmp(in->argv[i], "--token") == 0 && i + 1 < in->argc &&
                 strncmp(in->argv[i + 1], "--", 2) != 0)
            mask_value(in->argv[i + 1]);
    }
    for (size_t i = 0; i < in->env_count; i++)
        if (strncmp(in->env[i], "NODESTATE_TOKEN=", 16) == 0)
            mask_value(in->env[i] + 16);
}

/* One parse: its outcome, error text and (when it runs) config_format text. */
typedef struct config_result {
    config c;
    config_outcome outcome;
    char err[512];
    char formatted[1 << 15];
} config_result;

static void config_run(const config_input *in, config_result *res)
{
    /* Help and version text go nowhere; opened once for the whole run. */
    static FILE *devnull;
    if (!devnull)
        devnull = fopen("/dev/null", "w");
    config_current = in;
    res->formatted[0] = '\0';
    res->outcome = config_parse(&res->c, in->argc, (char **)in->argv, config_getenv,
                                devnull, res->err, sizeof res->err);
    fuzzkit_check(res->outcome == CONFIG_RUN || res->outcome == CONFIG_EXIT_OK ||
                  res->outcome == CONFIG_ERROR, "config_parse returned no outcome");
    if (res->outcome == CONFIG_ERROR)
        fuzzkit_check(res->err[0] != '\0', "an error without a message");
    if (res->outcome == CONFIG_RUN) {
        config_format(&res->c, res->formatted, sizeof res->formatted);
        fuzzkit_check(strlen(res->formatted) < sizeof res->formatted, "config_format overran");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    if (strstr(text, "/dev") || strstr(text, "/proc") || strstr(text, "/sys")) {
        free(text);
        return 0;
    }

    config_input in = { .argc = 0 };
    in.argv[in.argc++] = "nodestate";
    for (char *p = text; p && in.argc < CONFIG_MAX_ITEMS && in.env_count < CONFIG_MAX_ITEMS;) {
        char *next = strchr(p, '\n');
        if (next)
            *next++ = '\0';
        if (p[0] == '$' && strchr(p, '='))
            in.env[in.env_count++] = p + 1;
        else
            in.argv[in.argc++] = p;
        p = next;
    }
    in.argv[in.argc] = NULL;

    config_result *first = malloc(sizeof *first);
    config_result *masked = malloc(sizeof *masked);
    if (!first || !masked)
        goto out;
    config_run(&in, first);

    /*
     * The secret stays secret: with every token value masked, the outcome,
     * the error text and config_format's text must be exactly the same, so
     * neither can show any byte of the token.
     */
    mask_tokens(&in);
    config_run(&in, masked);
    fuzzkit_check(first->outcome == masked->outcome, "the token's value changed the outcome");
    fuzzkit_check(strcmp(first->err, masked->err) == 0 || first->outcome != CONFIG_ERROR,
                  "an error message depends on the token's value");
    fuzzkit_check(strcmp(first->formatted, masked->formatted) == 0,
                  "config_format depends on the token's value");

    if (first->outcome == CONFIG_RUN) {
        config_clear_secrets(&first->c);
        for (size_t i = 0; i < sizeof first->c.token; i++)
            fuzzkit_check(first->c.token[i] == '\0', "config_clear_secrets left a byte");
    }
out:
    free(masked);
    free(first);
    free(text);
    return 0;
}
