/*
 * sqlite_spill: the sidecar: the queue spilled at shutdown, replayed into the
 * database at the next start (see store.h).
 */
#include "sqlite_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/*
 * The sidecar: a log of the rows spilled, keyed by seq so that every piece
 * appends at the end of the table (no index, few pages touched, a small
 * journal: about twice as fast as upserting by key), and the runs deleted,
 * each with the seq before which its logged rows are void. The row columns
 * and constraints are the main table's, so the same rows are refused.
 */
static const char store_spill_schema_sql[] =
    "CREATE TABLE IF NOT EXISTS spill_log ("
    " seq INTEGER PRIMARY KEY"
    STORE_SQL_SPILL_DEFS
    ");"
    "CREATE TABLE IF NOT EXISTS spill_deletes ("
    " run_id TEXT PRIMARY KEY,"
    " before_seq INTEGER NOT NULL"
    ");"
    "CREATE TABLE IF NOT EXISTS nodestate_meta ("
    " key TEXT PRIMARY KEY,"
    " value INTEGER"
    ");"
    "PRAGMA user_version = 1;";

static const char store_spill_row_sql[] =
    "INSERT INTO spill_log (" STORE_COLUMNS ")"
    " VALUES (" STORE_SQL_PARAMS ")";

/*
 * A delete voids the logged rows of its run older than itself (?2, its
 * seq): those of earlier pieces, while the rows of its own piece that
 * survive planning are newer. Without its seq (?2 NULL), every row spilled
 * before its piece, whose seqs are at most the last_seq recorded so far.
 * Replay records before_seq as the run's delete (run_deletes), which is
 * why it is the delete's own seq when known: the bound below it is lower.
 */
static const char store_spill_delete_sql[] =
    "INSERT INTO spill_deletes (run_id, before_seq) VALUES (?1, coalesce(?2,"
    " coalesce((SELECT value FROM nodestate_meta WHERE key = 'last_seq'), 0)"
    " + 1))"
    " ON CONFLICT (run_id) DO UPDATE SET"
    " before_seq = max(before_seq, excluded.before_seq)";

#define STORE_SPILL_LIVE                                                    \
    " FROM " STORE_SPILL_SCHEMA ".spill_log AS l WHERE NOT EXISTS"          \
    " (SELECT 1 FROM " STORE_SPILL_SCHEMA ".spill_deletes AS d"             \
    "  WHERE d.run_id = l.run_id AND d.before_seq > l.seq)"

/*
 * Replay of the log, run on the write connection with the sidecar attached.
 * Deletes first; then the live rows in key order (SQLite takes keys in
 * order fastest), each node's in seq order so that its newest wins. The seq
 * guards only matter when a sidecar is replayed late, after newer writes (a
 * server started meanwhile with another --spill-path): a delete voids only
 * the rows older than itself, and an older spilled row never replaces a
 * newer one.
 */
static const char store_replay_log_sql[] =
    "DELETE FROM main.run_node_state WHERE run_id IN"
    " (SELECT run_id FROM " STORE_SPILL_SCHEMA ".spill_deletes)"
    " AND seq < (SELECT d.before_seq FROM " STORE_SPILL_SCHEMA ".spill_deletes AS d"
    "            WHERE d.run_id = run_node_state.run_id);"
    "INSERT INTO main.run_deletes (run_id, seq, deleted_at)"
    " SELECT run_id, before_seq,"
    "  CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    " FROM " STORE_SPILL_SCHEMA ".spill_deletes WHERE true"
    " ON CONFLICT (run_id) DO UPDATE SET seq = excluded.seq,"
    " deleted_at = excluded.deleted_at WHERE excluded.seq > run_deletes.seq;"
    "INSERT INTO main.run_node_state (" STORE_COLUMNS ")"
    " SELECT " STORE_COLUMNS STORE_SPILL_LIVE
    " ORDER BY run_id, node_id, seq" STORE_UPSERT_SET
    " WHERE excluded.seq >= run_node_state.seq;"
    "INSERT INTO main.nodestate_meta (key, value)"
    " SELECT 'last_seq', max("
    "  coalesce((SELECT value FROM " STORE_SPILL_SCHEMA ".nodestate_meta"
    "            WHERE key = 'last_seq'), 0),"
    "  coalesce((SELECT max(seq) FROM " STORE_SPILL_SCHEMA ".spill_log), 0))"
    " WHERE true"
    " ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value);";

