/*
 * it_assert: helpers the integration tests (tests/it_*.c) share that assert
 * with Criterion. They live apart from the harness because the harness
 * promises never to assert (its functions may run on any thread); these end
 * the test on failure, so call them only from a test's main thread.
 *
 * A failure reports this file's line, and the message names what failed
 * (method, path, member, status and body) so the calling test can be found.
 */
#ifndef NODESTATE_IT_ASSERT_H
#define NODESTATE_IT_ASSERT_H

#include <jansson.h>

#include "harness.h"

/* The same declaration as sqlite3.h's, so callers need not include it. */
typedef struct sqlite3 sqlite3;

/* ---- the SQLite file's write lock -------------------------------------- */

/*
 * Opens the server's database for writing and takes its write lock
 * (BEGIN EXCLUSIVE, waiting up to 5 s for it), as another process would.
 * Asserts every step; returns the connection holding the lock.
 */
sqlite3 *it_lock_db(ns_server *s);
/* Rolls back the lock holder's transaction and closes it; asserts both. */
void it_unlock_db(sqlite3 *db);

/*
 * The same for either store: the SQLite file's write lock as above, or, on
 * PostgreSQL (pg_check.h), a transaction holding run_node_state in
 * EXCLUSIVE mode (reads go on, the server's writes wait and then fail on
 * its lock_timeout, as they fail on SQLite's busy timeout).
 */
typedef struct it_store_lock it_store_lock;
it_store_lock *it_lock_store(ns_server *s);
void it_unlock_store(it_store_lock *l);

/* ---- HTTP with JSON answers -------------------------------------------- */

/*
 * GET path on s's client; asserts the request was answered with status want
 * and a JSON object body. Returns that object (json_decref it).
 */
json_t *it_get_json(ns_server *s, const char *path, long want);
/*
 * POST /runs/{run}/nodes/{node}/state{query} (query may be NULL) with body
 * json; asserts status want and a JSON object body. Returns that object
 * (json_decref it).
 */
json_t *it_post_json(ns_server *s, const char *run, const char *node,
                     const char *query, const char *json, long want);
/*
 * DELETE /runs/{run}{query} (query may be NULL); asserts status want (202,
 * or 200 with ?wait=true) and returns the delete's seq from the body.
 */
long long it_delete_seq(ns_server *s, const char *run, const char *query, long want);
/* The same POST asserting only the status; the body is dropped. */
void it_post(ns_server *s, const char *run, const char *node, const char *query,
             const char *json, long want);

/* ---- raw sockets (raw_socket.h) ----------------------------------------- */

/* ns_raw_connect from src (NULL for 127.0.0.1); asserts it connected. */
int it_raw_connect(const ns_server *s, const char *src);
/* ns_raw_read_for; asserts no receive error. 1 when the peer closed, else 0. */
int it_raw_read_for(int fd, char *buf, size_t cap, size_t *len, int ms);
/*
 * Reads into buf (NUL-terminated, *len bytes) until the server closes;
 * asserts it did within timeout_s.
 */
void it_raw_read_to_close(int fd, char *buf, size_t cap, size_t *len,
                          double timeout_s);

/* ---- the environment (env_clear.h) -------------------------------------- */

/*
 * ns_env_clear, asserted: a suite's .init, so that no NODESTATE_* variable of
 * a developer's shell or CI changes what the server under test is set to.
 */
void it_env_clear(void);

/* ---- small files (tmp_files.h) ------------------------------------------ */

/* Writes text as the whole of path; asserts it was written. */
void it_write_file(const char *path, const char *text);
/* The content of path into buf (at most size - 1 bytes); asserts it opened. */
void it_read_file(const char *path, char *buf, size_t size);

/* ---- JSON members ------------------------------------------------------ */

/* Member key of o as an integer; asserts it is present and an integer. */
long long it_jint(const json_t *o, const char *key);

#endif
