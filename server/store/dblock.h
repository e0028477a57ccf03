/*
 * dblock: one process per database file. Two servers on one file would each
 * trust their own cache and overwrite each other's rows, so the engine takes
 * an exclusive lock before it touches the database or its spill sidecar and
 * holds it for the life of the process.
 *
 * The lock is flock(2) on a sidecar "<db>.lock" that holds the holder's pid,
 * not a POSIX (fcntl) lock: SQLite takes those on the database file, and
 * closing any descriptor of it would drop a POSIX lock of ours. A flock
 * belongs to the open file description, so the kernel releases it when the
 * holder dies, however it dies: a lock file left by a killed process does
 * not block the next start. A clean release removes the file.
 *
 * One file may have many names. The lock file is named after the path with
 * every symbolic link resolved, so a link to the database (or to its
 * directory) finds the same lock file. A hard link is another name of the
 * same inode that no path can reveal, so with hold_file the database file
 * itself is flocked too (the holder's pid then comes from /proc/locks).
 */
#ifndef NODESTATE_DBLOCK_H
#define NODESTATE_DBLOCK_H

#include <stdbool.h>
#include <stddef.h>

typedef struct dblock dblock;

/*
 * Takes the lock of db_path without waiting; with hold_file, also a flock on
 * the file db_path names (created if missing, as an empty file). NULL when
 * another process (or another dblock of this one) holds it, with err naming
 * the holder's pid and the lock file, or when the lock file cannot be made,
 * with err saying why.
 */
dblock *dblock_acquire(const char *db_path, bool hold_file, char *err, size_t errlen);
/* Removes the lock file and drops the lock. NULL is a no-op. */
void dblock_release(dblock *l);
/*
 * path with its symbolic links resolved, for a file that may not exist
 * yet: a dangling link is followed to where the file would be made, and
 * only the directory of that needs to exist. malloc'd; NULL when it does
 * not resolve or out of memory.
 */
char *dblock_resolve(const char *path);
/*
 * The lock file of db_path into out: dblock_resolve(db_path) (db_path as
 * given when that fails), then ".lock". 0, or -1 when it does not fit.
 */
int dblock_path(const char *db_path, char *out, size_t outlen);

#endif
