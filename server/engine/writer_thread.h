/*
 * writer_thread: the engine's one writer thread. It owns the only write
 * connection; it takes up to batch_size queued ops, commits them in one
 * transaction (retrying a failed commit with capped backoff, never dropping
 * one), reports the new durable seq, and at shutdown flushes the queue or,
 * once the flush stalls or the budget runs out, spills it to the sidecar.
 */
#ifndef NODESTATE_WRITER_THREAD_H
#define NODESTATE_WRITER_THREAD_H

#include <stddef.h>

#include "engine_internal.h"

/* The thread's body (pthread_create with the engine); returns in state CLOSED. */
void *writer_thread_main(void *arg);
/* Gives up on everything still queued, counted in unflushed. Lock held. */
void writer_thread_drop_queue(engine *e);
/* The sidecar's path, quoted for a log line, in out. */
const char *writer_thread_spill_qpath(engine *e, char *out, size_t outlen);

#endif
