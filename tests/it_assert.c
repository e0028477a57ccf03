#include "it_assert.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <libpq-fe.h>
#include <stdlib.h>
#include <sqlite3.h>
#include <string.h>

/* How long it_lock_db waits for the server to let go of the file. */
#define IT_LOCK_BUSY_MS 5000

sqlite3 *it_lock_db(ns_server *s)
{
    sqlite3 *db = NULL;
    cr_assert_eq(sqlite3_open_v2(ns_db_path(s), &db, SQLITE_OPEN_READWRITE, NULL),
                 SQLITE_OK, "open %s", ns_db_path(s));
    cr_assert_eq(sqlite3_busy_timeout(db, IT_LOCK_BUSY_MS), SQLITE_OK);
    char *err = NULL;
    int rc = sqlite3_exec(db, "BEGIN EXCLUSIVE", NULL, NULL, &err);
    cr_assert_eq(rc, SQLITE_OK, "BEGIN EXCLUSIVE: %s", err ? err : "");
    return db;
}

void it_unlock_db(sqlite3 *db)
{
    char *err = NULL;
    cr_assert_eq(sqlite3_exec(db, "ROLLBACK", NULL, NULL, &err), SQLITE_OK,
                 "ROLLBACK: %s", err ? err : "");
    cr_assert_eq(sqlite3_close(db), SQLITE_OK);
}

struct it_store_lock {
    sqlite3 *db;
    PGconn *pg;
};

it_store_lock *it_lock_store(ns_server *s)
{
    it_store_lock *l = calloc(1, sizeof *l);
    cr_assert_not_null(l);
    if (!ns_pg_uri(ns_db_path(s))) {
        l->db = it_lock_db(s);
        return l;
    }
    l->pg = PQconnectdb(ns_db_path(s));
    cr_assert_eq(PQstatus(l->pg), CONNECTION_OK, "connect: %s", PQerrorMessage(l->pg));
    PGresult *r = PQexec(l->pg, "BEGIN; LOCK TABLE run_node_state IN EXCLUSIVE MODE");
    cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "LOCK TABLE: %s",
                 PQresultErrorMessage(r));
    PQclear(r);
    return l;
}

void it_unlock_store(it_store_lock *l)
{
    if (l->db != NULL) {
        it_unlock_db(l->db);
    } else {
        PGresult *r = PQexec(l->pg, "ROLLBACK");
        cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "ROLLBACK: %s",
                     PQresultErrorMessage(r));
        PQclear(r);
        PQfinish(l->pg);
    }
    free(l);
}

json_t *it_get_json(ns_server *s, const char *path, long want)
{
    ns_resp r = { 0 };
    cr_assert_eq(ns_req(s, "GET", path, NULL, NULL, &r), 0, "GET %s: %s", path, r.error);
    cr_assert_eq(r.status, want, "GET %s: %ld %s, want %ld", path, r.status, r.body, want);
    json_t *doc = ns_resp_json(&r);
    cr_assert(json_is_object(doc), "GET %s: %s", path, r.body);
    ns_resp_free(&r);
    return doc;
}

json_t *it_post_json(ns_server *s, const char *run, const char *node,
                     const char *query, const char *json, long want)
{
    ns_resp r = { 0 };
    cr_assert_eq(ns_post_state(s, run, node, query, json, &r), 0, "POST: %s", r.error);
    cr_assert_eq(r.status, want, "POST %s/%s%s %s: %ld %s, want %ld", run, node,
                 query ? query : "", json, r.status, r.body, want);
    json_t *doc = ns_resp_json(&r);
    cr_assert(json_is_object(doc), "%s", r.body);
    ns_resp_free(&r);
    return doc;
}

long long it_delete_seq(ns_server *s, const char *run, const char *query, long want)
{
    char path[256];
    ns_resp r = { 0 };
    snprintf(path, sizeof path, "/runs/%s%s", run, query ? query : "");
    cr_assert_eq(ns_req(s, "DELETE", path, NULL, NULL, &r), 0, "DELETE %s: %s", path, r.error);
    cr_assert_eq(r.status, want, "DELETE %s: %ld %s, want %ld", path, r.status, r.body, want);
    json_t *doc = ns_resp_json(&r);
    cr_assert(json_is_object(doc), "DELETE %s: %s", path, r.body);
    long long seq = it_jint(doc, "seq");
    json_decref(doc);
    ns_resp_free(&r);
    return seq;
}

void it_post(ns_server *s, const char *run, const char *node, const char *query,
             const char *json, long want)
{
    ns_resp r = { 0 };
    cr_assert_eq(ns_post_state(s, run, node, query, json, &r), 0, "POST: %s", r.error);
    cr_assert_eq(r.status, want, "POST %s/%s%s %s: %ld %s, want %ld", run, node,
                 query ? query : "", json, r.status, r.body, want);
    ns_resp_free(&r);
}

void it_env_clear(void)
{
    cr_assert_eq(ns_env_clear(), 0, "cannot clear the NODESTATE_* environment");
}

void it_write_file(const char *path, const char *text)
{
    cr_assert_eq(ns_file_write(path, text), 0, "%s: %s", path, strerror(errno));
}

void it_read_file(const char *path, char *buf, size_t size)
{
    cr_assert_eq(ns_file_read(path, buf, size), 0, "cannot open %s", path);
}

long long it_jint(const json_t *o, const char *key)
{
    long long v = 0;
    cr_assert_eq(ns_jint(o, key, &v), 0, "member %s is not an integer", key);
    return v;
}

int it_raw_connect(const ns_server *s, const char *src)
{
    int fd = ns_raw_connect(s, src);
    cr_assert_geq(fd, 0, "connect from %s: %s", src != NULL ? src : "127.0.0.1",
                  strerror(errno));
    return fd;
}

int it_raw_read_for(int fd, char *buf, size_t cap, size_t *len, int ms)
{
    int rc = ns_raw_read_for(fd, buf, cap, len, ms);
    cr_assert_geq(rc, 0, "recv: %s", strerror(errno));
    return rc;
}

void it_raw_read_to_close(int fd, char *buf, size_t cap, size_t *len,
                          double timeout_s)
{
    *len = 0;
    buf[0] = '\0';
    cr_assert_eq(it_raw_read_for(fd, buf, cap, len, (int)(timeout_s * 1000)), 1,
                 "the server did not close the connection within %.0f s; got: %.300s",
                 timeout_s, buf);
}