/*
 * Replay of a sidecar written by builds before the log (one table keyed
 * like the main one, plus the runs deleted), so that one left behind by an
 * upgrade still replays. "WHERE true" is SQLite's documented way to keep ON
 * CONFLICT from being parsed as a join constraint after INSERT ... SELECT.
 */
static const char store_replay_v1_sql[] =
    "DELETE FROM main.run_node_state WHERE run_id IN"
    " (SELECT run_id FROM " STORE_SPILL_SCHEMA ".spilled_deletes);"
    "INSERT INTO main.run_node_state (" STORE_COLUMNS ")"
    " SELECT " STORE_COLUMNS " FROM " STORE_SPILL_SCHEMA ".run_node_state"
    " WHERE true" STORE_UPSERT_SET
    " WHERE excluded.seq >= run_node_state.seq;"
    "INSERT INTO main.nodestate_meta (key, value)"
    " SELECT 'last_seq', max("
    "  coalesce((SELECT value FROM " STORE_SPILL_SCHEMA ".nodestate_meta"
    "            WHERE key = 'last_seq'), 0),"
    "  coalesce((SELECT max(seq) FROM " STORE_SPILL_SCHEMA
    ".run_node_state), 0))"
    " WHERE true"
    " ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value);";

/* ---- the sidecar: spill at shutdown, replay at the next start ---- */

void store_spill_path(const char *db_path, char *out, size_t outlen)
{
    if (outlen > 0)
        snprintf(out, outlen, "%s.spill", db_path != NULL ? db_path : "");
}

/* path + suffix into out; -1 (with err set) if it does not fit. */
static int store_path_with(const char *path, const char *suffix, char *out,
                           size_t outlen, char *err, size_t errlen)
{
    int n = snprintf(out, outlen, "%s%s", path, suffix);

    if (n < 0 || (size_t)n >= outlen) {
        store_set_err(err, errlen, path, "path too long");
        return -1;
    }
    return 0;
}

/* The sidecar open for appending pieces (store_spill_open). */
struct store_sidecar {
    char path[STORE_PATH_MAX];
    sqlite3 *db;
    sqlite3_stmt *del_run;      /* spill_deletes: the run, voiding its earlier rows */
    sqlite3_stmt *add_row;      /* spill_log */
    sqlite3_stmt *set_seq;
    sqlite3_stmt *count_piece;  /* nodestate_meta 'pieces' + 1 */
    store_isolation iso;        /* reused by every append */
};

/* Counts the pieces a sidecar holds, so replay can say how many it restored. */
static const char store_spill_count_piece_sql[] =
    "INSERT INTO nodestate_meta (key, value) VALUES ('pieces', 1)"
    " ON CONFLICT (key) DO UPDATE SET value = value + 1";

void store_spill_close(store_sidecar *sc)
{
    if (sc == NULL)
        return;
    sqlite3_finalize(sc->del_run);
    sqlite3_finalize(sc->add_row);
    sqlite3_finalize(sc->set_seq);
    sqlite3_finalize(sc->count_piece);
    sqlite3_close(sc->db);
    free(sc->iso.v);
    free(sc);
}

/*
 * The sidecar uses a rollback journal and synchronous=FULL whatever the
 * database does: it exists because the process is going away, and each
 * piece must survive a power loss that follows, while a piece cut short by
 * SIGKILL is rolled back from its journal by the next open.
 */
store_sidecar *store_spill_open(const char *db_path, char *err, size_t errlen)
{
    char path[STORE_PATH_MAX];

    if (db_path == NULL || db_path[0] == '\0') {
        store_set_err(err, errlen, "(none)", "no database path given");
        return NULL;
    }
    if (store_path_with(db_path, ".spill", path, sizeof path, err, errlen)
        != 0)
        return NULL;
    return store_spill_open_file(path, err, errlen);
}

