/*
 * dblock: one process per database file. Two servers on one file would each
 * trust their own cache and overwrite each other's rows, so the engine takes
 * an exclusive lock before it touches the database or its spill sidecar and
 * holds it for the life of the process.
 *
 * The lock is flock(2) on a sidecar "<db>.lock" that holds the holder's pid,
 * not a lock on the database file: SQLite takes POSIX (fcntl) locks on that
 * file, and closing any descriptor of it would drop a POSIX lock of ours. A
 * flock belongs to the open file description, so the kernel releases it when
 * the holder dies, however it dies: a lock file left by a killed process
 * does not block the next start. A clean release removes the file.
 */
#ifndef NODESTATE_DBLOCK_H
#define NODESTATE_DBLOCK_H

#include <stddef.h>

typedef struct dblock dblock;

/*
 * Takes the lock of db_path without waiting. NULL when another process (or
 * another dblock of this one) holds it, with err naming the holder's pid and
 * the lock file, or when the lock file cannot be made, with err saying why.
 */
dblock *dblock_acquire(const char *db_path, char *err, size_t errlen);
/* Removes the lock file and drops the lock. NULL is a no-op. */
void dblock_release(dblock *l);
/* The lock file of db_path into out; 0, or -1 when it does not fit. */
int dblock_path(const char *db_path, char *out, size_t outlen);

#endif
