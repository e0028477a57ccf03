/*
 * Unit tests for dblock: the lock file holds the holder's pid and goes away
 * on release; a second taker is refused with the holder's pid and the lock
 * file in its message, whether it is this process or another; a lock file
 * left by a SIGKILLed holder does not block the next taker; and closing
 * other descriptors of the database or lock file does not drop the lock
 * (which a POSIX lock would). Other names of the file are the same
 * database: a symbolic link (to it or its directory) finds the same lock
 * file, a hard link is refused by the flock on the file itself.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dblock.h"

static char tmp_dir[] = "/tmp/nodestate-dblock-XXXXXX";
static char db_path[PATH_MAX];
static char lock_path[PATH_MAX + 8];

static void setup(void)
{
    cr_assert_not_null(mkdtemp(tmp_dir));
    snprintf(db_path, sizeof db_path, "%s/ns.db", tmp_dir);
    cr_assert_eq(dblock_path(db_path, lock_path, sizeof lock_path), 0);
}

static void teardown(void)
{
    unlink(lock_path);
    unlink(db_path);
    rmdir(tmp_dir);
}

TestSuite(dblock, .init = setup, .fini = teardown, .timeout = 60);

/* The pid written in the lock file, or -1 when there is none. */
static long file_pid(void)
{
    char buf[64] = "";
    FILE *f = fopen(lock_path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *end;
    long pid = strtol(buf, &end, 10);
    return end != buf && *end == '\n' ? pid : -1;
}

/* Whether a child process could take the lock (it releases it again). */
static bool child_can_acquire(void)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        char err[512];
        dblock *l = dblock_acquire(db_path, true, err, sizeof err);
        _exit(l != NULL ? 0 : 3);
    }
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "child died: %d", status);
    cr_assert(WEXITSTATUS(status) == 0 || WEXITSTATUS(status) == 3);
    return WEXITSTATUS(status) == 0;
}

Test(dblock, path_is_the_database_path_with_lock_appended)
{
    char out[64];
    cr_assert_eq(dblock_path("/x/ns.db", out, sizeof out), 0);
    cr_assert_str_eq(out, "/x/ns.db.lock");
    cr_assert_eq(dblock_path("/x/ns.db", out, 10), -1);
}

Test(dblock, lock_file_names_the_holder_and_goes_on_release)
{
    char err[512] = "";
    dblock *l = dblock_acquire(db_path, true, err, sizeof err);
    cr_assert_not_null(l, "%s", err);
    cr_assert_eq(file_pid(), (long)getpid());
    dblock_release(l);
    cr_assert_eq(access(lock_path, F_OK), -1, "the lock file is still there");
    dblock_release(NULL);
}

Test(dblock, second_taker_is_refused_with_the_holders_pid)
{
    char err[512] = "";
    dblock *l = dblock_acquire(db_path, true, err, sizeof err);
    cr_assert_not_null(l, "%s", err);
    char want[64];
    snprintf(want, sizeof want, "pid %ld", (long)getpid());
    err[0] = '\0';
    cr_assert_null(dblock_acquire(db_path, true, err, sizeof err), "taken twice");
    cr_assert_not_null(strstr(err, want), "no \"%s\" in: %s", want, err);
    cr_assert_not_null(strstr(err, lock_path), "no lock file in: %s", err);
    cr_assert_not_null(strstr(err, "in use"), "%s", err);
    cr_assert(!child_can_acquire(), "another process took a held lock");
    /* The refusal changed nothing: still ours, with our pid. */
    cr_assert_eq(file_pid(), (long)getpid());

    dblock_release(l);
    l = dblock_acquire(db_path, true, err, sizeof err);
    cr_assert_not_null(l, "not free after the release: %s", err);
    dblock_release(l);
}

Test(dblock, closing_other_descriptors_of_the_files_keeps_the_lock)
{
    char err[512] = "";
    dblock *l = dblock_acquire(db_path, true, err, sizeof err);
    cr_assert_not_null(l, "%s", err);
    /* SQLite opens and closes descriptors of the database all the time. */
    static const char *const paths[] = { db_path, lock_path };
    for (size_t i = 0; i < 2; i++) {
        int fd = open(paths[i], O_RDWR | O_CREAT, 0644);
        cr_assert_geq(fd, 0, "%s: %s", paths[i], strerror(errno));
        cr_assert_eq(close(fd), 0);
    }
    cr_assert(!child_can_acquire(), "the lock went with another descriptor");
    dblock_release(l);
    cr_assert(child_can_acquire());
}

Test(dblock, lock_of_a_killed_holder_does_not_block)
{
    int ready[2];
    cr_assert_eq(pipe(ready), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        char err[512];
        char ok = dblock_acquire(db_path, true, err, sizeof err) != NULL ? 'y' : 'n';
        if (write(ready[1], &ok, 1) != 1)
            _exit(1);
        for (;;)
            pause();
    }
    close(ready[1]);
    char ok = 0;
    cr_assert_eq(read(ready[0], &ok, 1), 1);
    close(ready[0]);
    cr_assert_eq(ok, 'y', "the child could not take the lock");

    char err[512] = "";
    char want[64];
    snprintf(want, sizeof want, "pid %ld", (long)pid);
    cr_assert_null(dblock_acquire(db_path, true, err, sizeof err));
    cr_assert_not_null(strstr(err, want), "no \"%s\" in: %s", want, err);

    cr_assert_eq(kill(pid, SIGKILL), 0);
    cr_assert_eq(waitpid(pid, NULL, 0), pid);
    /* The dead holder's file is left behind, naming it... */
    cr_assert_eq(file_pid(), (long)pid);
    /* ...and the kernel released its lock with it. */
    dblock *l = dblock_acquire(db_path, true, err, sizeof err);
    cr_assert_not_null(l, "a dead holder's lock file blocks: %s", err);
    cr_assert_eq(file_pid(), (long)getpid());
    dblock_release(l);
}

