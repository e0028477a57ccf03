/*
 * pg_check: the integration tests against the PostgreSQL store. When the
 * environment has NS_IT_STORE=pg (the ctest "_pg" variants set it) and
 * NODESTATE_TEST_PG holds the base URI of a throwaway cluster (scripts/pg.sh
 * prints one; it must end in "/<database>"), every server the harness starts
 * gets a fresh database of its own on that cluster as --db, and its sidecar
 * in its temporary directory; the database is dropped by ns_free. db_check
 * reads it through libpq instead of the SQLite file. Functions report on
 * stderr and never assert.
 */
#ifndef NODESTATE_PG_CHECK_H
#define NODESTATE_PG_CHECK_H

#include <stdbool.h>
#include <stddef.h>

/* The base URI when this process runs against PostgreSQL, else NULL. */
const char *ns_pg_base(void);
/*
 * Creates a fresh database on the cluster and writes its URI into out.
 * 0, or -1 (reported on stderr).
 */
int ns_pg_create(char *out, size_t outlen);
/* Drops the database of uri (made by ns_pg_create), connections and all. */
void ns_pg_drop(const char *uri);
/* Whether a --db value names PostgreSQL. */
bool ns_pg_uri(const char *db);

#endif
