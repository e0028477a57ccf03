/*
 * Unit tests for sqlite_checkpoint: the write connection's WAL checkpoints
 * happen on a thread of their own, so a commit below the hard bound never
 * checkpoints (the main file grows only because that thread copied pages
 * into it), and under a steady stream of commits, which never leaves that
 * thread a fully checkpointed WAL to restart, the commits themselves keep
 * the WAL bounded. Every row written is in the file afterwards.
 *
 * The WAL is watched through its size on disk: SQLite reuses the file from
 * the start after a restart, so its size is the longest the WAL has been.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sqlite_internal.h"
#include "store_fixture.h"

static void setup(void)
{
    sfx_setup("test_checkpoint");
}

TestSuite(checkpoint, .init = setup, .fini = sfx_teardown);

/* Nodes of the one run the tests write; ids sort as their numbers do. */
#define NODES 50000
/* Rows updated per commit, each on a leaf page of its own. */
#define SPREAD 200

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
    for (size_t i = 0; i < NODES; i++)
        snprintf(n->ids[i], sizeof n->ids[i], "n%06zu", i);
    return n;
}

/* Writes nodes first, first+step, ... (count of them) in one commit. */
static void write_nodes(store *s, nodes *n, size_t first, size_t step, size_t count)
{
    for (size_t k = 0; k < count; k++) {
        size_t i = first + k * step;
        n->rows[k] = sfx_draft("run", n->ids[i], NS_RUNNING, ++n->seq);
        n->ptrs[k] = &n->rows[k];
    }
    store_batch b = {.rows = n->ptrs, .n_rows = count, .last_seq = n->seq};
    cr_assert(eq(int, store_write(s, &b), 0), "store_write: %s", store_errmsg(s));
}

static long long file_size(const char *suffix)
{
    char path[STORE_PATH_MAX];
    struct stat st;
    snprintf(path, sizeof path, "%s%s", sfx_db_path(), suffix);
    return stat(path, &st) == 0 ? (long long)st.st_size : 0;
}

/* Frames the WAL file has room for (4 KiB pages, 24-byte frame headers). */
static long long wal_frames(void)
{
    long long size = file_size("-wal");
    return size > 32 ? (size - 32) / (4096 + 24) : 0;
}

static long long rows_in_file(void)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long long n = -1;
    cr_assert(sqlite3_open_v2(sfx_db_path(), &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK);
    cr_assert(sqlite3_prepare_v2(db, "SELECT count(*) FROM run_node_state", -1, &st, NULL)
              == SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

static long long main_size_before;

static bool main_file_grew(void *ctx)
{
    (void)ctx;
    return file_size("") > main_size_before;
}

Test(checkpoint, the_thread_copies_pages_below_the_hard_bound)
{
    store *s = sfx_open_store();
    nodes *n = nodes_new();
    main_size_before = file_size("");
    /* Commits until the WAL holds more than the soft bound of frames, under the hard one. */
    write_nodes(s, n, 0, 1, NODES);
    for (size_t j = 0; wal_frames() < STORE_WAL_SOFT_FRAMES; j++)
        write_nodes(s, n, j, NODES / SPREAD, SPREAD);
    long long frames = wal_frames();
    cr_assert(ge(i64, frames, STORE_WAL_SOFT_FRAMES), "the commit wrote %lld frames", frames);
    cr_assert(lt(i64, frames, STORE_WAL_HARD_FRAMES), "the commit wrote %lld frames", frames);
    /* Only a checkpoint writes the main file, and no commit made one. */
    bool grew = false;
    for (int i = 0; i < 3000 && !(grew = main_file_grew(NULL)); i++)
        sfx_sleep_ms(10);
    cr_assert(grew, "the main file is still %lld bytes", file_size(""));
    store_close(s);
    cr_assert(eq(i64, rows_in_file(), NODES));
    free(n);
}

Test(checkpoint, steady_commits_keep_the_wal_bounded)
{
    store *s = sfx_open_store();
    nodes *n = nodes_new();
    write_nodes(s, n, 0, 1, NODES);
    /*
     * Commits back to back, each touching SPREAD leaves, for five times the
     * hard bound of frames: without the commits' own checkpoints the WAL
     * would hold them all, since it restarts only when fully checkpointed.
     */
    long long written = 0, longest = 0;
    size_t stride = NODES / SPREAD;
    for (size_t j = 0; written < 5LL * STORE_WAL_HARD_FRAMES; j++) {
        long long before = wal_frames();
        write_nodes(s, n, j % stride, stride, SPREAD);
        long long after = wal_frames();
        written += after > before ? after - before : SPREAD;
        if (after > longest)
            longest = after;
    }
    /* The commit that reaches twice the hard bound checkpoints all; the next one restarts. */
    cr_assert(le(i64, longest, 2LL * STORE_WAL_HARD_FRAMES + 2 * SPREAD + 100),
              "the WAL grew to %lld frames after %lld written", longest, written);
    store_close(s);
    cr_assert(eq(i64, rows_in_file(), NODES));
    free(n);
}
