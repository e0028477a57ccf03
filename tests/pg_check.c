/*
 * pg_check: fresh PostgreSQL databases for the test servers (see pg_check.h).
 */
#include "pg_check.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *ns_pg_base(void)
{
    const char *store = getenv("NS_IT_STORE");
    const char *base = getenv("NODESTATE_TEST_PG");
    if (store == NULL || strcmp(store, "pg") != 0 || base == NULL || base[0] == '\0')
        return NULL;
    return base;
}

bool ns_pg_uri(const char *db)
{
    return db != NULL && (strncmp(db, "postgresql://", 13) == 0 ||
                          strncmp(db, "postgres://", 11) == 0);
}

/* uri with its database (the path after the host) replaced by name. */
static int ns_pg_with_db(const char *uri, const char *name, char *out, size_t outlen)
{
    const char *host = strstr(uri, "://");
    const char *slash = host ? strchr(host + 3, '/') : NULL;
    if (slash == NULL || strchr(slash, '?') != NULL) {
        fprintf(stderr, "harness: NODESTATE_TEST_PG must look like "
                        "postgresql://user@host:port/db, not %s\n", uri);
        return -1;
    }
    int n = snprintf(out, outlen, "%.*s/%s", (int)(slash - uri), uri, name);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

/* Runs one statement on the base database. 0 or -1 (reported). */
static int ns_pg_admin(const char *sql)
{
    const char *base = getenv("NODESTATE_TEST_PG");
    if (base == NULL)
        return -1;
    PGconn *c = PQconnectdb(base);
    int ret = -1;
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "harness: connecting to %s: %s", base, PQerrorMessage(c));
        goto out;
    }
    PQclear(PQexec(c, "SET client_min_messages = warning"));
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) == PGRES_COMMAND_OK)
        ret = 0;
    else
        fprintf(stderr, "harness: %s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
out:
    PQfinish(c);
    return ret;
}

int ns_pg_create(char *out, size_t outlen)
{
    static unsigned counter; /* main thread only, like every server start */
    const char *base = ns_pg_base();
    char name[64], sql[128];
    if (base == NULL)
        return -1;
    snprintf(name, sizeof name, "ns_it_%ld_%u", (long)getpid(), ++counter);
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s", name);
    if (ns_pg_admin(sql) != 0)
        return -1;
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
    if (ns_pg_admin(sql) != 0)
        return -1;
    return ns_pg_with_db(base, name, out, outlen);
}

void ns_pg_drop(const char *uri)
{
    const char *slash = strrchr(uri, '/');
    char sql[160];
    if (slash == NULL || strncmp(slash + 1, "ns_it_", 6) != 0)
        return;
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", slash + 1);
    ns_pg_admin(sql);
}
