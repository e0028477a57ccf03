/*
 * sqlite_walbuf: the write connection's WAL writes, gathered into one
 * write() per commit.
 *
 * SQLite appends a WAL frame as two writes (its 24-byte header, then the
 * page), so a ?wait=true commit of 16 rows over 20 pages cost 40 pwrite()
 * calls, a third of the writer's time per durable update. This VFS wraps
 * the default one for the WAL file only: appended frames collect in a
 * buffer, which goes to the file as soon as the commit frame is complete
 * (its header carries the database size, which only a commit frame does),
 * so when COMMIT returns everything is in the file exactly as without the
 * buffer: a process killed after it loses nothing, and every other
 * connection (readers, the checkpoint thread, which open the file without
 * this VFS) reads frames only up to the last commit.
 *
 * A file opened without powersafe overwrite (psow=0) is not buffered at
 * all: there SQLite pads a commit past its commit frame (walbuf_open).
 *
 * Only appends at the end of what this handle has written wait in the
 * buffer. Any other write (SQLite rewriting a frame of the transaction in
 * progress, or the checksums after such rewrites, which it does after
 * the commit frame) first sends the buffer, then goes straight through,
 * so the file always holds the writes in the order SQLite made them up to
 * the buffer's start. Reads, syncs, truncation, the size and file controls
 * send the buffer first too, and a failed send is the error (always an I/O
 * error, which ends the transaction) of the call that asked for it, so
 * COMMIT fails rather than claiming what is not in the file.
 * store_wal_sync syncs the same file on demand.
 */
#include "sqlite_internal.h"

#include <stdlib.h>
#include <string.h>

#define WALBUF_VFS_NAME "nodestate-walbuf"
/* Frames beyond this much are sent before the commit (a large batch). */
#define WALBUF_MAX (1u << 20)
/*
 * Bytes per write at most: the unix VFS keeps only the low 17 bits of a
 * write's size (seekAndWriteFd asserts it is below 128 KiB), so a larger
 * one would be cut or lost.
 */
#define WALBUF_CHUNK 0x1f000u
/* A WAL frame header; its bytes 4..7 (database size) are non-zero only in a commit frame. */
#define WALBUF_FRAME_HDR 24

/* Lives as long as the process: SQLite keeps a pointer to the VFS. */
typedef struct walbuf_vfs {
    sqlite3_vfs vfs;
    sqlite3_vfs *real;
    sqlite3_io_methods methods;
} walbuf_vfs;

/* A WAL file; the real file's own struct follows it in the same allocation. */
typedef struct walbuf_file {
    sqlite3_file base;
    sqlite3_file *real;
    unsigned char *buf;
    size_t len, cap;
    sqlite3_int64 off;   /* where buf[0] goes in the file */
    sqlite3_int64 tail;  /* end of the furthest write so far (sent or buffered) */
    sqlite3_int64 commit_page_at; /* the last write was a commit frame's header: its page's place */
    bool passthrough;    /* nothing is buffered (a file without powersafe overwrite) */
    unsigned long sends, through, syncs; /* for tests: buffers sent, writes not buffered, syncs */
} walbuf_file;

static int walbuf_send(walbuf_file *f)
{
    int rc = SQLITE_OK;
    for (size_t done = 0; done < f->len && rc == SQLITE_OK; done += WALBUF_CHUNK) {
        size_t n = f->len - done < WALBUF_CHUNK ? f->len - done : WALBUF_CHUNK;
        rc = f->real->pMethods->xWrite(f->real, f->buf + done, (int)n,
                                       f->off + (sqlite3_int64)done);
    }
    if (f->len)
        f->sends++;
    /*
     * SQLite was told these bytes were written, so it must not go on as if
     * they were: an I/O error rolls its whole transaction back wherever it
     * surfaces, where SQLITE_FULL from a read (a full disk) rolls back only
     * the statement, and a later COMMIT would claim frames that are not in
     * the file. The transaction is then written again, so the buffer goes.
     */
    if (rc != SQLITE_OK && (rc & 0xff) != SQLITE_IOERR)
        rc = SQLITE_IOERR_WRITE;
    f->len = 0;
    return rc;
}

static int walbuf_keep(walbuf_file *f, const void *data, size_t n, sqlite3_int64 at)
{
    if (f->len == 0)
        f->off = at;
    if (f->len + n > f->cap) {
        size_t cap = f->cap ? f->cap : 64 * 1024;
        while (cap < f->len + n)
            cap *= 2;
        unsigned char *grown = realloc(f->buf, cap);
        if (grown == NULL)
            return SQLITE_IOERR_NOMEM;
        f->buf = grown;
        f->cap = cap;
    }
    memcpy(f->buf + f->len, data, n);
    f->len += n;
    return SQLITE_OK;
}

