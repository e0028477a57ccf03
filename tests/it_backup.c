/*
 * it_backup: GET /backup on the real binary. The answer is an SQLite file
 * (application/vnd.sqlite3, a Content-Disposition file name, its
 * Content-Length) that restores the service: taken while writers keep
 * posting, every row in it is the version of its node as of one commit,
 * the commit its last_seq names (the newest update of that node with a seq
 * up to last_seq, which the live database then holds or has replaced with a
 * newer one), and nothing of the copy is left next to the database (a
 * start removes what a killed process left). The restore the README
 * describes (stop, replace the file, remove -wal and -shm, start) brings
 * that state back.
 */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "it_assert.h"

TestSuite(backup, .init = it_env_clear, .timeout = 240);

/* Writers, nodes each writer owns, and the most posts one writer makes. */
#define WRITERS 2
#define NODES 16
#define MAX_POSTS 20000
/* Backups taken while the writers run. */
#define BACKUPS 3
/* A bound for a busy machine, not an expectation. */
#define WAIT_S 60.0

/* ---- downloading ---- */

typedef struct download {
    FILE *f;
    char disposition[256];
    char content_type[128];
    long long content_length;
} download;

static size_t on_body(char *data, size_t size, size_t n, void *ctx)
{
    download *d = ctx;
    return fwrite(data, size, n, d->f) * size;
}

/* Copies the value of header name (case-insensitive) from line into out. */
static void header_value(const char *line, size_t len, const char *name,
                         char *out, size_t outlen)
{
    size_t n = strlen(name);

    if (len <= n || strncasecmp(line, name, n) != 0 || line[n] != ':')
        return;
    line += n + 1;
    len -= n + 1;
    while (len > 0 && *line == ' ')
        line++, len--;
    while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == '\n'))
        len--;
    snprintf(out, outlen, "%.*s", (int)len, line);
}

static size_t on_header(char *data, size_t size, size_t n, void *ctx)
{
    download *d = ctx;
    char cl[32] = "";

    header_value(data, size * n, "Content-Disposition", d->disposition,
                 sizeof d->disposition);
    header_value(data, size * n, "Content-Type", d->content_type, sizeof d->content_type);
    header_value(data, size * n, "Content-Length", cl, sizeof cl);
    if (cl[0] != '\0')
        d->content_length = atoll(cl);
    return size * n;
}

/* GET /backup into path; asserts a 200 whose body filled the file. */
static void get_backup(ns_server *s, const char *auth, const char *path, download *d)
{
    char url[128];
    struct curl_slist *hdrs = NULL;
    CURL *c = curl_easy_init();
    long status = 0;
    CURLcode rc;

    cr_assert_not_null(c);
    memset(d, 0, sizeof *d);
    d->content_length = -1;
    d->f = fopen(path, "wb");
    cr_assert_not_null(d->f, "%s", path);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/backup", ns_port(s));
    if (auth != NULL)
        hdrs = curl_slist_append(hdrs, auth);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, d);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, d);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, (long)WAIT_S);
    rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
    cr_assert_eq(fclose(d->f), 0);
    cr_assert_eq(rc, CURLE_OK, "GET /backup: %s", curl_easy_strerror(rc));
    cr_assert_eq(status, 200, "GET /backup: status %ld", status);
}

/* Opens a backup file read-only and asserts SQLite finds it whole. */
static sqlite3 *open_backup(const char *path)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;

    cr_assert_eq(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK,
                 "%s: %s", path, sqlite3_errmsg(db));
    cr_assert_eq(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK);
    cr_assert_eq(sqlite3_step(st), SQLITE_ROW);
    cr_assert_str_eq((const char *)sqlite3_column_text(st, 0), "ok", "%s is damaged", path);
    sqlite3_finalize(st);
    return db;
}

static long long backup_int(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *st = NULL;
    long long v = -1;

    cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK, "%s: %s", sql,
                 sqlite3_errmsg(db));
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

/* Whether any file in dir has ".nodestate-backup-" in its name. */
static bool copy_left_in(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    bool found = false;

    cr_assert_not_null(d, "%s", dir);
    while ((e = readdir(d)) != NULL)
        found = found || strstr(e->d_name, ".nodestate-backup-") != NULL;
    closedir(d);
    return found;
}

/* ---- writers ---- */

/* What one writer sent: each accepted version of its nodes, by seq. */
typedef struct version {
    long long seq;
    int k;                      /* the "k" of its outputs */
} version;

