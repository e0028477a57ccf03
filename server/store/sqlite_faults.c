/*
 * sqlite_faults: the fault injection of NODESTATE_FAULTS builds (see store.h):
 * parsing the NODESTATE_FAULTS variable, and deciding which write fails.
 * A normal build compiles nothing of it (the hooks in sqlite_internal.h
 * are empty there).
 */
#include "sqlite_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef NODESTATE_FAULTS

/* A whole decimal number in [min, LONG_MAX]; 0 or -1. */
static int store_faults_number(const char *text, long min, long *out)
{
    char *end;
    long v;

    if (text[0] < '0' || text[0] > '9')
        return -1;
    errno = 0;
    v = strtol(text, &end, 10);
    if (errno != 0 || *end != '\0' || v < min)
        return -1;
    *out = v;
    return 0;
}

/* One "key=value" entry of the spec into f. 0, or -1 if it is not one. */
static int store_faults_entry(store_faults *f, char *entry)
{
    char *value = strchr(entry, '=');
    char *count;

    if (value == NULL)
        return -1;
    *value++ = '\0';
    if (strcmp(entry, "commit") == 0) {
        count = strchr(value, ':');
        if (count == NULL)
            return -1;
        *count++ = '\0';
        if (strcmp(value, "busy") == 0)
            f->commit_rc = SQLITE_BUSY;
        else if (strcmp(value, "ioerr") == 0)
            f->commit_rc = SQLITE_IOERR;
        else if (strcmp(value, "full") == 0)
            f->commit_rc = SQLITE_FULL;
        else
            return -1;
        return store_faults_number(count, 1, &f->commit_left);
    }
    if (strcmp(entry, "after") == 0)
        return store_faults_number(value, 0, &f->after);
    if (strcmp(entry, "checkpoint") == 0)
        return store_faults_number(value, 1, &f->checkpoint_rounds);
    if (strcmp(entry, "row") == 0) {
        if (!model_id_valid(value, strlen(value))
            || f->n_rows == STORE_FAULT_ROWS_MAX)
            return -1;
        snprintf(f->rows[f->n_rows++], sizeof f->rows[0], "%s", value);
        return 0;
    }
    return -1;
}

/*
 * Reads NODESTATE_FAULTS into f (unset or empty: no faults). On a spec it
 * cannot read, writes a message naming the variable and returns -1, so a
 * typo in a test fails loudly instead of testing nothing.
 */
int store_faults_load(store_faults *f, char *msg, size_t msglen)
{
    const char *spec = getenv("NODESTATE_FAULTS");
    char *copy, *entry, *save = NULL;
    int ret = 0;

    memset(f, 0, sizeof *f);
    if (spec == NULL || spec[0] == '\0')
        return 0;
    copy = strdup(spec);
    if (copy == NULL) {
        snprintf(msg, msglen, "NODESTATE_FAULTS: out of memory");
        return -1;
    }
    /* strtok_r would skip empty entries; a stray comma is a typo. */
    for (entry = copy; ret == 0 && entry != NULL; entry = save) {
        save = strchr(entry, ',');
        if (save != NULL)
            *save++ = '\0';
        if (store_faults_entry(f, entry) != 0) {
            snprintf(msg, msglen,
                     "NODESTATE_FAULTS=\"%s\": cannot read \"%s\" (expected "
                     "commit=busy|ioerr|full:N, after=N, checkpoint=N or "
                     "row=NODE_ID, comma-separated)", spec, entry);
            ret = -1;
        }
    }
    free(copy);
    return ret;
}

static bool store_faults_active(const store_faults *f)
{
    return f->wrote >= f->after;
}

bool store_faults_row(const store_faults *f, const char *node_id)
{
    if (!store_faults_active(f))
        return false;
    for (size_t i = 0; i < f->n_rows; i++)
        if (strcmp(f->rows[i], node_id) == 0)
            return true;
    return false;
}

/* -1 with errmsg set when this write is to fail; each one uses up one. */
int store_faults_commit(store_faults *f, char *errmsg, size_t len)
{
    if (f->commit_rc == 0 || f->commit_left == 0 || !store_faults_active(f))
        return 0;
    f->commit_left--;
    snprintf(errmsg, len, "commit: %s (injected fault)",
             sqlite3_errstr(f->commit_rc));
    return -1;
}

#endif /* NODESTATE_FAULTS */