static int walbuf_write(sqlite3_file *file, const void *data, int amount, sqlite3_int64 at)
{
    walbuf_file *f = (walbuf_file *)file;
    const unsigned char *bytes = data;
    size_t n = (size_t)amount;
    bool appends = f->len > 0 && at == f->off + (sqlite3_int64)f->len;
    bool commit_page = f->commit_page_at != 0 && at == f->commit_page_at;
    int rc = SQLITE_OK;

    if (f->passthrough) {
        f->through++;
        return f->real->pMethods->xWrite(f->real, data, amount, at);
    }
    f->commit_page_at = 0;
    if (f->len > 0 && (!appends || f->len + n > WALBUF_MAX))
        rc = walbuf_send(f);
    /* Offset 0 is the header of a restarted WAL: everything after it is new. */
    if (at == 0)
        f->tail = 0;
    if (rc == SQLITE_OK && f->len == 0 && at < f->tail) {
        /* Over what is written already: in order, now. */
        f->through++;
        rc = f->real->pMethods->xWrite(f->real, data, amount, at);
    } else if (rc == SQLITE_OK) {
        rc = walbuf_keep(f, data, n, at);
        if (rc == SQLITE_OK && commit_page)
            rc = walbuf_send(f);
    }
    /* Failed or not: a later write below it must not wait in the buffer. */
    if (at + amount > f->tail)
        f->tail = at + amount;
    if (rc == SQLITE_OK && n == WALBUF_FRAME_HDR && (bytes[4] | bytes[5] | bytes[6] | bytes[7]))
        f->commit_page_at = at + WALBUF_FRAME_HDR;
    return rc;
}

static int walbuf_read(sqlite3_file *file, void *data, int amount, sqlite3_int64 at)
{
    walbuf_file *f = (walbuf_file *)file;
    int rc = walbuf_send(f);
    return rc != SQLITE_OK ? rc : f->real->pMethods->xRead(f->real, data, amount, at);
}

static int walbuf_truncate(sqlite3_file *file, sqlite3_int64 size)
{
    walbuf_file *f = (walbuf_file *)file;
    int rc = walbuf_send(f);
    if (rc != SQLITE_OK)
        return rc;
    if (f->tail > size)
        f->tail = size;
    return f->real->pMethods->xTruncate(f->real, size);
}

static int walbuf_sync(sqlite3_file *file, int flags)
{
    walbuf_file *f = (walbuf_file *)file;
    int rc = walbuf_send(f);
    f->syncs++;
    return rc != SQLITE_OK ? rc : f->real->pMethods->xSync(f->real, flags);
}

static int walbuf_file_size(sqlite3_file *file, sqlite3_int64 *size)
{
    walbuf_file *f = (walbuf_file *)file;
    int rc = walbuf_send(f);
    return rc != SQLITE_OK ? rc : f->real->pMethods->xFileSize(f->real, size);
}

static int walbuf_file_control(sqlite3_file *file, int op, void *arg)
{
    walbuf_file *f = (walbuf_file *)file;
    int rc = walbuf_send(f);
    return rc != SQLITE_OK ? rc : f->real->pMethods->xFileControl(f->real, op, arg);
}

static int walbuf_close(sqlite3_file *file)
{
    walbuf_file *f = (walbuf_file *)file;
    int rc = walbuf_send(f);
    int closed = f->real->pMethods->xClose(f->real);
    free(f->buf);
    f->buf = NULL;
    return rc != SQLITE_OK ? rc : closed;
}

static int walbuf_lock(sqlite3_file *file, int level)
{
    sqlite3_file *real = ((walbuf_file *)file)->real;
    return real->pMethods->xLock(real, level);
}

static int walbuf_unlock(sqlite3_file *file, int level)
{
    sqlite3_file *real = ((walbuf_file *)file)->real;
    return real->pMethods->xUnlock(real, level);
}

static int walbuf_reserved(sqlite3_file *file, int *out)
{
    sqlite3_file *real = ((walbuf_file *)file)->real;
    return real->pMethods->xCheckReservedLock(real, out);
}

static int walbuf_sector_size(sqlite3_file *file)
{
    sqlite3_file *real = ((walbuf_file *)file)->real;
    return real->pMethods->xSectorSize(real);
}

