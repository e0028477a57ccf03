/*
 * Unit tests for sqlite_pcache: the page cache that holds a page moved
 * past every page it has held under the next free number instead.
 *
 * The cache's own calls, made the way SQLite makes them: a page moved to
 * the spare number is found under that number and nowhere else, the swap
 * through it leaves every page under the number SQLite gave it, a real page
 * asked for under the alias's number gets a page of its own (the alias
 * moving on, up to its own number at most), and an alias that is let go or
 * truncated behaves as the default cache would, also once it has moved past
 * pages held beyond the spare number.
 * Then a real file: commits of a dozen rows over many key ranges split
 * pages (the swaps happen) and the file stays whole, with every row, also
 * when the file is larger than the spare number (SQLite's pending byte
 * moved down so that a small file crosses it).
 *
 * Each Criterion test runs in a process of its own, so each installs the
 * cache before SQLite initialises.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>

#include <stdio.h>
#include <string.h>

#include "sqlite_internal.h"
#include "store_fixture.h"

/* SQLite's default pending byte; the spare page number is the page it is on. */
#define PENDING_BYTE 0x40000000u
#define PAGE 4096u
#define SPARE (PENDING_BYTE / PAGE + 1)
#define PAGES 10

static sqlite3_pcache_methods2 m;
static sqlite3_pcache *cache;
static sqlite3_pcache_page *pg[PAGES + 1];

/* Installs the cache, starts SQLite and fills a cache with pages 1..PAGES, each marked with its number. */
static void setup_cache(void)
{
    cr_assert(store_pcache_install());
    cr_assert(eq(int, sqlite3_config(SQLITE_CONFIG_GETPCACHE2, &m), SQLITE_OK));
    cr_assert(eq(int, sqlite3_initialize(), SQLITE_OK));
    cache = m.xCreate((int)PAGE, 64, 0);
    cr_assert(cache != NULL);
    for (unsigned k = 1; k <= PAGES; k++) {
        pg[k] = m.xFetch(cache, k, 2);
        cr_assert(pg[k] != NULL);
        memcpy(pg[k]->pBuf, &k, sizeof k);
    }
}

static void teardown_cache(void)
{
    if (cache != NULL)
        m.xDestroy(cache);
    cache = NULL;
}

/* The number written in the page found under key, or 0 when none is. */
static unsigned page_at(unsigned key)
{
    sqlite3_pcache_page *p = m.xFetch(cache, key, 0);
    unsigned mark = 0;
    if (p != NULL)
        memcpy(&mark, p->pBuf, sizeof mark);
    return mark;
}

TestSuite(pcache_calls, .init = setup_cache, .fini = teardown_cache);

Test(pcache_calls, a_page_moved_to_the_spare_number_is_found_there_only)
{
    cr_assert(eq(uint, page_at(SPARE), 0));
    m.xRekey(cache, pg[3], 3, SPARE);
    cr_assert(eq(uint, page_at(SPARE), 3));
    cr_assert(eq(uint, page_at(3), 0));
    store_pcache_stats st = store_pcache_counts();
    cr_assert(eq(ulong, st.aliases, 1));
    cr_assert(eq(uint, st.largest_move, PAGES + 1),
              "the default cache held it next to the last page");
    cr_assert(eq(uint, page_at(PAGES + 1), 0), "a real page of that number is not it");
    cr_assert(eq(uint, page_at(SPARE), 3));
}

Test(pcache_calls, the_swap_through_the_spare_number_leaves_each_page_where_sqlite_put_it)
{
    /* What a B-tree split does to put two new pages in ascending order. */
    m.xRekey(cache, pg[3], 3, SPARE);
    m.xRekey(cache, pg[7], 7, 3);
    m.xRekey(cache, pg[3], SPARE, 7);
    cr_assert(eq(uint, page_at(3), 7));
    cr_assert(eq(uint, page_at(7), 3));
    cr_assert(eq(uint, page_at(SPARE), 0));
    for (unsigned k = 1; k <= PAGES; k++)
        if (k != 3 && k != 7)
            cr_assert(eq(uint, page_at(k), k));
    cr_assert(store_pcache_counts().largest_move < SPARE);
    /* Truncating past the end now drops nothing that is there. */
    m.xTruncate(cache, PAGES + 1);
    cr_assert(eq(uint, page_at(7), 3));
    cr_assert(eq(int, m.xPagecount(cache), PAGES));
}

Test(pcache_calls, a_real_page_under_the_alias_number_gets_a_page_of_its_own)
{
    m.xRekey(cache, pg[3], 3, SPARE);
    sqlite3_pcache_page *next = m.xFetch(cache, PAGES + 1, 2);
    cr_assert(next != NULL);
    cr_assert(next != pg[3]);
    unsigned mark = PAGES + 1;
    memcpy(next->pBuf, &mark, sizeof mark);
    cr_assert(eq(uint, page_at(PAGES + 1), PAGES + 1));
    cr_assert(eq(uint, page_at(SPARE), 3), "the alias moved on, the page did not");
    m.xRekey(cache, pg[3], SPARE, 3);
    cr_assert(eq(uint, page_at(3), 3));
    cr_assert(eq(uint, page_at(PAGES + 1), PAGES + 1));
    cr_assert(eq(uint, page_at(PAGES + 2), 0));
}

