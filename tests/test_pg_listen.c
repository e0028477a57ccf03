/*
 * Unit tests for pg_listen (and store_listen's choice of it): notifications
 * between instances sharing a PostgreSQL database. Needs a PostgreSQL
 * server: NODESTATE_TEST_PG holds a libpq URI of one (scripts/test.sh sets
 * it to its throwaway cluster); without it every test is skipped, saying
 * so. A test connection plays the other instance's writer: it sends what
 * pg_listen_notify sends inside a transaction, then commits or rolls back.
 *
 * Tests may run side by side on one database (Criterion's default jobs):
 * each listens under an id of its own process and counts only its own runs.
 * Waits poll with a generous bound; what must not arrive is checked after
 * a later notification has arrived (PostgreSQL delivers one session's
 * notifications in commit order), never after a sleep.
 */
#include <criterion/criterion.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "store_fixture.h"
#include "pg_listen.h"
#include "store_listen.h"

#define HANG_SECONDS 30
#define MAX_HEARD 8192

/* What the listener's callback heard; its thread writes, the test reads. */
static struct {
    pthread_mutex_t lock;
    char *runs[MAX_HEARD];
    size_t n;
    size_t resets;   /* calls with NULL: everything may have changed */
} heard = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void on_changed(void *ctx, const char *const *run_ids, size_t n)
{
    (void)ctx;
    pthread_mutex_lock(&heard.lock);
    if (!run_ids)
        heard.resets++;
    for (size_t i = 0; run_ids && i < n && heard.n < MAX_HEARD; i++)
        heard.runs[heard.n++] = strdup(run_ids[i]);
    pthread_mutex_unlock(&heard.lock);
}

static void heard_clear(void)
{
    pthread_mutex_lock(&heard.lock);
    for (size_t i = 0; i < heard.n; i++)
        free(heard.runs[i]);
    heard.n = 0;
    heard.resets = 0;
    pthread_mutex_unlock(&heard.lock);
}

static bool heard_has(const char *run)
{
    bool found = false;
    pthread_mutex_lock(&heard.lock);
    for (size_t i = 0; i < heard.n && !found; i++)
        found = strcmp(heard.runs[i], run) == 0;
    pthread_mutex_unlock(&heard.lock);
    return found;
}

/* Mentions heard of runs whose id starts with prefix (each test has its own). */
static size_t heard_count(const char *prefix)
{
    size_t n = 0;
    pthread_mutex_lock(&heard.lock);
    for (size_t i = 0; i < heard.n; i++)
        n += strncmp(heard.runs[i], prefix, strlen(prefix)) == 0;
    pthread_mutex_unlock(&heard.lock);
    return n;
}

/* This test process's listener id: tests may run side by side on one database. */
static const char *my_id(void)
{
    static char id[32];
    snprintf(id, sizeof id, "me%d", (int)getpid());
    return id;
}

static size_t heard_resets(void)
{
    pthread_mutex_lock(&heard.lock);
    size_t n = heard.resets;
    pthread_mutex_unlock(&heard.lock);
    return n;
}

static void wait_heard(const char *run)
{
    for (int i = 0; i < HANG_SECONDS * 100 && !heard_has(run); i++)
        sfx_sleep_ms(10);
    cr_assert(heard_has(run), "%s not heard within %d s", run, HANG_SECONDS);
}

static const char *pg_uri(void)
{
    const char *uri = getenv("NODESTATE_TEST_PG");
    if (!uri || !*uri)
        cr_skip_test("NODESTATE_TEST_PG is not set (a PostgreSQL URI): the PostgreSQL "
                     "store's tests are skipped; scripts/test.sh runs them on a throwaway cluster");
    return uri;
}

static void setup(void)
{
    sfx_setup("test_pg_listen");
    heard_clear();
}

static void teardown(void)
{
    heard_clear();
    sfx_teardown();
}

TestSuite(pg_listen, .init = setup, .fini = teardown, .timeout = 120);

static PGconn *connect_or_fail(const char *uri)
{
    PGconn *c = PQconnectdb(uri);
    cr_assert(c && PQstatus(c) == CONNECTION_OK, "connect: %s", c ? PQerrorMessage(c) : "oom");
    return c;
}

static void exec_ok(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    cr_assert(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
}

/* Another instance's transaction touching the batch's runs, committed or not. */
static void send_batch(PGconn *c, const store_batch *b, bool commit)
{
    char err[512] = "";
    char *payloads = NULL;
    exec_ok(c, "BEGIN");
    cr_assert_eq(pg_listen_payloads(b, &payloads, err, sizeof err), 0, "%s", err);
    if (payloads) {
        const char *p[1] = { payloads };
        PGresult *r = PQexecParams(c, PG_LISTEN_NOTIFY_SQL, 1, NULL, p, NULL, NULL, 0);
        cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "notify: %s", PQerrorMessage(c));
        PQclear(r);
        free(payloads);
    }
    exec_ok(c, commit ? "COMMIT" : "ROLLBACK");
}

static store_listener *start(const char *uri, const char *id)
{
    char err[512] = "";
    store_listener *l = store_listen_start(uri, id, on_changed, NULL, err, sizeof err);
    cr_assert_not_null(l, "store_listen_start: %s", err);
    return l;
}