typedef struct writer {
    ns_server *s;
    int id;
    _Atomic int *stop;
    _Atomic long posts;
    version *hist[NODES];       /* hist[node][0..n[node]) in seq order */
    size_t n[NODES];
    char error[256];
} writer;

static void *writer_main(void *arg)
{
    writer *w = arg;
    ns_client *c = ns_client_new(w->s);
    ns_resp r = {0};

    if (c == NULL) {
        snprintf(w->error, sizeof w->error, "no client");
        return NULL;
    }
    for (int i = 0; i < MAX_POSTS && !atomic_load(w->stop); i++) {
        int node = i % NODES;
        char id[32], body[96];
        long long seq;
        json_t *j;

        snprintf(id, sizeof id, "w%d-n%d", w->id, node);
        snprintf(body, sizeof body, "{\"status\":\"running\",\"outputs\":{\"k\":%d}}", i);
        if (ns_client_post_state(c, "bk", id, body, &r) != 0 || r.status != 202) {
            snprintf(w->error, sizeof w->error, "POST %s: status %ld %.100s %.100s", id,
                     r.status, r.error, r.body ? r.body : "");
            break;
        }
        j = ns_resp_json(&r);
        if (j == NULL || ns_jint(j, "seq", &seq) != 0) {
            snprintf(w->error, sizeof w->error, "POST %s: no seq in %.100s", id, r.body);
            json_decref(j);
            break;
        }
        json_decref(j);
        w->hist[node][w->n[node]++] = (version){seq, i};
        atomic_fetch_add(&w->posts, 1);
    }
    ns_resp_free(&r);
    ns_client_free(c);
    return NULL;
}

typedef struct posts_at_least {
    writer *w;
    long want;
} posts_at_least;

static bool enough_posts(void *ctx)
{
    posts_at_least *p = ctx;
    long total = 0;

    for (int i = 0; i < WRITERS; i++)
        total += atomic_load(&p->w[i].posts);
    return total >= p->want;
}

static long total_posts(writer *w)
{
    long total = 0;

    for (int i = 0; i < WRITERS; i++)
        total += atomic_load(&w[i].posts);
    return total;
}

/*
 * Checks one backup against what the writers sent: for every node, the
 * backup holds exactly its newest version with seq <= the backup's
 * last_seq (none if it had none), with that version's outputs; and the
 * live database holds that version or a newer one.
 */
static void check_backup(ns_server *s, const char *path, writer *w)
{
    sqlite3 *db = open_backup(path);
    long long last = backup_int(db, "SELECT value FROM nodestate_meta WHERE key = 'last_seq'");
    long long max_seq = backup_int(db, "SELECT max(seq) FROM run_node_state");
    size_t rows = 0;

    cr_assert_gt(last, 0, "%s: no last_seq", path);
    cr_assert(max_seq <= last, "%s: a row with seq %lld past last_seq %lld", path, max_seq, last);
    for (int i = 0; i < WRITERS; i++) {
        for (int node = 0; node < NODES; node++) {
            char id[32], sql[256], want_out[64];
            const version *want = NULL;
            sqlite3_stmt *st = NULL;

            for (size_t v = 0; v < w[i].n[node] && w[i].hist[node][v].seq <= last; v++)
                want = &w[i].hist[node][v];
            snprintf(id, sizeof id, "w%d-n%d", i, node);
            snprintf(sql, sizeof sql, "SELECT seq, outputs_json FROM run_node_state "
                     "WHERE run_id = 'bk' AND node_id = '%s'", id);
            cr_assert_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
            if (want == NULL) {
                cr_assert_neq(sqlite3_step(st), SQLITE_ROW,
                              "%s: %s is in the backup, but no update of it has a seq <= %lld",
                              path, id, last);
                sqlite3_finalize(st);
                continue;
            }
            cr_assert_eq(sqlite3_step(st), SQLITE_ROW, "%s: %s (seq %lld <= last_seq %lld) is missing",
                         path, id, want->seq, last);
            snprintf(want_out, sizeof want_out, "{\"k\":%d}", want->k);
            cr_assert_eq(sqlite3_column_int64(st, 0), want->seq,
                         "%s: %s has seq %lld, want %lld, its newest with seq <= last_seq %lld",
                         path, id, (long long)sqlite3_column_int64(st, 0), want->seq, last);
            cr_assert_str_eq((const char *)sqlite3_column_text(st, 1), want_out,
                             "%s: %s seq %lld", path, id, want->seq);
            sqlite3_finalize(st);
            rows++;

            /* The live row is this version or a newer one. */
            long long live = ns_db_int(s, "SELECT seq FROM run_node_state WHERE run_id = 'bk' "
                                       "AND node_id = ?", id, NULL);
            cr_assert_geq(live, want->seq, "%s: live %s seq %lld older than the backup's %lld",
                          path, id, live, want->seq);
            if (live == want->seq) {
                char *out = ns_db_text(s, NULL, "SELECT outputs_json FROM run_node_state "
                                       "WHERE run_id = 'bk' AND node_id = ?", id, NULL);
                cr_assert_str_eq(out, want_out, "live %s", id);
                free(out);
            }
        }
    }
    cr_assert_eq(backup_int(db, "SELECT count(*) FROM run_node_state"), (long long)rows,
                 "%s holds rows nobody wrote", path);
    sqlite3_close(db);
}

