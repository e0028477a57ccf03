/*
 * harness: what the integration tests (tests/it_*.c) share, in one include.
 * Each piece is a file of its own:
 *   server.h       start/stop the real nodestate binary, its log, ns_run
 *   http_client.h  libcurl requests and their answers
 *   json_check.h   JSON answers: members, RFC 9457 problems, timestamps
 *   stats_check.h  /stats polled with bounded waits, /metrics samples
 *   db_check.h     the database read directly (ns_db_exec writes)
 *   pg_check.h     the same tests on PostgreSQL (NS_IT_STORE=pg)
 *   raw_socket.h   plain TCP for requests libcurl would rewrite
 *   tmp_files.h    temporary directories and small files
 *   bounded_wait.h clocks and bounded polling
 *   env_clear.h    the NODESTATE_* environment a test inherits
 *
 * Every wait here is bounded in both loop count and time, so a misbehaving
 * server makes a test fail, never hang. Functions return 0 / -1 (or NULL);
 * none of them asserts, so they may be called from any thread (Criterion's
 * asserts belong to the test's main thread; see it_assert.h).
 */
#ifndef NODESTATE_HARNESS_H
#define NODESTATE_HARNESS_H

#include "bounded_wait.h"
#include "db_check.h"
#include "env_clear.h"
#include "http_client.h"
#include "json_check.h"
#include "pg_check.h"
#include "raw_socket.h"
#include "server.h"
#include "stats_check.h"
#include "tmp_files.h"

#endif