Test(dblock, missing_directory_is_an_error_naming_the_file)
{
    char err[512] = "";
    cr_assert_null(dblock_acquire("/nonexistent-dir-for-test/ns.db", true, err, sizeof err));
    cr_assert_not_null(strstr(err, "/nonexistent-dir-for-test/ns.db.lock"), "%s", err);
}

/* Another name of db_path (made by link or symlink) in the test's directory. */
static void other_name(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/%s", tmp_dir, name);
}

Test(dblock, a_symbolic_link_to_the_database_finds_the_same_lock)
{
    char err[512] = "", link_path[PATH_MAX], dir_link[PATH_MAX], via_dir[PATH_MAX + 8];
    dblock *l = dblock_acquire(db_path, true, err, sizeof err);
    cr_assert_not_null(l, "%s", err);
    other_name(link_path, sizeof link_path, "sym.db");
    cr_assert_eq(symlink(db_path, link_path), 0, "%s", strerror(errno));
    other_name(dir_link, sizeof dir_link, "dir");
    cr_assert_eq(symlink(tmp_dir, dir_link), 0, "%s", strerror(errno));
    snprintf(via_dir, sizeof via_dir, "%s/ns.db", dir_link);

    const char *const names[] = { link_path, via_dir };
    char want[64];
    snprintf(want, sizeof want, "pid %ld", (long)getpid());
    for (size_t i = 0; i < 2; i++) {
        char lock[PATH_MAX + 8];
        cr_assert_eq(dblock_path(names[i], lock, sizeof lock), 0);
        cr_assert_str_eq(lock, lock_path, "%s has its own lock file", names[i]);
        err[0] = '\0';
        cr_assert_null(dblock_acquire(names[i], true, err, sizeof err), "%s: taken twice",
                       names[i]);
        cr_assert_not_null(strstr(err, want), "no \"%s\" in: %s", want, err);
    }
    dblock_release(l);
    /* Not there yet: the name is kept, its directory resolved. */
    char fresh[PATH_MAX + 8], lock[PATH_MAX + 16], want_lock[PATH_MAX + 16];
    snprintf(fresh, sizeof fresh, "%s/new.db", dir_link);
    snprintf(want_lock, sizeof want_lock, "%s/new.db.lock", tmp_dir);
    cr_assert_eq(dblock_path(fresh, lock, sizeof lock), 0);
    cr_assert_str_eq(lock, want_lock);
    unlink(link_path);
    unlink(dir_link);
}

Test(dblock, a_hard_link_to_the_database_is_refused_naming_the_holder)
{
    char err[512] = "", hard[PATH_MAX], hard_lock[PATH_MAX + 8];
    dblock *l = dblock_acquire(db_path, true, err, sizeof err);
    cr_assert_not_null(l, "%s", err);
    other_name(hard, sizeof hard, "hard.db");
    cr_assert_eq(link(db_path, hard), 0, "%s", strerror(errno));
    cr_assert_eq(dblock_path(hard, hard_lock, sizeof hard_lock), 0);

    /* Another process: flocks of this one would not tell who holds them. */
    int out[2];
    cr_assert_eq(pipe(out), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        char e[512] = "";
        dblock *d = dblock_acquire(hard, true, e, sizeof e);
        if (write(out[1], e, strlen(e) + 1) < 0)
            _exit(2);
        _exit(d == NULL ? 0 : 1);
    }
    close(out[1]);
    char got[512] = "";
    cr_assert_gt(read(out[0], got, sizeof got - 1), 0);
    close(out[0]);
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the hard link got the lock");
    char want[64];
    snprintf(want, sizeof want, "pid %ld", (long)getpid());
    cr_assert_not_null(strstr(got, want), "no \"%s\" in: %s", want, got);
    cr_assert_not_null(strstr(got, "hard link"), "%s", got);
    cr_assert_neq(access(hard_lock, F_OK), 0, "the refused taker left its lock file");

    /* Released, the other name takes it, and then holds it against the first. */
    dblock_release(l);
    l = dblock_acquire(hard, true, err, sizeof err);
    cr_assert_not_null(l, "%s", err);
    cr_assert(!child_can_acquire(), "the database taken under both names at once");
    dblock_release(l);
    cr_assert(child_can_acquire());
    unlink(hard);
}

Test(dblock, without_hold_file_the_file_is_neither_made_nor_held)
{
    char err[512] = "";
    dblock *l = dblock_acquire(db_path, false, err, sizeof err);
    cr_assert_not_null(l, "%s", err);
    cr_assert_neq(access(db_path, F_OK), 0, "the file was made");
    cr_assert_eq(file_pid(), (long)getpid());
    dblock_release(l);
}

/* A link to a file not made yet locks the file it would make, as its own name does. */
Test(dblock, a_dangling_link_finds_the_lock_of_the_file_it_names)
{
    char link_path[PATH_MAX], lock[PATH_MAX + 8], err[512] = "";
    other_name(link_path, sizeof link_path, "dangling.db");
    cr_assert_eq(access(db_path, F_OK), -1, "the file is there already");
    cr_assert_eq(symlink("ns.db", link_path), 0, "%s", strerror(errno));
    cr_assert_eq(dblock_path(link_path, lock, sizeof lock), 0);
    cr_assert_str_eq(lock, lock_path);
    dblock *l = dblock_acquire(link_path, false, err, sizeof err);
    cr_assert_not_null(l, "%s", err);
    cr_assert_null(dblock_acquire(db_path, false, err, sizeof err), "taken under both names");
    dblock_release(l);
    unlink(link_path);
}
