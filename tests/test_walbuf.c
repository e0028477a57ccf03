/*
 * Unit tests for sqlite_walbuf, mostly through the SQLite store's own write
 * connection (sqlite_store_open opens its file with that VFS): a commit is
 * in the file for every other connection the moment it returns; a process
 * killed right after a commit loses none of it, also when the transaction
 * was too big for the page cache, so SQLite wrote pages early and rewrote
 * them in place at the commit (the writes that bypass the buffer); a write
 * the file refuses fails the commit instead of going missing, also when it
 * surfaces in a read; a psow=0 file, whose commits SQLite pads, has whole
 * frames after each commit; and a replayed sidecar is synced before it
 * goes.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>

#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sqlite_internal.h"
#include "store_fixture.h"

static void setup(void)
{
    sfx_setup("test_walbuf");
}

TestSuite(walbuf, .init = setup, .fini = sfx_teardown);

#define NODES 3000

typedef struct nodes {
    char ids[NODES][16];
    ns_row rows[NODES];
    ns_row *ptrs[NODES];
    int64_t seq;
} nodes;

static nodes *nodes_new(void)
{
    nodes *n = calloc(1, sizeof *n);
    cr_assert(n != NULL);
    /* Ids in a scattered order, so a big transaction comes back to pages it wrote already. */
    for (size_t i = 0; i < NODES; i++)
        snprintf(n->ids[i], sizeof n->ids[i], "n%06zu", (i * 7919) % NODES);
    return n;
}

/* Writes nodes [first, first+count) with status st in one commit; store_write's result. */
static int write_nodes(sqlite_store *s, nodes *n, size_t first, size_t count, ns_status st)
{
    for (size_t k = 0; k < count; k++) {
        n->rows[k] = sfx_draft("run", n->ids[first + k], st, ++n->seq);
        n->ptrs[k] = &n->rows[k];
    }
    store_batch b = {.rows = n->ptrs, .n_rows = count, .last_seq = n->seq};
    return sqlite_store_write(s, &b);
}

static sqlite_store *open_writer(void)
{
    char err[512];
    sqlite_store *s = sqlite_store_open(sfx_db_path(), false, err, sizeof err);
    cr_assert(s != NULL, "sqlite_store_open: %s", err);
    return s;
}

