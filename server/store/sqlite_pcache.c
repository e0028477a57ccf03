/*
 * sqlite_pcache: SQLite's own page cache, with one page number kept small.
 *
 * When a B-tree page splits, SQLite renumbers the new pages so they stay in
 * ascending order, swapping two of them through a spare page number (the
 * pending-byte page: 262,145 with 4 KiB pages, never a real page). The
 * default page cache remembers the largest number it ever held, and at the
 * end of the transaction SQLite drops the cached pages past the end of the
 * file: with that number far past the end, it walks its whole hash table
 * (every cached page, up to 64 MiB of them here) instead of the few slots
 * past the end. Under ?wait=true, where commits of ~12 rows split an index
 * page every few commits, that walk was 10% of the server's CPU.
 *
 * This cache is the default one (SQLITE_CONFIG_GETPCACHE2) with one change:
 * a page moved to a number beyond every page the cache has held is held
 * under the next free number instead (alias) while it stays pinned: until
 * it moves on (the swap's next step), is let go, or the cache is truncated
 * past it. Every call SQLite makes sees the numbers it chose, so nothing
 * else changes; the default cache's largest number then stays next to the
 * end of the file.
 *
 * Installed process-wide before SQLite initialises (store_pcache_install);
 * if something initialised SQLite first, the default cache stays, which
 * only costs the walk.
 */
#include "sqlite_internal.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

typedef struct pcache_wrap {
    sqlite3_pcache *base;
    unsigned max_key;            /* no cached page has a larger number */
    unsigned alias_from;         /* 0, or the number SQLite gave the aliased page */
    unsigned alias_to;           /* the number the default cache holds it under */
    sqlite3_pcache_page *alias_page;
} pcache_wrap;

static sqlite3_pcache_methods2 base_methods;
static pthread_once_t install_once = PTHREAD_ONCE_INIT;
static bool installed;
static atomic_ulong aliases_made;
static atomic_uint largest_move;

static unsigned key_in(const pcache_wrap *w, unsigned key)
{
    return w->alias_from != 0 && key == w->alias_from ? w->alias_to : key;
}

/* Every move the default cache makes goes through here (rare: page splits). */
static void base_rekey(pcache_wrap *w, sqlite3_pcache_page *page, unsigned from, unsigned to)
{
    if (from == to)
        return; /* the default cache asserts that a move changes the number */
    unsigned seen = atomic_load_explicit(&largest_move, memory_order_relaxed);
    while (to > seen
           && !atomic_compare_exchange_weak_explicit(&largest_move, &seen, to,
                                                     memory_order_relaxed,
                                                     memory_order_relaxed)) {
    }
    base_methods.xRekey(w->base, page, from, to);
}

static void note_key(pcache_wrap *w, unsigned key)
{
    if (key > w->max_key)
        w->max_key = key;
}

/* The aliased page back under the number SQLite gave it; the alias ends. */
static void alias_end(pcache_wrap *w)
{
    base_rekey(w, w->alias_page, w->alias_to, w->alias_from);
    note_key(w, w->alias_from);
    w->alias_from = 0;
    w->alias_page = NULL;
}

/*
 * A real page is asked for under the number the aliased one is held by:
 * the aliased one moves to the next free number first, or back to its own
 * when no free number below that is left (so alias_to < alias_from always).
 */
static void alias_clear_of(pcache_wrap *w, unsigned key)
{
    if (w->alias_from == 0 || key != w->alias_to)
        return;
    unsigned to = w->max_key + 1;
    if (to >= w->alias_from) {
        alias_end(w);
        return;
    }
    base_rekey(w, w->alias_page, w->alias_to, to);
    w->alias_to = to;
    note_key(w, to);
}

static int wrap_init(void *arg)
{
    (void)arg;
    return base_methods.xInit ? base_methods.xInit(base_methods.pArg) : SQLITE_OK;
}

static void wrap_shutdown(void *arg)
{
    (void)arg;
    if (base_methods.xShutdown)
        base_methods.xShutdown(base_methods.pArg);
}

static sqlite3_pcache *wrap_create(int sz_page, int sz_extra, int purgeable)
{
    pcache_wrap *w = calloc(1, sizeof *w);
    if (w == NULL)
        return NULL;
    w->base = base_methods.xCreate(sz_page, sz_extra, purgeable);
    if (w->base == NULL) {
        free(w);
        return NULL;
    }
    return (sqlite3_pcache *)w;
}