store_sidecar *store_spill_open_file(const char *spill_path, char *err,
                                     size_t errlen)
{
    char msg[STORE_ERRMSG_MAX];
    int64_t version = 0;
    store_sidecar *sc;

    if (spill_path == NULL || spill_path[0] == '\0') {
        store_set_err(err, errlen, "(none)", "no spill path given");
        return NULL;
    }
    sc = calloc(1, sizeof *sc);
    if (sc == NULL) {
        store_set_err(err, errlen, spill_path, "out of memory");
        return NULL;
    }
    if (store_path_with(spill_path, "", sc->path, sizeof sc->path, err,
                        errlen) != 0)
        goto err;
    if (sqlite3_open_v2(sc->path, &sc->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE
                            | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        store_set_db_err(err, errlen, sc->path, sc->db, "opening spill file");
        goto err;
    }
    if (sqlite3_busy_timeout(sc->db, STORE_SPILL_BUSY_MS) != SQLITE_OK
        || store_exec(sc->db, "PRAGMA journal_mode = DELETE") != SQLITE_OK
        || store_exec(sc->db, "PRAGMA synchronous = FULL") != SQLITE_OK
        || store_exec(sc->db, "PRAGMA cache_size = " STORE_SPILL_CACHE_SIZE)
               != SQLITE_OK
        || store_query_int(sc->db, "PRAGMA user_version", &version)
               != SQLITE_OK) {
        store_set_db_err(err, errlen, sc->path, sc->db, "opening spill file");
        goto err;
    }
    if (version > STORE_SPILL_SCHEMA_VERSION) {
        snprintf(msg, sizeof msg,
                 "spill file schema version %lld is newer than this "
                 "nodestate supports (%d)", (long long)version,
                 STORE_SPILL_SCHEMA_VERSION);
        store_set_err(err, errlen, sc->path, msg);
        goto err;
    }
    /* Its own transaction: a piece killed half-way then leaves no schema half-made. */
    if (store_exec(sc->db, "BEGIN IMMEDIATE") != SQLITE_OK
        || store_exec(sc->db, store_spill_schema_sql) != SQLITE_OK
        || store_exec(sc->db, "COMMIT") != SQLITE_OK) {
        store_set_db_err(err, errlen, sc->path, sc->db,
                         "creating spill schema");
        store_rollback(sc->db);
        goto err;
    }
    if (store_prepare(sc->db, store_spill_delete_sql, &sc->del_run, err,
                      errlen, sc->path) != 0
        || store_prepare_row(sc->db, store_spill_row_sql, true, &sc->add_row,
                             err, errlen, sc->path) != 0
        || store_prepare(sc->db, store_set_seq_sql, &sc->set_seq, err,
                         errlen, sc->path) != 0
        || store_prepare(sc->db, store_spill_count_piece_sql,
                         &sc->count_piece, err, errlen, sc->path) != 0)
        goto err;
    return sc;

err:
    store_spill_close(sc);
    return NULL;
}

/*
 * One piece, one transaction: the runs deleted (voiding their rows of
 * earlier pieces), the rows appended to the log, last_seq, the piece count.
 */
int store_spill_append(store_sidecar *sc, const store_batch *b, char *err,
                       size_t errlen)
{
    char msg[STORE_ERRMSG_MAX];

    if (!store_batch_valid(b)) {
        store_set_err(err, errlen, sc->path, "invalid batch");
        return -1;
    }
    sc->iso.n = 0;
    if (store_exec(sc->db, "BEGIN IMMEDIATE") != SQLITE_OK) {
        store_set_db_err(err, errlen, sc->path, sc->db, "spill: begin");
        goto err;
    }
    for (size_t i = 0; i < b->n_deletes; i++) {
        const char *run = b->delete_runs[i];

        if (sqlite3_bind_text(sc->del_run, 1, run, -1, SQLITE_STATIC)
                != SQLITE_OK
            || (b->delete_seqs != NULL
                && sqlite3_bind_int64(sc->del_run, 2, b->delete_seqs[i]) != SQLITE_OK)
            || store_step_once(sc->del_run) != SQLITE_DONE) {
            store_set_db_err(err, errlen, sc->path, sc->db,
                             "spill: delete run");
            goto err;
        }
    }
    if (store_upsert_rows(sc->db, sc->add_row, b->rows, b->n_rows, NULL,
                          &sc->iso, msg, sizeof msg) != 0) {
        store_set_err(err, errlen, sc->path, msg);
        goto err;
    }
    if (sqlite3_bind_int64(sc->set_seq, 1, b->last_seq) != SQLITE_OK
        || store_step_once(sc->set_seq) != SQLITE_DONE
        || store_step_once(sc->count_piece) != SQLITE_DONE) {
        store_set_db_err(err, errlen, sc->path, sc->db, "spill: last_seq");
        goto err;
    }
    if (store_exec(sc->db, "COMMIT") != SQLITE_OK) {
        store_set_db_err(err, errlen, sc->path, sc->db, "spill: commit");
        goto err;
    }
    store_isolation_report(&sc->iso, b);
    return 0;

err:
    sqlite3_clear_bindings(sc->del_run);
    store_rollback(sc->db);
    return -1;
}

int store_spill(const char *db_path, const store_batch *b, char *err,
                size_t errlen)
{
    store_sidecar *sc = store_spill_open(db_path, err, errlen);
    int ret;

    if (sc == NULL)
        return -1;
    ret = store_spill_append(sc, b, err, errlen);
    store_spill_close(sc);
    return ret;
}

/* Removes a file that may not exist. 0, or -1 with err set. */
static int store_unlink(const char *path, const char *suffix, char *err,
                        size_t errlen)
{
    char p[STORE_PATH_MAX + 16];
    char msg[STORE_ERRMSG_MAX];

    if (store_path_with(path, suffix, p, sizeof p, err, errlen) != 0)
        return -1;
    if (unlink(p) != 0 && errno != ENOENT) {
        snprintf(msg, sizeof msg, "spill replayed, but cannot remove: %s",
                 strerror(errno));
        store_set_err(err, errlen, p, msg);
        return -1;
    }
    return 0;
}

/*
 * Removes a replayed (or empty) sidecar. The file itself goes first: a
 * leftover journal next to no database is harmless, while a leftover
 * database would be replayed again, its deletes included, over newer rows.
 */
static int store_remove_spill(const char *spill, char *err, size_t errlen)
{
    static const char *const suffixes[] = {"", "-journal", "-wal", "-shm"};

    for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++)
        if (store_unlink(spill, suffixes[i], err, errlen) != 0)
            return -1;
    return 0;
}

