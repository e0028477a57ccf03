/*
 * tmp_files: temporary directories and small files for the integration
 * tests: a server's directory, a token file, a file a process writes its
 * output to. Names go under $TMPDIR (or /tmp) so parallel runs never share
 * one. Functions return 0 / -1 (or NULL) and never assert.
 */
#ifndef NODESTATE_TMP_FILES_H
#define NODESTATE_TMP_FILES_H

#include <stddef.h>

/* Makes $TMPDIR/nodestate-<tag>-XXXXXX into buf. 0, or -1 (buf unusable). */
int ns_tmp_dir(char *buf, size_t size, const char *tag);
/*
 * Makes and opens $TMPDIR/nodestate-<tag>-XXXXXX, already unlinked: the file
 * lives as long as the descriptor. The descriptor, or -1.
 */
int ns_tmp_fd(const char *tag);
/* Removes dir and the files in it (not subdirectories); best effort. */
void ns_rm_dir(const char *dir);
/*
 * The content of path into buf (at most size - 1 bytes, NUL-terminated).
 * 0, or -1 with buf "" when it cannot be opened.
 */
int ns_file_read(const char *path, char *buf, size_t size);
/* Writes text as the whole of path (created or truncated). 0 or -1. */
int ns_file_write(const char *path, const char *text);
/* The whole file at fd from its start (malloc'd, NUL-terminated), or NULL. */
char *ns_fd_slurp(int fd);

#endif