static void wrap_cachesize(sqlite3_pcache *c, int n)
{
    base_methods.xCachesize(((pcache_wrap *)c)->base, n);
}

static int wrap_pagecount(sqlite3_pcache *c)
{
    return base_methods.xPagecount(((pcache_wrap *)c)->base);
}

static sqlite3_pcache_page *wrap_fetch(sqlite3_pcache *c, unsigned key, int create)
{
    pcache_wrap *w = (pcache_wrap *)c;
    if (w->alias_from == 0 || key != w->alias_from) {
        alias_clear_of(w, key);
        if (create)
            note_key(w, key);
    }
    return base_methods.xFetch(w->base, key_in(w, key), create);
}

/*
 * An unpinned page may be recycled under another number by the default
 * cache, so an alias lives only while its page is pinned (the swap's three
 * moves): one let go before it moves on gets its own number back first.
 */
static void wrap_unpin(sqlite3_pcache *c, sqlite3_pcache_page *page, int discard)
{
    pcache_wrap *w = (pcache_wrap *)c;
    if (w->alias_from != 0 && page == w->alias_page) {
        if (!discard) {
            alias_end(w);
        } else {
            w->alias_from = 0;
            w->alias_page = NULL;
        }
    }
    base_methods.xUnpin(w->base, page, discard);
}

static void wrap_rekey(sqlite3_pcache *c, sqlite3_pcache_page *page, unsigned old_key,
                       unsigned new_key)
{
    pcache_wrap *w = (pcache_wrap *)c;
    unsigned from = key_in(w, old_key);
    if (w->alias_from != 0 && old_key == w->alias_from) {
        w->alias_from = 0;
        w->alias_page = NULL;
    }
    if (new_key > 1 && new_key - 1 > w->max_key && w->alias_from == 0) {
        /* The swap's spare number: held under the next free one instead. */
        w->alias_from = new_key;
        w->alias_to = w->max_key + 1;
        w->alias_page = page;
        note_key(w, w->alias_to);
        atomic_fetch_add_explicit(&aliases_made, 1, memory_order_relaxed);
        base_rekey(w, page, from, w->alias_to);
        return;
    }
    alias_clear_of(w, new_key);
    note_key(w, new_key);
    base_rekey(w, page, from, key_in(w, new_key));
}

static void wrap_truncate(sqlite3_pcache *c, unsigned limit)
{
    pcache_wrap *w = (pcache_wrap *)c;
    /*
     * Judged by its own number, as the default cache judges it: back under
     * it whenever either number is at or past the limit.
     */
    if (w->alias_from != 0 && (w->alias_from >= limit || w->alias_to >= limit))
        alias_end(w);
    base_methods.xTruncate(w->base, limit);
    if (limit > 0 && w->max_key >= limit)
        w->max_key = limit - 1;
}

static void wrap_destroy(sqlite3_pcache *c)
{
    pcache_wrap *w = (pcache_wrap *)c;
    base_methods.xDestroy(w->base);
    free(w);
}

static void wrap_shrink(sqlite3_pcache *c)
{
    if (base_methods.iVersion >= 1 && base_methods.xShrink)
        base_methods.xShrink(((pcache_wrap *)c)->base);
}

static void install(void)
{
    static sqlite3_pcache_methods2 wrapped = {
        .iVersion = 1,
        .xInit = wrap_init,
        .xShutdown = wrap_shutdown,
        .xCreate = wrap_create,
        .xCachesize = wrap_cachesize,
        .xPagecount = wrap_pagecount,
        .xFetch = wrap_fetch,
        .xUnpin = wrap_unpin,
        .xRekey = wrap_rekey,
        .xTruncate = wrap_truncate,
        .xDestroy = wrap_destroy,
        .xShrink = wrap_shrink,
    };
    if (sqlite3_config(SQLITE_CONFIG_GETPCACHE2, &base_methods) != SQLITE_OK
        || base_methods.xCreate == NULL)
        return;
    installed = sqlite3_config(SQLITE_CONFIG_PCACHE2, &wrapped) == SQLITE_OK;
}

bool store_pcache_install(void)
{
    pthread_once(&install_once, install);
    return installed;
}

store_pcache_stats store_pcache_counts(void)
{
    return (store_pcache_stats){
        .aliases = atomic_load_explicit(&aliases_made, memory_order_relaxed),
        .largest_move = atomic_load_explicit(&largest_move, memory_order_relaxed),
    };
}