Test(pcache_calls, an_alias_let_go_gets_its_own_number_back)
{
    m.xRekey(cache, pg[3], 3, SPARE);
    m.xUnpin(cache, pg[3], 0);
    /* Unpinned, the default cache may reuse the page for any number: it must be under SPARE. */
    cr_assert(eq(uint, page_at(SPARE), 3));
    cr_assert(eq(uint, page_at(PAGES + 1), 0));
    cr_assert(eq(uint, store_pcache_counts().largest_move, SPARE));
}

Test(pcache_calls, an_alias_discarded_is_gone)
{
    m.xRekey(cache, pg[3], 3, SPARE);
    m.xUnpin(cache, pg[3], 1);
    cr_assert(eq(uint, page_at(SPARE), 0));
    cr_assert(eq(uint, page_at(PAGES + 1), 0));
    cr_assert(eq(int, m.xPagecount(cache), PAGES - 1));
    /* A new page may take the alias's number now. */
    m.xRekey(cache, pg[4], 4, SPARE);
    cr_assert(eq(uint, page_at(SPARE), 4));
}

Test(pcache_calls, truncating_below_the_spare_number_drops_the_aliased_page)
{
    m.xRekey(cache, pg[3], 3, SPARE);
    /* Above the number the alias is held under, below the one SQLite gave it. */
    m.xTruncate(cache, PAGES + 5);
    cr_assert(eq(uint, page_at(SPARE), 0), "the default cache drops page SPARE here too");
    cr_assert(eq(int, m.xPagecount(cache), PAGES - 1));
    for (unsigned k = 1; k <= PAGES; k++)
        if (k != 3)
            cr_assert(eq(uint, page_at(k), k));
    sqlite3_pcache_page *next = m.xFetch(cache, PAGES + 1, 2);
    cr_assert(next != NULL);
    cr_assert(eq(int, m.xPagecount(cache), PAGES));
}

/* ---- a real file ---------------------------------------------------------- */

#define RUNS 24
#define PER_RUN 400
#define PER_COMMIT 12

static sqlite3 *open_file(int page_size)
{
    sqlite3 *db = NULL;
    char sql[64];
    cr_assert(eq(int, sqlite3_open(sfx_db_path(), &db), SQLITE_OK));
    snprintf(sql, sizeof sql, "PRAGMA page_size=%d", page_size);
    cr_assert(eq(int, sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK));
    cr_assert(eq(int, sqlite3_exec(db,
                                   "PRAGMA journal_mode=WAL;"
                                   "CREATE TABLE t(run TEXT, node TEXT, v TEXT,"
                                   " PRIMARY KEY (run, node));",
                                   NULL, NULL, NULL),
                  SQLITE_OK));
    return db;
}

/*
 * Nodes of RUNS runs, a run's nodes in order but the runs taking turns, in
 * commits of PER_COMMIT: the key index splits in the middle of the file.
 */
static void fill(sqlite3 *db)
{
    sqlite3_stmt *ins = NULL;
    cr_assert(eq(int, sqlite3_prepare_v2(db, "INSERT INTO t VALUES (?1, ?2, ?3)", -1, &ins, NULL),
                  SQLITE_OK));
    for (int i = 0; i < RUNS * PER_RUN; i++) {
        char run[16], node[16], v[48];
        if (i % PER_COMMIT == 0)
            cr_assert(eq(int, sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK));
        snprintf(run, sizeof run, "run-%02d", i % RUNS);
        snprintf(node, sizeof node, "n%06d", i / RUNS);
        snprintf(v, sizeof v, "value of %s/%s", run, node);
        sqlite3_bind_text(ins, 1, run, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(ins, 2, node, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(ins, 3, v, -1, SQLITE_TRANSIENT);
        cr_assert(eq(int, sqlite3_step(ins), SQLITE_DONE));
        sqlite3_reset(ins);
        if (i % PER_COMMIT == PER_COMMIT - 1 || i == RUNS * PER_RUN - 1)
            cr_assert(eq(int, sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK));
    }
    sqlite3_finalize(ins);
}

/* integrity_check says ok, and every row is there with its value (read on a connection of its own). */
static void check_whole(void)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    cr_assert(eq(int, sqlite3_open(sfx_db_path(), &db), SQLITE_OK));
    cr_assert(eq(int, sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL), SQLITE_OK));
    cr_assert(eq(int, sqlite3_step(st), SQLITE_ROW));
    cr_assert(eq(str, (char *)sqlite3_column_text(st, 0), "ok"));
    sqlite3_finalize(st);
    cr_assert(eq(int, sqlite3_prepare_v2(db,
                                         "SELECT count(*), sum(v = 'value of ' || run || '/' || node)"
                                         " FROM t",
                                         -1, &st, NULL),
                  SQLITE_OK));
    cr_assert(eq(int, sqlite3_step(st), SQLITE_ROW));
    cr_assert(eq(int, sqlite3_column_int(st, 0), RUNS * PER_RUN));
    cr_assert(eq(int, sqlite3_column_int(st, 1), RUNS * PER_RUN));
    sqlite3_finalize(st);
    sqlite3_close(db);
}

