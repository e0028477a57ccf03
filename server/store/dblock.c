#include "dblock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/*
 * A release unlinks the file, so a lock may be won on a file that is no
 * longer (or no longer the one) at the path; such a win is retried this often.
 */
#define ACQUIRE_TRIES 16
/*
 * The holder writes its pid just after it wins the lock; a loser that finds
 * the file still empty looks again this often, PID_NAP_NS apart.
 */
#define PID_TRIES 20
#define PID_NAP_NS 5000000L /* 5 ms */

struct dblock {
    int fd;
    char *path;
};

int dblock_path(const char *db_path, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "%s.lock", db_path);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

/* The pid in the lock file at fd, or 0 when it holds none (yet). */
static long read_pid(int fd)
{
    char buf[32];
    for (int i = 0; i < PID_TRIES; i++) {
        ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
        if (n > 0) {
            buf[n] = '\0';
            char *end;
            long pid = strtol(buf, &end, 10);
            if (pid > 0 && end != buf && *end == '\n')
                return pid;
        }
        struct timespec ts = { 0, PID_NAP_NS };
        nanosleep(&ts, NULL);
    }
    return 0;
}

/* Whether fd is still the file at path (a release may have unlinked it). */
static int still_linked(int fd, const char *path)
{
    struct stat held, named;
    if (fstat(fd, &held) != 0)
        return -1;
    if (stat(path, &named) != 0)
        return errno == ENOENT ? 0 : -1;
    return held.st_dev == named.st_dev && held.st_ino == named.st_ino;
}

/* Replaces the file's content with our pid and a newline. */
static int write_pid(int fd)
{
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) != 0)
        return -1;
    ssize_t w = pwrite(fd, buf, (size_t)n, 0);
    if (w != n) {
        if (w >= 0)
            errno = EIO;
        return -1;
    }
    return 0;
}

dblock *dblock_acquire(const char *db_path, char *err, size_t errlen)
{
    dblock *l = calloc(1, sizeof *l);
    size_t size = strlen(db_path) + sizeof ".lock";
    int fd = -1;
    if (!l || !(l->path = malloc(size))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    dblock_path(db_path, l->path, size);
    for (int i = 0; i < ACQUIRE_TRIES; i++) {
        fd = open(l->path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) {
            snprintf(err, errlen, "cannot open the lock file %s: %s", l->path,
                     strerror(errno));
            goto fail;
        }
        while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            if (errno == EINTR)
                continue;
            if (errno == EWOULDBLOCK) {
                long pid = read_pid(fd);
                if (pid > 0)
                    snprintf(err, errlen,
                             "database %s is in use by another process (pid %ld, "
                             "lock file %s)", db_path, pid, l->path);
                else
                    snprintf(err, errlen,
                             "database %s is in use by another process (pid "
                             "unknown, lock file %s)", db_path, l->path);
            } else {
                snprintf(err, errlen, "cannot lock %s: %s", l->path, strerror(errno));
            }
            goto fail;
        }
        int linked = still_linked(fd, l->path);
        if (linked < 0) {
            snprintf(err, errlen, "cannot check the lock file %s: %s", l->path,
                     strerror(errno));
            goto fail;
        }
        if (linked) {
            if (write_pid(fd) != 0) {
                snprintf(err, errlen, "cannot write the lock file %s: %s", l->path,
                         strerror(errno));
                goto fail;
            }
            l->fd = fd;
            return l;
        }
        close(fd);
        fd = -1;
    }
    snprintf(err, errlen, "cannot lock %s: it keeps being replaced", l->path);
fail:
    if (fd >= 0)
        close(fd);
    if (l)
        free(l->path);
    free(l);
    return NULL;
}

void dblock_release(dblock *l)
{
    if (!l)
        return;
    /* Unlinked while still held: whoever opened it meanwhile sees it gone
     * after winning it (still_linked) and starts over on a new file. */
    unlink(l->path);
    close(l->fd);
    free(l->path);
    free(l);
}