/* Something is committed: a backup then holds rows to check. */
static bool some_durable(void *ctx)
{
    ns_server *s = ctx;
    ns_resp r = {0};
    json_t *j;
    long long durable = 0;

    if (ns_req(s, "GET", "/stats?format=json", NULL, NULL, &r) == 0 &&
        (j = ns_resp_json(&r)) != NULL) {
        ns_jint(j, "durable_seq", &durable);
        json_decref(j);
    }
    ns_resp_free(&r);
    return durable > 0;
}

static bool all_durable(void *ctx)
{
    ns_server *s = ctx;
    ns_resp r = {0};
    json_t *j;
    long long last = -1, durable = -2;

    if (ns_req(s, "GET", "/stats?format=json", NULL, NULL, &r) == 0 &&
        (j = ns_resp_json(&r)) != NULL) {
        ns_jint(j, "last_seq", &last);
        ns_jint(j, "durable_seq", &durable);
        json_decref(j);
    }
    ns_resp_free(&r);
    return last == durable;
}

Test(backup, snapshots_taken_while_writers_run_are_consistent)
{
    ns_server *s = ns_start(NULL);
    _Atomic int stop = 0;
    writer w[WRITERS];
    pthread_t th[WRITERS];
    char path[BACKUPS][4200];
    download d;

    cr_assert_not_null(s);
    memset(w, 0, sizeof w);
    for (int i = 0; i < WRITERS; i++) {
        w[i].s = s;
        w[i].id = i;
        w[i].stop = &stop;
        for (int node = 0; node < NODES; node++) {
            w[i].hist[node] = calloc(MAX_POSTS / NODES + 1, sizeof(version));
            cr_assert_not_null(w[i].hist[node]);
        }
        cr_assert_eq(pthread_create(&th[i], NULL, writer_main, &w[i]), 0);
    }
    for (int b = 0; b < BACKUPS; b++) {
        /* Some writes before each backup, so each one lands among them. */
        posts_at_least p = {w, total_posts(w) + 200};
        cr_assert_eq(ns_wait_until(enough_posts, &p, WAIT_S, 2), 0,
                     "the writers stalled at %ld posts", total_posts(w));
        cr_assert_eq(ns_wait_until(some_durable, s, WAIT_S, 5), 0, "nothing committed");
        snprintf(path[b], sizeof path[b], "%s/backup-%d.db", ns_dir(s), b);
        get_backup(s, NULL, path[b], &d);
        cr_assert_str_eq(d.content_type, "application/vnd.sqlite3");
        cr_assert_not_null(strstr(d.disposition, "attachment; filename=\"nodestate-"),
                           "Content-Disposition: %s", d.disposition);
        cr_assert_gt(d.content_length, 0);
    }
    /* And writes after the last one, so it is not simply the end state. */
    posts_at_least after = {w, total_posts(w) + 200};
    cr_assert_eq(ns_wait_until(enough_posts, &after, WAIT_S, 2), 0);
    atomic_store(&stop, 1);
    for (int i = 0; i < WRITERS; i++) {
        pthread_join(th[i], NULL);
        cr_assert_str_eq(w[i].error, "", "writer %d: %s", i, w[i].error);
    }
    cr_assert_eq(ns_wait_until(all_durable, s, WAIT_S, 10), 0, "the queue never drained");
    for (int b = 0; b < BACKUPS; b++)
        check_backup(s, path[b], w);
    cr_assert(!copy_left_in(ns_dir(s)), "a temporary copy was left next to the database");
    fprintf(stderr, "it_backup: %ld posts, %d backups checked\n", total_posts(w), BACKUPS);

    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
    for (int i = 0; i < WRITERS; i++)
        for (int node = 0; node < NODES; node++)
            free(w[i].hist[node]);
}

