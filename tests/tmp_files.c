/*
 * tmp_files: temporary directories and the small files the integration tests
 * write and read back.
 */
#include "tmp_files.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* $TMPDIR/nodestate-<tag>-XXXXXX into buf; 0, or -1 when it does not fit. */
static int ns_tmp_name(char *buf, size_t size, const char *tag)
{
    const char *tmp = getenv("TMPDIR");
    if (tmp == NULL || tmp[0] == '\0')
        tmp = "/tmp";
    int n = snprintf(buf, size, "%s/nodestate-%s-XXXXXX", tmp, tag);
    return n < 0 || (size_t)n >= size ? -1 : 0;
}

int ns_tmp_dir(char *buf, size_t size, const char *tag)
{
    if (ns_tmp_name(buf, size, tag) != 0 || mkdtemp(buf) == NULL)
        return -1;
    return 0;
}

int ns_tmp_fd(const char *tag)
{
    char path[PATH_MAX];
    if (ns_tmp_name(path, sizeof path, tag) != 0)
        return -1;
    int fd = mkstemp(path);
    if (fd == -1)
        return -1;
    unlink(path);
    return fd;
}

void ns_rm_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            char path[PATH_MAX];
            int n = snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            if (n > 0 && (size_t)n < sizeof path)
                unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

int ns_file_read(const char *path, char *buf, size_t size)
{
    buf[0] = '\0';
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, size - 1, f);
    buf[n] = '\0';
    fclose(f);
    return 0;
}

int ns_file_write(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return -1;
    int rc = fputs(text, f) >= 0 ? 0 : -1;
    if (fclose(f) != 0)
        rc = -1;
    return rc;
}

char *ns_fd_slurp(int fd)
{
    size_t len = 0, cap = 4096;
    char *text = malloc(cap);
    if (text == NULL || lseek(fd, 0, SEEK_SET) == -1)
        goto fail;
    for (;;) {
        if (cap - len < 2) {
            char *grown = realloc(text, cap * 2);
            if (grown == NULL)
                goto fail;
            text = grown;
            cap *= 2;
        }
        ssize_t n = read(fd, text + len, cap - len - 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto fail;
        if (n == 0)
            break;
        len += (size_t)n;
    }
    text[len] = '\0';
    return text;
fail:
    free(text);
    return NULL;
}
