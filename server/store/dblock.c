#include "dblock.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
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
    int file_fd;   /* hold_file: the database file's own descriptor, else -1 */
    char *path;
};

/* Symbolic links followed at most, as the kernel's own bound. */
#define DBLOCK_MAX_HOPS 40

/*
 * Where a dangling link at path points (the file that a create through it
 * would make), into out; path itself when it is not a link. -1 when that
 * does not fit or the links go on and on.
 */
static int link_target(const char *path, char *out, size_t size)
{
    if ((size_t)snprintf(out, size, "%s", path) >= size)
        return -1;
    for (int hops = 0; hops < DBLOCK_MAX_HOPS; hops++) {
        char to[PATH_MAX];
        ssize_t n = readlink(out, to, sizeof to - 1);
        if (n < 0)
            return 0;
        to[n] = '\0';
        char *slash = strrchr(out, '/');
        if (to[0] == '/' || slash == NULL) {
            if ((size_t)snprintf(out, size, "%s", to) >= size)
                return -1;
        } else {
            slash[1] = '\0';
            if (strlen(out) + strlen(to) >= size)
                return -1;
            strcat(out, to);
        }
    }
    return -1;
}

char *dblock_resolve(const char *path)
{
    char *full = realpath(path, NULL);
    if (full != NULL || errno != ENOENT)
        return full;
    char target[PATH_MAX];
    char *copy = link_target(path, target, sizeof target) == 0 ? strdup(target) : NULL;
    if (copy == NULL)
        return NULL;
    char *slash = strrchr(copy, '/');
    const char *base = slash != NULL ? slash + 1 : copy;
    if (slash != NULL)
        *slash = '\0';
    char *dir = realpath(slash == NULL ? "." : slash == copy ? "/" : copy, NULL);
    if (dir != NULL && *base != '\0') {
        size_t n = strlen(dir) + strlen(base) + 2;
        if ((full = malloc(n)) != NULL)
            snprintf(full, n, "%s%s%s", dir, strcmp(dir, "/") == 0 ? "" : "/", base);
    }
    free(dir);
    free(copy);
    return full;
}

int dblock_path(const char *db_path, char *out, size_t outlen)
{
    char *full = dblock_resolve(db_path);
    int n = snprintf(out, outlen, "%s.lock", full != NULL ? full : db_path);
    free(full);
    return n < 0 || (size_t)n >= outlen ? -1 : 0;
}

/*
 * The pid of a process holding a flock on the file fd (another name of it),
 * from /proc/locks ("1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"); 0
 * when it cannot be told.
 */
static long flock_holder(int fd)
{
    struct stat st;
    FILE *f = fstat(fd, &st) == 0 ? fopen("/proc/locks", "re") : NULL;
    if (f == NULL)
        return 0;
    char line[256];
    long found = 0;
    while (found == 0 && fgets(line, sizeof line, f) != NULL) {
        char kind[16];
        long pid;
        unsigned maj, min;
        unsigned long long ino;
        if (sscanf(line, "%*d: %15s %*s %*s %ld %x:%x:%llu", kind, &pid, &maj, &min, &ino) == 5 &&
            strcmp(kind, "FLOCK") == 0 && maj == major(st.st_dev) && min == minor(st.st_dev) &&
            ino == (unsigned long long)st.st_ino && pid != (long)getpid())
            found = pid;
    }
    fclose(f);
    return found;
}

/* NFS's magic number (statfs(2)): its flock is a POSIX lock in disguise. */
#define DBLOCK_NFS_MAGIC 0x6969

/*
 * The database file itself, flocked into l->file_fd; 0, or -1 with err. Not
 * on NFS, where Linux emulates flock with a whole-file POSIX lock that
 * SQLite's own locks of the file would run into (its WAL mode does not work
 * there anyway): the lock file alone guards it there.
 */
static int hold_db_file(dblock *l, const char *db_path, char *err, size_t errlen)
{
    l->file_fd = open(db_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (l->file_fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", db_path, strerror(errno));
        return -1;
    }
    struct statfs fs;
    if (fstatfs(l->file_fd, &fs) == 0 && fs.f_type == DBLOCK_NFS_MAGIC) {
        close(l->file_fd);
        l->file_fd = -1;
        return 0;
    }
    int rc;
    while ((rc = flock(l->file_fd, LOCK_EX | LOCK_NB)) != 0 && errno == EINTR) {
    }
    if (rc == 0)
        return 0;
    if (errno != EWOULDBLOCK) {
        snprintf(err, errlen, "cannot lock %s: %s", db_path, strerror(errno));
        return -1;
    }
    long pid = flock_holder(l->file_fd);
    char holder[32] = "unknown";
    if (pid > 0)
        snprintf(holder, sizeof holder, "%ld", pid);
    snprintf(err, errlen,
             "database %s is in use by another process (pid %s) under another name of the "
             "same file (a hard link), which holds its own lock file", db_path, holder);
    return -1;
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

dblock *dblock_acquire(const char *db_path, bool hold_file, char *err, size_t errlen)
{
    dblock *l = calloc(1, sizeof *l);
    char *full = dblock_resolve(db_path);
    size_t size = strlen(full != NULL ? full : db_path) + sizeof ".lock";
    int fd = -1;
    free(full);
    if (l)
        l->file_fd = -1;
    if (!l || !(l->path = malloc(size)) || dblock_path(db_path, l->path, size) != 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
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
                const char *what = hold_file ? "database" : "file";
                if (pid > 0)
                    snprintf(err, errlen,
                             "%s %s is in use by another process (pid %ld, "
                             "lock file %s)", what, db_path, pid, l->path);
                else
                    snprintf(err, errlen,
                             "%s %s is in use by another process (pid "
                             "unknown, lock file %s)", what, db_path, l->path);
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
            if (hold_file && hold_db_file(l, db_path, err, errlen) != 0) {
                /* Ours a moment: gone again, as a release leaves it. */
                unlink(l->path);
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
    if (l && l->file_fd >= 0)
        close(l->file_fd);
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
    if (l->file_fd >= 0)
        close(l->file_fd);
    free(l->path);
    free(l);
}