Test(backup, needs_the_token_and_restores_the_service)
{
    ns_server *s = ns_start("--token backup-secret");
    ns_resp r = {0};
    char path[4200], file[4300];
    download d;
    json_t *j;
    FILE *in, *out;
    char buf[65536];
    size_t n;
    long long size = 0;
    const char *auth[] = {"Authorization: Bearer backup-secret", NULL};

    cr_assert_not_null(s);
    cr_assert_eq(ns_req(s, "GET", "/backup", NULL, NULL, &r), 0);
    cr_assert_eq(r.status, 401, "GET /backup without the token: %ld", r.status);
    cr_assert_eq(ns_req(s, "POST", "/runs/r1/nodes/a/state?wait=true",
                        "{\"status\":\"completed\",\"outputs\":{\"rows\":7}}", auth, &r), 0);
    cr_assert_eq(r.status, 200, "%s", r.body);

    snprintf(path, sizeof path, "%s/saved.db", ns_dir(s));
    get_backup(s, auth[0], path, &d);
    in = fopen(path, "rb");
    cr_assert_not_null(in);
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        size += (long long)n;
    fclose(in);
    cr_assert_eq(size, d.content_length, "Content-Length %lld, body %lld bytes",
                 d.content_length, size);

    /* Written after the backup: the restore takes it away again. */
    cr_assert_eq(ns_req(s, "POST", "/runs/r1/nodes/b/state?wait=true",
                        "{\"status\":\"running\"}", auth, &r), 0);
    cr_assert_eq(r.status, 200);

    /* The README's restore: stop, replace the file, drop -wal and -shm, start. */
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    in = fopen(path, "rb");
    out = fopen(ns_db_path(s), "wb");
    cr_assert(in != NULL && out != NULL);
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        cr_assert_eq(fwrite(buf, 1, n, out), n);
    fclose(in);
    cr_assert_eq(fclose(out), 0);
    snprintf(file, sizeof file, "%s-wal", ns_db_path(s));
    unlink(file);
    snprintf(file, sizeof file, "%s-shm", ns_db_path(s));
    unlink(file);
    /* The copy of a backup whose process was killed: the start removes it. */
    char leftover[4300];
    snprintf(leftover, sizeof leftover, "%s.nodestate-backup-k1lled", ns_db_path(s));
    it_write_file(leftover, "a partial copy");
    cr_assert_eq(chmod(leftover, 0600), 0); /* as mkstemp made it */
    /* An operator's own copy, named as earlier builds named theirs: kept. */
    char mine[4300];
    snprintf(mine, sizeof mine, "%s.backup-friday", ns_db_path(s));
    it_write_file(mine, "an operator's backup");
    cr_assert_eq(chmod(mine, 0600), 0);
    cr_assert_eq(ns_restart(s, "--token backup-secret"), 0);
    cr_assert_neq(access(leftover, F_OK), 0, "the leftover copy is still there");
    cr_assert_eq(access(mine, F_OK), 0, "an operator's backup was removed");
    unlink(mine);
    cr_assert(ns_log_contains(s, "msg=backup-leftovers-removed files=1"));

    cr_assert_eq(ns_req(s, "GET", "/runs/r1/nodes/a/state", NULL, auth, &r), 0);
    cr_assert_eq(r.status, 200, "%s", r.body);
    j = ns_resp_json(&r);
    cr_assert_not_null(j);
    cr_assert_str_eq(ns_jstr(j, "status"), "completed");
    json_decref(j);
    cr_assert_eq(ns_req(s, "GET", "/runs/r1/nodes/b/state", NULL, auth, &r), 0);
    cr_assert_eq(r.status, 404, "b came after the backup: %ld %s", r.status, r.body);
    /* New updates get seqs above everything handed out before the restore. */
    cr_assert_eq(ns_req(s, "POST", "/runs/r1/nodes/c/state?wait=true",
                        "{\"status\":\"running\"}", auth, &r), 0);
    cr_assert_eq(r.status, 200);
    j = ns_resp_json(&r);
    long long seq = 0;
    cr_assert_eq(ns_jint(j, "seq", &seq), 0);
    cr_assert_gt(seq, 2, "seq %lld reuses one handed out before the restore", seq);
    json_decref(j);
    ns_resp_free(&r);
    cr_assert_eq(ns_stop(s, SIGTERM), 0);
    ns_free(s);
}