/* One integer from a connection of its own, opened without the buffering VFS. */
static long long query_int(const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long long v = -1;
    cr_assert(sqlite3_open_v2(sfx_db_path(), &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK);
    cr_assert(sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK, "%s: %s", sql,
              sqlite3_errmsg(db));
    int rc = sqlite3_step(st);
    cr_assert(rc == SQLITE_ROW, "%s: %s (%d)", sql, sqlite3_errmsg(db), sqlite3_extended_errcode(db));
    v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* 1 when SQLite finds the file sound. */
#define INTEGRITY_OK "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'"

static store_walbuf_stats counts(sqlite_store *s)
{
    store_walbuf_stats got;
    cr_assert(eq(int, store_walbuf_counts(s->db, &got), 0),
              "the write connection's WAL is not the buffering VFS's");
    return got;
}

Test(walbuf, a_commit_is_in_the_file_when_it_returns)
{
    nodes *n = nodes_new();
    sqlite_store *s = open_writer();
    cr_assert(eq(int, write_nodes(s, n, 0, 10, NS_SCHEDULED), 0), "%s", sqlite_store_errmsg(s));
    store_walbuf_stats before = counts(s);
    for (size_t k = 1; k <= 5; k++) {
        cr_assert(eq(int, write_nodes(s, n, 0, 100 * k, NS_RUNNING), 0), "%s",
                  sqlite_store_errmsg(s));
        /* Read by another connection while the writer stays open. */
        cr_assert(eq(i64, query_int("SELECT count(*) FROM run_node_state WHERE status = 'running'"),
                     (long long)(100 * k)));
        cr_assert(eq(i64, query_int("SELECT value FROM nodestate_meta WHERE key = 'last_seq'"),
                     n->seq));
    }
    store_walbuf_stats after = counts(s);
    cr_assert(ge(u64, after.sends - before.sends, 5), "%lu buffers sent for 5 commits",
              after.sends - before.sends);
    /* And they were buffered: none of these small commits rewrote a frame. */
    cr_assert(eq(u64, after.through - before.through, 0), "%lu writes went around the buffer",
              after.through - before.through);
    cr_assert(eq(i64, query_int(INTEGRITY_OK), 1));
    sqlite_store_close(s);
    free(n);
}

/*
 * The child writes through the VFS on a connection of its own, not the
 * store: the store starts a checkpoint thread, and a thread started after
 * fork() in a test process that has threads already is what
 * ThreadSanitizer refuses to run.
 */
Test(walbuf, a_process_killed_after_a_spilling_commit_loses_none_of_it)
{
    int pipefd[2];
    cr_assert(eq(int, pipe(pipefd), 0));
    pid_t pid = fork();
    cr_assert(ne(int, pid, -1));
    if (pid == 0) {
        sqlite3 *db = NULL;
        store_walbuf_stats st;
        const char *vfs = store_walbuf_vfs();
        /* A page cache of a few pages: the transaction writes pages early and again at COMMIT. */
        if (vfs == NULL
            || sqlite3_open_v2(sfx_db_path(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, vfs)
                   != SQLITE_OK
            || sqlite3_exec(db,
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;"
                            "PRAGMA cache_size = 4;"
                            "CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;"
                            "BEGIN;"
                            "WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c"
                            " WHERE i < 2999) INSERT INTO t"
                            " SELECT printf('n%06d', i * 7919 % 3000), randomblob(200) FROM c;"
                            "COMMIT",
                            NULL, NULL, NULL) != SQLITE_OK
            || store_walbuf_counts(db, &st) != 0
            /* And a small one after it, which SQLite has no reason to read back. */
            || sqlite3_exec(db, "UPDATE t SET v = x'00' WHERE k < 'n000010'", NULL, NULL, NULL)
                   != SQLITE_OK)
            _exit(1);
        unsigned long got[2] = {st.sends, st.through};
        if (write(pipefd[1], got, sizeof got) != (ssize_t)sizeof got)
            _exit(1);
        /* No close, no flush of anything: killed the moment COMMIT returned. */
        kill(getpid(), SIGKILL);
        _exit(1);
    }
    close(pipefd[1]);
    unsigned long got[2] = {0, 0};
    ssize_t r = read(pipefd[0], got, sizeof got);
    close(pipefd[0]);
    int status = 0;
    cr_assert(eq(int, waitpid(pid, &status, 0), pid));
    bool killed = WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
    cr_assert(killed, "the writer exited %d", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    cr_assert(eq(sz, (size_t)r, sizeof got), "the writer failed before its commit returned");
    /* The rewrites in place happened (else this test proves nothing about them). */
    cr_assert(got[1] > 0, "no write went around the buffer (%lu sent)", got[0]);
    cr_assert(eq(i64, query_int("SELECT count(*) FROM t"), 3000));
    cr_assert(eq(i64, query_int("SELECT count(*) FROM t WHERE v = x'00'"), 10));
    cr_assert(eq(i64, query_int(INTEGRITY_OK), 1));
}

static long long wal_size(void)
{
    char path[STORE_PATH_MAX];
    struct stat st;
    snprintf(path, sizeof path, "%s-wal", sfx_db_path());
    return stat(path, &st) == 0 ? (long long)st.st_size : -1;
}

Test(walbuf, a_write_the_file_refuses_fails_the_commit)
{
    nodes *n = nodes_new();
    sqlite_store *s = open_writer();
    struct rlimit was, small;
    cr_assert(eq(int, write_nodes(s, n, 0, 10, NS_SCHEDULED), 0), "%s", sqlite_store_errmsg(s));
    /* The next commit's frames do not fit under the file size limit (EFBIG, not a signal). */
    cr_assert(signal(SIGXFSZ, SIG_IGN) != SIG_ERR);
    cr_assert(eq(int, getrlimit(RLIMIT_FSIZE, &was), 0));
    small = was;
    small.rlim_cur = (rlim_t)wal_size() + 8192;
    cr_assert(eq(int, setrlimit(RLIMIT_FSIZE, &small), 0));
    int64_t seq_before = n->seq;
    cr_assert(eq(int, write_nodes(s, n, 10, 1000, NS_SCHEDULED), -1),
              "a commit past the size limit succeeded");
    cr_assert(ne(str, (char *)sqlite_store_errmsg(s), ""));
    cr_assert(eq(i64, sqlite_store_last_seq(s), seq_before));
    /* Nothing of it is in the file, and the same batch commits once the file may grow. */
    cr_assert(eq(int, setrlimit(RLIMIT_FSIZE, &was), 0));
    cr_assert(eq(i64, query_int("SELECT count(*) FROM run_node_state"), 10));
    n->seq = seq_before;
    cr_assert(eq(int, write_nodes(s, n, 10, 1000, NS_SCHEDULED), 0), "%s", sqlite_store_errmsg(s));
    cr_assert(eq(i64, query_int("SELECT count(*) FROM run_node_state"), 1010));
    sqlite_store_close(s);
    cr_assert(eq(i64, query_int("SELECT count(*) FROM run_node_state"), 1010));
    cr_assert(eq(i64, query_int("SELECT value FROM nodestate_meta WHERE key = 'last_seq'"), n->seq));
    cr_assert(eq(i64, query_int(INTEGRITY_OK), 1));
    free(n);
}

/* Bytes of a WAL frame at the default 4096-byte page: its 24-byte header and the page. */
#define FRAME_4K (24 + 4096)

/*
 * Without powersafe overwrite (psow=0) and with synchronous=FULL, SQLite
 * pads a commit to the next sector boundary with copies of the commit frame
 * (sqlite3WalFrames), and walWriteToLog writes the one frame that crosses
 * the boundary in two pieces with an fsync between them: the piece after the
 * sync is written after the commit frame and its page, and must not wait in
 * the buffer past the end of COMMIT.
 */
Test(walbuf, a_padded_commit_under_synchronous_full_is_whole_in_the_file)
{
    char uri[STORE_PATH_MAX + 32], err[512];
    nodes *n = nodes_new();
    snprintf(uri, sizeof uri, "file:%s?psow=0", sfx_db_path());
    sqlite_store *s = sqlite_store_open(uri, true, err, sizeof err);
    cr_assert(s != NULL, "sqlite_store_open: %s", err);
    for (size_t k = 1; k <= 8; k++) {
        cr_assert(eq(int, write_nodes(s, n, 0, 37 * k, NS_RUNNING), 0), "%s",
                  sqlite_store_errmsg(s));
        /* Whole frames only: the WAL header, then frames of header and page. */
        long long size = wal_size();
        cr_assert(eq(i64, (size - 32) % FRAME_4K, 0),
                  "commit %zu left %lld bytes of a frame out of the WAL (%lld bytes)", k,
                  (size - 32) % FRAME_4K, size);
        cr_assert(eq(i64, query_int(INTEGRITY_OK), 1));
        cr_assert(eq(i64, query_int("SELECT value FROM nodestate_meta WHERE key = 'last_seq'"),
                     n->seq));
    }
    /*
     * Commits of one or two frames, so that some commit ends where the
     * sector boundary falls inside the next frame's header (frame 170 at
     * 4096-byte pages and sectors): the header itself is split by the fsync.
     */
    for (int64_t k = 1; k <= 240; k++) {
        cr_assert(eq(int, sqlite_store_meta_set(s, "walbuf_test", k), 0), "%s",
                  sqlite_store_errmsg(s));
        if (k % 5 == 0)
            cr_assert(eq(int, write_nodes(s, n, 0, 3, NS_RUNNING), 0), "%s",
                      sqlite_store_errmsg(s));
        long long size = wal_size();
        cr_assert(eq(i64, (size - 32) % FRAME_4K, 0),
                  "commit of meta %lld left %lld bytes of a frame out of the WAL (%lld bytes)",
                  (long long)k, (size - 32) % FRAME_4K, size);
        cr_assert(eq(i64, query_int("SELECT value FROM nodestate_meta WHERE key = 'walbuf_test'"),
                     k));
    }
    cr_assert(eq(i64, query_int(INTEGRITY_OK), 1));
    sqlite_store_close(s);
    free(n);
}

/*
 * A default VFS whose WAL files refuse writes with SQLITE_FULL while armed,
 * as on a full disk (RLIMIT_FSIZE gives EFBIG, an I/O error, instead).
 * Its WAL file is the real VFS's own struct with a copy of the real
 * methods, so a write finds the flag from the methods it was given.
 */
typedef struct full_vfs {
    sqlite3_vfs vfs;
    sqlite3_vfs *real;
    sqlite3_io_methods methods;
    int (*real_write)(sqlite3_file *, const void *, int, sqlite3_int64);
    bool armed;
    unsigned long refused;
} full_vfs;

static int full_write(sqlite3_file *file, const void *data, int amount, sqlite3_int64 at)
{
    full_vfs *v = (full_vfs *)(void *)((char *)(void *)file->pMethods - offsetof(full_vfs, methods));
    if (v->armed) {
        v->refused++;
        return SQLITE_FULL;
    }
    return v->real_write(file, data, amount, at);
}

static int full_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags,
                     int *out_flags)
{
    full_vfs *v = vfs->pAppData;
    int rc = v->real->xOpen(v->real, name, file, flags, out_flags);
    if (rc == SQLITE_OK && (flags & SQLITE_OPEN_WAL)) {
        if (v->real_write == NULL) {
            v->methods = *file->pMethods;
            v->real_write = v->methods.xWrite;
            v->methods.xWrite = full_write;
        }
        file->pMethods = &v->methods;
    }
    return rc;
}

/* Before the store's first open, so the buffering VFS wraps this one. */
static full_vfs *full_vfs_install(void)
{
    cr_assert(sqlite3_vfs_find("nodestate-walbuf") == NULL,
              "the buffering VFS exists already (run this test in a process of its own)");
    full_vfs *v = calloc(1, sizeof *v);
    cr_assert(v != NULL);
    v->real = sqlite3_vfs_find(NULL);
    v->vfs = *v->real;
    v->vfs.pNext = NULL;
    v->vfs.zName = "test-full";
    v->vfs.pAppData = v;
    v->vfs.xOpen = full_open;
    cr_assert(eq(int, sqlite3_vfs_register(&v->vfs, 1), SQLITE_OK));
    return v;
}

static int exec_rc(sqlite3 *db, const char *sql)
{
    return sqlite3_exec(db, sql, NULL, NULL, NULL);
}

/*
 * Frames SQLite wrote early (pages spilled from a small cache) wait in the
 * buffer; the next read of the WAL sends them first and the disk is full.
 * SQLite took those writes as done, and an SQLITE_FULL from a read only
 * rolls back the statement (one with a statement journal), so the
 * transaction goes on and its COMMIT would succeed over frames that are
 * not in the file. Whatever COMMIT answers must then be true.
 */
Test(walbuf, a_send_that_fails_in_a_read_never_lets_the_commit_claim_the_frames)
{
    full_vfs *v = full_vfs_install();
    sqlite_store *s = open_writer();
    sqlite3 *db = s->db;
    cr_assert(eq(int, exec_rc(db, "PRAGMA cache_size = 10"), SQLITE_OK));
    cr_assert(eq(int, exec_rc(db, "BEGIN IMMEDIATE"), SQLITE_OK));
    cr_assert(eq(int,
                 exec_rc(db, "CREATE TABLE big (k INTEGER PRIMARY KEY, v BLOB NOT NULL);"
                             "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c"
                             " WHERE i < 2000) INSERT INTO big SELECT i, randomblob(500) FROM c"),
                 SQLITE_OK),
              "%s", sqlite3_errmsg(db));
    v->armed = true;
    /* INSERT ... SELECT may abort half way, so it has a statement journal. */
    int rc = exec_rc(db, "INSERT INTO big SELECT k + 100000, v FROM big WHERE k % 7 = 0");
    v->armed = false;
    cr_assert(ne(int, rc, SQLITE_OK), "the statement succeeded on a full disk");
    cr_assert(v->refused > 0, "no write was refused (%d: %s)", rc, sqlite3_errmsg(db));
    int committed = exec_rc(db, "COMMIT") == SQLITE_OK;
    if (!committed)
        exec_rc(db, "ROLLBACK");
    cr_assert(eq(i64, query_int(INTEGRITY_OK), 1), "the file is corrupt after COMMIT %s",
              committed ? "succeeded" : "failed");
    if (committed)
        cr_assert(eq(i64, query_int("SELECT count(*) FROM big"), 2000));
    else
        cr_assert(eq(i64, query_int("SELECT count(*) FROM sqlite_master WHERE name = 'big'"), 0));
    /* And the store goes on writing once the disk has room. */
    nodes *n = nodes_new();
    cr_assert(eq(int, write_nodes(s, n, 0, 10, NS_SCHEDULED), 0), "%s", sqlite_store_errmsg(s));
    sqlite_store_close(s);
    cr_assert(eq(i64, query_int("SELECT count(*) FROM run_node_state"), 10));
    cr_assert(eq(i64, query_int(INTEGRITY_OK), 1));
    free(n);
}

Test(walbuf, a_replayed_sidecar_is_synced_before_it_is_removed)
{
    nodes *n = nodes_new();
    sqlite_store *s = open_writer();
    char spill[STORE_PATH_MAX], err[512];
    struct stat st;
    cr_assert(eq(int, write_nodes(s, n, 0, 10, NS_SCHEDULED), 0), "%s", sqlite_store_errmsg(s));
    /* A sidecar as a shutdown that could not commit leaves it: two rows of its own. */
    snprintf(spill, sizeof spill, "%s/walbuf.spill", sfx_dir());
    store_sidecar *sc = store_spill_open_file(spill, err, sizeof err);
    cr_assert(sc != NULL, "%s", err);
    ns_row rows[2] = {sfx_draft("spilled", "a", NS_RUNNING, 100),
                      sfx_draft("spilled", "b", NS_RUNNING, 101)};
    ns_row *ptrs[2] = {&rows[0], &rows[1]};
    store_batch b = {.rows = ptrs, .n_rows = 2, .last_seq = 101};
    cr_assert(eq(int, store_spill_append(sc, &b, err, sizeof err), 0), "%s", err);
    store_spill_close(sc);

    unsigned long syncs = counts(s).syncs;
    store_replayed got;
    cr_assert(eq(int, sqlite_store_replay(s, spill, NULL, &got, err, sizeof err), 0), "%s", err);
    cr_assert(eq(sz, got.rows, 2));
    /* synchronous=normal syncs no commit: the replay's own sync is what this counts. */
    unsigned long synced = counts(s).syncs;
    cr_assert(synced > syncs, "the replayed rows were not synced");
    cr_assert(ne(int, stat(spill, &st), 0), "the sidecar is still there");
    cr_assert(eq(i64, query_int("SELECT count(*) FROM run_node_state WHERE run_id = 'spilled'"),
                 2));
    sqlite_store_close(s);
    free(n);
}