/* What store_spill_kind finds in a sidecar (bits). */
enum { STORE_SPILL_V1 = 1, STORE_SPILL_LOG = 2 };

/*
 * Checks the attached sidecar: STORE_SPILL_LOG when it holds the log of
 * this build, STORE_SPILL_V1 for the tables of earlier builds (both bits
 * for both), 0 when it holds nothing (a spill whose first transaction never
 * committed), -1 with err set for anything else.
 */
static int store_spill_kind(sqlite3 *db, const char *spill, char *err,
                            size_t errlen)
{
    int64_t version = 0, tables = 0, ours = 0, log = 0;
    char msg[STORE_ERRMSG_MAX];
    int kind = 0;

    if (store_query_int(db, "PRAGMA " STORE_SPILL_SCHEMA ".user_version",
                        &version) != SQLITE_OK
        || store_query_int(db,
                           "SELECT count(*) FROM " STORE_SPILL_SCHEMA
                           ".sqlite_master WHERE type = 'table'",
                           &tables) != SQLITE_OK
        || store_query_int(db,
                           "SELECT count(*) FROM " STORE_SPILL_SCHEMA
                           ".sqlite_master WHERE type = 'table' AND name IN"
                           " ('run_node_state', 'nodestate_meta',"
                           "  'spilled_deletes')",
                           &ours) != SQLITE_OK
        || store_query_int(db,
                           "SELECT count(*) FROM " STORE_SPILL_SCHEMA
                           ".sqlite_master WHERE type = 'table' AND name IN"
                           " ('spill_log', 'spill_deletes', 'nodestate_meta')",
                           &log) != SQLITE_OK) {
        store_set_db_err(err, errlen, spill, db, "reading spill file");
        return -1;
    }
    if (version == 0 && tables == 0)
        return 0;
    if (ours == 3)
        kind |= STORE_SPILL_V1;
    if (log == 3)
        kind |= STORE_SPILL_LOG;
    if (version != STORE_SPILL_SCHEMA_VERSION || kind == 0) {
        snprintf(msg, sizeof msg,
                 "not a nodestate spill file of schema version %d "
                 "(user_version %lld); move it away to start",
                 STORE_SPILL_SCHEMA_VERSION, (long long)version);
        store_set_err(err, errlen, spill, msg);
        return -1;
    }
    return kind;
}