static void setup_file(void)
{
    sfx_setup("test_pcache");
}

TestSuite(pcache_file, .init = setup_file, .fini = sfx_teardown);

Test(pcache_file, splits_in_small_commits_keep_the_file_whole)
{
    cr_assert(store_pcache_install());
    sqlite3 *db = open_file((int)PAGE);
    fill(db);
    store_pcache_stats st = store_pcache_counts();
    cr_assert(st.aliases > 0, "the splits swapped pages through the spare number");
    cr_assert(st.largest_move < SPARE);
    int pages = 0;
    sqlite3_stmt *pc = NULL;
    cr_assert(eq(int, sqlite3_prepare_v2(db, "PRAGMA page_count", -1, &pc, NULL), SQLITE_OK));
    cr_assert(eq(int, sqlite3_step(pc), SQLITE_ROW));
    pages = sqlite3_column_int(pc, 0);
    sqlite3_finalize(pc);
    cr_assert(st.largest_move <= (unsigned)pages + 1,
              "no page was held past the end of the file (%u, %d pages)", st.largest_move, pages);
    cr_assert(eq(int, sqlite3_close(db), SQLITE_OK));
    check_whole();
}

Test(pcache_file, a_file_past_the_spare_number_keeps_whole)
{
    /* The pending byte at 64 KiB: with 1 KiB pages the spare number is page 65. */
    cr_assert(store_pcache_install());
    cr_assert(eq(int, sqlite3_test_control(SQLITE_TESTCTRL_PENDING_BYTE, 0x10000), 0x40000000));
    sqlite3 *db = open_file(1024);
    fill(db);
    store_pcache_stats st = store_pcache_counts();
    cr_assert(st.aliases > 0, "swaps while the file was below page 65");
    cr_assert(eq(int, sqlite3_close(db), SQLITE_OK));
    check_whole();
}

Test(pcache_file, the_store_puts_it_in_place_before_sqlite_starts)
{
    /* Were SQLite started first (the write connection's VFS lookup starts it), this would be false. */
    store *s = sfx_open_store();
    cr_assert(store_pcache_install());
    store_close(s);
}

/*
 * The alias moves on to the next free number whenever a real page is asked
 * for under the number it is held by; once a page past the spare number is
 * in the cache, that next free number is past the spare number too. A
 * truncate between the two must still keep page SPARE (SQLite's number for
 * it is below the limit), as the default cache keeps it; dropping it would
 * free a page SQLite still holds.
 */
Test(pcache_calls, an_alias_moved_past_its_own_number_is_kept_by_a_truncate_above_that_number)
{
    m.xRekey(cache, pg[3], 3, SPARE);
    sqlite3_pcache_page *past = m.xFetch(cache, SPARE + 1, 2);
    cr_assert(past != NULL);
    unsigned mark = SPARE + 1;
    memcpy(past->pBuf, &mark, sizeof mark);
    sqlite3_pcache_page *next = m.xFetch(cache, PAGES + 1, 2);
    cr_assert(next != NULL);
    mark = PAGES + 1;
    memcpy(next->pBuf, &mark, sizeof mark);
    /* Drops page SPARE + 1 only. */
    m.xTruncate(cache, SPARE + 1);
    cr_assert(eq(uint, page_at(SPARE), 3), "the default cache keeps page SPARE");
    cr_assert(eq(uint, page_at(SPARE + 1), 0));
    cr_assert(eq(uint, page_at(PAGES + 1), PAGES + 1));
    cr_assert(eq(int, m.xPagecount(cache), PAGES + 1));
    m.xRekey(cache, pg[3], SPARE, 3);
    cr_assert(eq(uint, page_at(3), 3));
    cr_assert(eq(uint, page_at(SPARE), 0));
}

/*
 * Lookups of the numbers the alias is held by walk it up to the number
 * SQLite gave the page; there it is the page's own number again (the
 * default cache asserts, in SQLITE_DEBUG builds, that a move changes the
 * number, so none may be a move to the same number).
 */
Test(pcache_calls, lookups_walking_the_alias_up_to_its_own_number_keep_it_there)
{
    const unsigned own = PAGES + 3;
    m.xRekey(cache, pg[3], 3, own);  /* held under PAGES + 1 */
    cr_assert(eq(uint, page_at(PAGES + 1), 0));
    cr_assert(eq(uint, page_at(PAGES + 2), 0));
    cr_assert(eq(uint, page_at(own), 3));
    cr_assert(eq(int, m.xPagecount(cache), PAGES));
    m.xUnpin(cache, pg[3], 0);
    cr_assert(eq(uint, page_at(own), 3));
    cr_assert(eq(uint, page_at(3), 0));
    m.xTruncate(cache, own);
    cr_assert(eq(uint, page_at(own), 0));
    cr_assert(eq(int, m.xPagecount(cache), PAGES - 1));
}