static int walbuf_device(sqlite3_file *file)
{
    sqlite3_file *real = ((walbuf_file *)file)->real;
    return real->pMethods->xDeviceCharacteristics(real);
}

/* Every file but a WAL is the real VFS's own, untouched. */
static int walbuf_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags,
                       int *out_flags)
{
    walbuf_vfs *w = vfs->pAppData;
    if (!(flags & SQLITE_OPEN_WAL))
        return w->real->xOpen(w->real, name, file, flags, out_flags);
    walbuf_file *f = (walbuf_file *)file;
    memset(f, 0, sizeof *f);
    f->real = (sqlite3_file *)(f + 1);
    int rc = w->real->xOpen(w->real, name, f->real, flags, out_flags);
    /* pMethods stays NULL on failure, so SQLite does not close what did not open. */
    if (rc != SQLITE_OK)
        return rc;
    /*
     * Without powersafe overwrite, synchronous=FULL pads each commit with
     * copies of its commit frame up to a sector boundary and splits the one
     * that crosses it around an fsync: the commit frame is then not the last
     * write of the commit. SQLite judges by the main file, whose psow URI
     * parameter the WAL's name carries (the WAL file itself is opened
     * without it); such a WAL gets SQLite's writes as they come.
     */
    f->passthrough = !sqlite3_uri_boolean(name, "psow", 1)
                     || !(f->real->pMethods->xDeviceCharacteristics(f->real)
                          & SQLITE_IOCAP_POWERSAFE_OVERWRITE);
    file->pMethods = &w->methods;
    return rc;
}

const char *store_walbuf_vfs(void)
{
    /* SQLite's own static mutex: registering twice at once would register two. */
    sqlite3_mutex *m = sqlite3_mutex_alloc(SQLITE_MUTEX_STATIC_APP1);
    const char *name = WALBUF_VFS_NAME;

    sqlite3_mutex_enter(m);
    if (sqlite3_vfs_find(WALBUF_VFS_NAME) == NULL) {
        sqlite3_vfs *real = sqlite3_vfs_find(NULL);
        walbuf_vfs *w = real ? calloc(1, sizeof *w) : NULL;
        if (w == NULL) {
            name = NULL;
        } else {
            w->real = real;
            w->vfs = *real;
            w->vfs.pNext = NULL;
            w->vfs.zName = WALBUF_VFS_NAME;
            w->vfs.szOsFile = (int)sizeof(walbuf_file) + real->szOsFile;
            w->vfs.pAppData = w;
            w->vfs.xOpen = walbuf_open;
            /* Version 1: a WAL file is never memory-mapped and has no shared memory of its own. */
            w->methods = (sqlite3_io_methods){
                .iVersion = 1,
                .xClose = walbuf_close,
                .xRead = walbuf_read,
                .xWrite = walbuf_write,
                .xTruncate = walbuf_truncate,
                .xSync = walbuf_sync,
                .xFileSize = walbuf_file_size,
                .xLock = walbuf_lock,
                .xUnlock = walbuf_unlock,
                .xCheckReservedLock = walbuf_reserved,
                .xFileControl = walbuf_file_control,
                .xSectorSize = walbuf_sector_size,
                .xDeviceCharacteristics = walbuf_device,
            };
            if (sqlite3_vfs_register(&w->vfs, 0) != SQLITE_OK) {
                free(w);
                name = NULL;
            }
        }
    }
    sqlite3_mutex_leave(m);
    return name;
}

int store_walbuf_counts(sqlite3 *db, store_walbuf_stats *out)
{
    sqlite3_file *file = NULL;
    sqlite3_vfs *vfs = sqlite3_vfs_find(WALBUF_VFS_NAME);

    if (vfs == NULL
        || sqlite3_file_control(db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &file) != SQLITE_OK
        || file == NULL
        || file->pMethods != &((walbuf_vfs *)vfs->pAppData)->methods)
        return -1;
    const walbuf_file *f = (const walbuf_file *)file;
    *out = (store_walbuf_stats){.sends = f->sends, .through = f->through, .syncs = f->syncs};
    return 0;
}

int store_wal_sync(sqlite3 *db)
{
    sqlite3_file *wal = NULL;
    int rc = sqlite3_file_control(db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &wal);
    if (rc != SQLITE_OK)
        return rc;
    /* No WAL open: nothing was written through this connection. */
    if (wal == NULL || wal->pMethods == NULL)
        return SQLITE_OK;
    return wal->pMethods->xSync(wal, SQLITE_SYNC_NORMAL);
}