/*
 * Whether the sidecar's rollback journal holds content: the process that
 * wrote the sidecar died inside a piece's transaction. Attaching rolls that
 * piece back (SQLite's hot journal), and the caller is told, so it is never
 * dropped silently.
 */
static bool store_spill_torn(const char *spill)
{
    char journal[STORE_PATH_MAX + 16];
    struct stat sb;

    if (snprintf(journal, sizeof journal, "%s-journal", spill)
        >= (int)sizeof journal)
        return false;
    return stat(journal, &sb) == 0 && sb.st_size > 0;
}

int sqlite_store_replay(sqlite_store *s, const char *spill_path, const char *notify_id,
                        store_replayed *out, char *err, size_t errlen)
{
    (void)notify_id; /* one process writes the file: no one to tell */
    char spill[STORE_PATH_MAX];
    struct stat sb;
    sqlite3_stmt *attach = NULL;
    int64_t n_rows = 0, n_deletes = 0, n_pieces = 0, last_seq = 0;
    int64_t v1_rows = 0, v1_deletes = 0;
    bool attached = false;
    int kind;
    int ret = -1;

    memset(out, 0, sizeof *out);
    if (store_path_with(spill_path, "", spill, sizeof spill, err, errlen)
        != 0)
        return -1;
    if (stat(spill, &sb) != 0) {
        if (errno == ENOENT)
            return 0;
        store_set_err(err, errlen, spill, strerror(errno));
        return -1;
    }
    out->torn = store_spill_torn(spill);
    /* An empty file is a spill that never got its schema: nothing to do. */
    if (sb.st_size == 0)
        return store_remove_spill(spill, err, errlen);

    if (sqlite3_prepare_v2(s->db, "ATTACH DATABASE ?1 AS " STORE_SPILL_SCHEMA,
                           -1, &attach, NULL) != SQLITE_OK
        || sqlite3_bind_text(attach, 1, spill, -1, SQLITE_STATIC)
               != SQLITE_OK
        || sqlite3_step(attach) != SQLITE_DONE) {
        store_set_db_err(err, errlen, spill, s->db, "attaching spill file");
        goto out;
    }
    attached = true;
    /* The first read of the attached file rolls a torn piece back. */
    kind = store_spill_kind(s->db, spill, err, errlen);
    if (kind < 0)
        goto out;
    if (kind == 0) {
        ret = 0;
        goto out;
    }
    /* BEGIN IMMEDIATE takes the main file's write lock, or fails if held. */
    if (store_exec(s->db, "BEGIN IMMEDIATE") != SQLITE_OK) {
        store_set_db_err(err, errlen, s->path, s->db, "replaying spill file");
        goto out;
    }
    /* Tables of an earlier build first: anything in the log came after them. */
    if (((kind & STORE_SPILL_V1)
         && (store_query_int(s->db,
                             "SELECT count(*) FROM " STORE_SPILL_SCHEMA
                             ".run_node_state", &v1_rows) != SQLITE_OK
             || store_query_int(s->db,
                                "SELECT count(*) FROM " STORE_SPILL_SCHEMA
                                ".spilled_deletes", &v1_deletes) != SQLITE_OK
             || store_exec(s->db, store_replay_v1_sql) != SQLITE_OK))
        || ((kind & STORE_SPILL_LOG)
            && (store_query_int(s->db,
                                "SELECT count(*) FROM (SELECT DISTINCT"
                                " run_id, node_id" STORE_SPILL_LIVE ")",
                                &n_rows) != SQLITE_OK
                || store_query_int(s->db,
                                   "SELECT count(*) FROM " STORE_SPILL_SCHEMA
                                   ".spill_deletes", &n_deletes) != SQLITE_OK
                || store_exec(s->db, store_replay_log_sql) != SQLITE_OK))
        || store_query_int(s->db,
                           "SELECT value FROM " STORE_SPILL_SCHEMA
                           ".nodestate_meta WHERE key = 'pieces'", &n_pieces)
               != SQLITE_OK
        || store_query_int(s->db, "SELECT value FROM main.nodestate_meta"
                                  " WHERE key = 'last_seq'", &last_seq)
               != SQLITE_OK
        || store_exec(s->db, "COMMIT") != SQLITE_OK) {
        store_set_db_err(err, errlen, s->path, s->db, "replaying spill file");
        goto out;
    }
    /* On disk before the sidecar, which was, goes (synchronous=normal would not sync it). */
    if (store_wal_sync(s->db) != SQLITE_OK) {
        store_set_db_err(err, errlen, s->path, s->db, "syncing the replayed spill file");
        goto out;
    }
    if (last_seq > s->last_seq)
        s->last_seq = last_seq;
    n_rows += v1_rows;
    n_deletes += v1_deletes;
    out->rows = (size_t)n_rows;
    out->deletes = (size_t)n_deletes;
    /* A sidecar of an earlier build counted no pieces: it was written as one. */
    out->pieces = n_pieces > 0 ? (size_t)n_pieces
                  : n_rows > 0 || n_deletes > 0 ? 1 : 0;
    ret = 0;

out:
    sqlite3_finalize(attach);
    store_rollback(s->db);
    /* Every statement is reset or finalized, so DETACH cannot be refused. */
    if (attached && store_exec(s->db, "DETACH DATABASE " STORE_SPILL_SCHEMA)
                        != SQLITE_OK
        && ret == 0) {
        store_set_db_err(err, errlen, spill, s->db, "detaching spill file");
        ret = -1;
    }
    /* Only once the content is in the database (or there was none). */
    if (ret == 0 && attached)
        ret = store_remove_spill(spill, err, errlen);
    if (ret != 0)
        out->rows = out->deletes = out->pieces = 0;
    return ret;
}


