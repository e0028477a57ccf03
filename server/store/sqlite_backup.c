#include "sqlite_internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

/*
 * A snapshot taken with SQLite's online backup API into a temporary file
 * next to the database, then handed out as an open descriptor to a file
 * already unlinked: nothing of it is held in memory, and whatever becomes
 * of the reader (the client hangs up, the process dies) the disk space goes
 * back with the descriptor. The copy is one sqlite3_backup_step(-1): a
 * single read transaction on a connection of its own, so the snapshot is
 * consistent and, in WAL mode, the writer goes on committing meanwhile (the
 * WAL only cannot be reset past the snapshot until the copy ends).
 */

struct store_backup {
    int fd;             /* the unlinked copy */
    uint64_t size;
};

/*
 * What follows "<db>" in a backup's temporary name; mkstemp fills the X's.
 * Ours alone: the start-up sweep removes every such name, and an operator's
 * own "<db>.backup-friday" (the name earlier builds used) must be left be.
 */
#define BACKUP_SUFFIX ".nodestate-backup-"
#define BACKUP_RANDOM 6

/* Opens db_path (read-only) and tmp (the copy) and copies one into the other. */
static int store_backup_copy(const char *db_path, const char *tmp, char *err,
                             size_t errlen)
{
    sqlite3 *src = NULL, *dst = NULL;
    sqlite3_backup *bk;
    int rc = -1, step;

    if (sqlite3_open_v2(db_path, &src, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        store_set_db_err(err, errlen, db_path, src, "opening database to back up");
        goto out;
    }
    if (sqlite3_busy_timeout(src, STORE_READ_BUSY_MS) != SQLITE_OK) {
        store_set_db_err(err, errlen, db_path, src, "setting busy timeout");
        goto out;
    }
    if (sqlite3_open_v2(tmp, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        store_set_db_err(err, errlen, tmp, dst, "opening the backup file");
        goto out;
    }
    /* The copy is thrown away if anything fails: no journal, no syncs. */
    if (store_exec(dst, "PRAGMA journal_mode=OFF") != SQLITE_OK ||
        store_exec(dst, "PRAGMA synchronous=OFF") != SQLITE_OK) {
        store_set_db_err(err, errlen, tmp, dst, "setting up the backup file");
        goto out;
    }
    bk = sqlite3_backup_init(dst, "main", src, "main");
    if (bk == NULL) {
        store_set_db_err(err, errlen, db_path, dst, "starting the backup");
        goto out;
    }
    step = sqlite3_backup_step(bk, -1);
    if (sqlite3_backup_finish(bk) != SQLITE_OK || step != SQLITE_DONE) {
        store_set_db_err(err, errlen, db_path, dst, "copying the database");
        goto out;
    }
    rc = 0;
out:
    sqlite3_close(dst);
    sqlite3_close(src);
    return rc;
}

store_backup_result sqlite_backup_open(const char *db_path, store_backup **out,
                                       char *err, size_t errlen)
{
    char tmp[STORE_PATH_MAX];
    store_backup *b = NULL;
    struct stat st;
    int fd = -1;
    bool made = false;

    *out = NULL;
    if (snprintf(tmp, sizeof tmp, "%s" BACKUP_SUFFIX "XXXXXX", db_path) >= (int)sizeof tmp) {
        store_set_err(err, errlen, db_path, "path too long for a backup file");
        goto fail;
    }
    b = calloc(1, sizeof *b);
    if (b == NULL) {
        store_set_err(err, errlen, db_path, "out of memory");
        goto fail;
    }
    /* mkstemp makes it 0600: the copy is as private as we can make it. */
    fd = mkstemp(tmp);
    if (fd < 0) {
        char msg[STORE_ERRMSG_MAX];

        snprintf(msg, sizeof msg, "cannot create a backup file: %s", strerror(errno));
        store_set_err(err, errlen, db_path, msg);
        goto fail;
    }
    made = true;
    if (store_backup_copy(db_path, tmp, err, errlen) != 0)
        goto fail;
    /* SQLite wrote through its own descriptor; ours sees the same file. */
    if (fstat(fd, &st) != 0) {
        store_set_err(err, errlen, tmp, strerror(errno));
        goto fail;
    }
    (void)unlink(tmp);
    made = false;
    b->fd = fd;
    b->size = (uint64_t)st.st_size;
    *out = b;
    return STORE_BACKUP_OK;

fail:
    if (made)
        (void)unlink(tmp);
    if (fd >= 0)
        close(fd);
    free(b);
    return STORE_BACKUP_FAILED;
}

uint64_t store_backup_size(const store_backup *b)
{
    return b->size;
}

ssize_t store_backup_read(store_backup *b, uint64_t pos, char *buf, size_t n)
{
    ssize_t got;

    if (pos >= b->size)
        return 0;
    if (n > b->size - pos)
        n = (size_t)(b->size - pos);
    do
        got = pread(b->fd, buf, n, (off_t)pos);
    while (got < 0 && errno == EINTR);
    return got;
}

void store_backup_close(store_backup *b)
{
    if (b == NULL)
        return;
    close(b->fd);
    free(b);
}

int sqlite_backup_sweep(const char *db_path, size_t *removed, char *err,
                        size_t errlen)
{
    char dir[STORE_PATH_MAX], prefix[STORE_PATH_MAX], path[2 * STORE_PATH_MAX];
    const char *slash = strrchr(db_path, '/');
    size_t plen;
    DIR *d;
    struct dirent *e;
    int rc = 0;

    *removed = 0;
    if (slash == NULL)
        snprintf(dir, sizeof dir, ".");
    else if (slash == db_path)
        snprintf(dir, sizeof dir, "/");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - db_path), db_path);
    snprintf(prefix, sizeof prefix, "%s" BACKUP_SUFFIX, slash != NULL ? slash + 1 : db_path);
    plen = strlen(prefix);
    d = opendir(dir);
    if (d == NULL) {
        store_set_err(err, errlen, dir, strerror(errno));
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        /* Only mkstemp's names: the prefix and exactly its random part. */
        if (strncmp(e->d_name, prefix, plen) != 0 ||
            strlen(e->d_name + plen) != BACKUP_RANDOM)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        /* And only as mkstemp made it: a regular file of ours, mode 0600. */
        struct stat sb;
        if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode) || (sb.st_mode & 07777) != 0600 ||
            sb.st_uid != geteuid())
            continue;
        if (unlink(path) == 0) {
            (*removed)++;
        } else if (errno != ENOENT) {
            store_set_err(err, errlen, path, strerror(errno));
            rc = -1;
        }
    }
    closedir(d);
    return rc;
}