Test(pg_listen, sqlite_path_has_nothing_to_hear)
{
    char err[64] = "x";
    cr_assert_null(store_listen_start(sfx_db_path(), "a", on_changed, NULL, err, sizeof err));
    cr_assert_str_eq(err, "");
    cr_assert_not(store_listen_shared(sfx_db_path()));
    cr_assert(store_listen_shared("postgresql://h/db"));
    cr_assert(store_listen_shared("postgres://h/db"));
}

Test(pg_listen, other_instances_commits_are_heard_own_and_rolled_back_are_not)
{
    const char *uri = pg_uri();
    store_listener *l = start(uri, my_id());
    PGconn *c = connect_or_fail(uri);

    ns_row a1 = sfx_draft("run-a", "n1", NS_RUNNING, 1);
    ns_row a2 = sfx_draft("run-a", "n2", NS_RUNNING, 2);
    ns_row b1 = sfx_draft("run-b", "n1", NS_RUNNING, 3);
    ns_row *rows[] = { &a1, &a2, &b1 };
    const char *dels[] = { "run-gone" };
    store_batch b = { .delete_runs = dels, .n_deletes = 1, .rows = rows, .n_rows = 3 };

    /* Rolled back, and our own: neither may arrive. */
    b.notify_id = "other";
    send_batch(c, &b, false);
    b.notify_id = my_id();
    send_batch(c, &b, true);
    /* Not signed: nothing is sent at all. */
    b.notify_id = NULL;
    send_batch(c, &b, true);

    b.notify_id = "other";
    send_batch(c, &b, true);
    wait_heard("run-b");
    cr_assert(heard_has("run-a"));
    cr_assert(heard_has("run-gone"));
    /* Each run once: run-a's two rows make one mention; nothing of the earlier three. */
    cr_assert_eq(heard_count("run-"), 3, "heard %zu mentions", heard_count("run-"));
    cr_assert_eq(heard_resets(), 0);
    PQfinish(c);
    store_listen_stop(l);
}

Test(pg_listen, many_runs_are_cut_into_payloads_postgresql_accepts)
{
    const char *uri = pg_uri();
    store_listener *l = start(uri, my_id());
    PGconn *c = connect_or_fail(uri);
    enum { RUNS = 600 };
    static char ids[RUNS][130];
    static ns_row drafts[RUNS];
    static ns_row *rows[RUNS];
    for (size_t i = 0; i < RUNS; i++) {
        /* 128-byte ids, in sorted order as the writer hands them over. */
        snprintf(ids[i], sizeof ids[i], "%04zu-%0124d", i, 0);
        drafts[i] = sfx_draft(ids[i], "n", NS_RUNNING, (int64_t)i + 1);
        rows[i] = &drafts[i];
    }
    store_batch b = { .rows = rows, .n_rows = RUNS, .notify_id = "other" };
    send_batch(c, &b, true); /* ~78 KB of ids: PostgreSQL refuses one payload of 8000 B */
    wait_heard(ids[RUNS - 1]);
    for (size_t i = 0; i < RUNS; i++)
        cr_assert(heard_has(ids[i]), "run %zu not heard", i);
    cr_assert_eq(heard_count("0"), RUNS, "heard %zu mentions of %d runs", heard_count("0"), RUNS);
    PQfinish(c);
    store_listen_stop(l);
}

Test(pg_listen, a_lost_connection_is_made_again_and_says_anything_may_have_changed)
{
    const char *uri = pg_uri();
    store_listener *l = start(uri, my_id());
    PGconn *c = connect_or_fail(uri);
    /* Ends the listener's session, which it names after its instance. */
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE application_name = 'nodestate-listen-%s'", my_id());
    PGresult *killed = PQexec(c, sql);
    cr_assert_eq(PQresultStatus(killed), PGRES_TUPLES_OK, "%s", PQerrorMessage(c));
    cr_assert_eq(PQntuples(killed), 1, "no session named nodestate-listen-%s", my_id());
    PQclear(killed);
    for (int i = 0; i < HANG_SECONDS * 100 && heard_resets() == 0; i++)
        sfx_sleep_ms(10);
    cr_assert_geq(heard_resets(), 1, "no reset after the listener's connection was cut");

    /* And it hears again. */
    ns_row r = sfx_draft("after-reconnect", "n", NS_RUNNING, 1);
    ns_row *rows[] = { &r };
    store_batch b = { .rows = rows, .n_rows = 1, .notify_id = "other" };
    send_batch(c, &b, true);
    wait_heard("after-reconnect");
    PQfinish(c);
    store_listen_stop(l);
}

Test(pg_listen, a_bad_instance_id_or_server_fails_the_start)
{
    const char *uri = pg_uri();
    char err[512] = "";
    cr_assert_null(store_listen_start(uri, "has space", on_changed, NULL, err, sizeof err));
    cr_assert(strstr(err, "instance id"), "%s", err);
    err[0] = '\0';
    cr_assert_null(store_listen_start("postgresql://127.0.0.1:1/none?connect_timeout=5",
                                      "me", on_changed, NULL, err, sizeof err));
    cr_assert_neq(err[0], '\0');
}
