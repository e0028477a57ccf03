/*
 * doc_table: reading the repository's documents in unit tests that check
 * them against the code (test_problems: the problem types; test_stats: the
 * counters): a file of the source tree, and the rows and cells of a Markdown
 * table found by its header line.
 *
 * These assert with Criterion; call them only from a test. The test target
 * must define NODESTATE_SOURCE_DIR (tests/CMakeLists.txt does).
 */
#ifndef NODESTATE_DOC_TABLE_H
#define NODESTATE_DOC_TABLE_H

#include <stddef.h>

/* The whole file name under the source tree, NUL-terminated, to free(). */
char *doc_table_slurp(const char *name);
/*
 * The first row of the table headed by the line header (e.g. "| a | b |"),
 * past its separator row. Rows begin with '|'; the row after row p is
 * doc_table_next(p), and the table ends where a line does not begin with '|'.
 */
const char *doc_table_find(const char *doc, const char *header);
const char *doc_table_next(const char *row);
/*
 * The text of a cell between p and the next '|', trimmed, into out; returns
 * where the next cell begins. The first cell of a row starts at row + 1.
 */
const char *doc_table_cell(const char *p, char *out, size_t size);
/* s without its enclosing backticks, in place. */
char *doc_table_unquote(char *s);

#endif