/* ---- the sidecar read for another backend's replay (store_ops.h) ---- */

int store_spill_remove(const char *spill_path, char *err, size_t errlen)
{
    return store_remove_spill(spill_path, err, errlen);
}

void store_spill_content_free(store_spill_content *c)
{
    for (size_t i = 0; i < c->n_deletes; i++)
        free(c->deletes[i]);
    for (size_t i = 0; i < c->n_rows; i++)
        model_row_unref(c->rows[i]);
    free(c->deletes);
    free(c->delete_seqs);
    free(c->rows);
    memset(c, 0, sizeof *c);
}

/* Appends p to a growing array of pointers. 0, -1 out of memory. */
static int store_push(void ***v, size_t *n, size_t *cap, void *p)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 16;
        void **grown = realloc(*v, c * sizeof *grown);
        if (grown == NULL)
            return -1;
        *v = grown;
        *cap = c;
    }
    (*v)[(*n)++] = p;
    return 0;
}

/*
 * The sidecar is attached to an in-memory database under the same schema
 * name as in store_replay, so the same queries read it.
 */
int store_spill_read(const char *spill_path, store_spill_content *out,
                     char *err, size_t errlen)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    struct stat sb;
    size_t cap_del = 0, cap_rows = 0;
    int64_t pieces = 0;
    int kind, rc, ret = -1;
    char *sel = NULL;

    memset(out, 0, sizeof *out);
    if (stat(spill_path, &sb) != 0) {
        if (errno == ENOENT)
            return 0;
        store_set_err(err, errlen, spill_path, strerror(errno));
        return -1;
    }
    out->info.torn = store_spill_torn(spill_path);
    if (sb.st_size == 0)
        return 0;
    if (sqlite3_open_v2(":memory:", &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK
        || sqlite3_prepare_v2(db, "ATTACH DATABASE ?1 AS " STORE_SPILL_SCHEMA, -1,
                              &st, NULL) != SQLITE_OK
        || sqlite3_bind_text(st, 1, spill_path, -1, SQLITE_STATIC) != SQLITE_OK
        || sqlite3_step(st) != SQLITE_DONE) {
        store_set_db_err(err, errlen, spill_path, db, "attaching spill file");
        goto out;
    }
    sqlite3_finalize(st);
    st = NULL;
    kind = store_spill_kind(db, spill_path, err, errlen);
    if (kind < 0)
        goto out;
    if (kind == 0) {
        ret = 0;
        goto out;
    }
    if (kind & STORE_SPILL_V1) {
        store_set_err(err, errlen, spill_path,
                      "a sidecar of an earlier build replays into SQLite only");
        goto out;
    }
    if (sqlite3_prepare_v2(db, "SELECT run_id, before_seq FROM " STORE_SPILL_SCHEMA
                               ".spill_deletes", -1, &st, NULL) != SQLITE_OK)
        goto db_err;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        char *id = strdup((const char *)sqlite3_column_text(st, 0));
        size_t cap = cap_del;
        if (id == NULL || store_push((void ***)&out->deletes, &out->n_deletes, &cap_del, id) != 0) {
            free(id);
            store_set_err(err, errlen, spill_path, "out of memory");
            goto out;
        }
        if (cap_del != cap) {
            int64_t *grown = realloc(out->delete_seqs, cap_del * sizeof *grown);
            if (grown == NULL) {
                store_set_err(err, errlen, spill_path, "out of memory");
                goto out;
            }
            out->delete_seqs = grown;
        }
        out->delete_seqs[out->n_deletes - 1] = sqlite3_column_int64(st, 1);
    }
    if (rc != SQLITE_DONE)
        goto db_err;
    sqlite3_finalize(st);
    st = NULL;
    /* In key order, each node's in seq order: the last of a node is its newest. */
    sel = store_sql("SELECT " STORE_COLUMNS STORE_SQL_JSON_VALID STORE_SPILL_LIVE
                    " ORDER BY run_id, node_id, seq");
    if (sel == NULL || sqlite3_prepare_v2(db, sel, -1, &st, NULL) != SQLITE_OK)
        goto db_err;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        ns_row draft;
        int drc = store_row_draft(st, &draft);
        if (drc < 0)
            goto db_err;
        if (drc > 0)
            continue;
        if (draft.seq > out->last_seq)
            out->last_seq = draft.seq;
        ns_row *prev = out->n_rows ? out->rows[out->n_rows - 1] : NULL;
        ns_row *row = model_row_copy(&draft);
        if (row == NULL)
            goto db_err;
        if (prev && strcmp(prev->run_id, row->run_id) == 0 &&
            strcmp(prev->node_id, row->node_id) == 0) {
            model_row_unref(prev);
            out->rows[out->n_rows - 1] = row;
            continue;
        }
        if (store_push((void ***)&out->rows, &out->n_rows, &cap_rows, row) != 0) {
            model_row_unref(row);
            goto db_err;
        }
    }
    if (rc != SQLITE_DONE)
        goto db_err;
    sqlite3_finalize(st);
    st = NULL;
    if (store_query_int(db, "SELECT value FROM " STORE_SPILL_SCHEMA
                            ".nodestate_meta WHERE key = 'pieces'", &pieces) != SQLITE_OK)
        goto db_err;
    {
        int64_t meta_seq = 0;
        if (store_query_int(db, "SELECT value FROM " STORE_SPILL_SCHEMA
                                ".nodestate_meta WHERE key = 'last_seq'", &meta_seq) != SQLITE_OK)
            goto db_err;
        if (meta_seq > out->last_seq)
            out->last_seq = meta_seq;
    }
    out->info.rows = out->n_rows;
    out->info.deletes = out->n_deletes;
    out->info.pieces = pieces > 0 ? (size_t)pieces : out->n_rows || out->n_deletes ? 1 : 0;
    ret = 0;
    goto out;
db_err:
    store_set_db_err(err, errlen, spill_path, db, "reading spill file");
out:
    free(sel);
    sqlite3_finalize(st);
    sqlite3_close(db);
    if (ret != 0) {
        bool torn = out->info.torn;
        store_spill_content_free(out);
        out->info.torn = torn;
    }
    return ret;
}
