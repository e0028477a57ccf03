/*
 * loglevel: the log levels and the logger callback every layer is handed.
 * Below every layer so that the store, the engine, the api and the HTTP
 * server can log through the same callback without knowing who writes the
 * lines (server/log.c does, in the service).
 */
#ifndef NODESTATE_LOGLEVEL_H
#define NODESTATE_LOGLEVEL_H

/* Log levels, shared by every layer's logger callback. */
enum { NS_LOG_DEBUG, NS_LOG_INFO, NS_LOG_WARN, NS_LOG_ERROR };
/*
 * A logger: msg is a short event name, fields is logfmt "key=value ..."
 * text (may be empty). Called from any thread.
 */
typedef void ns_log_fn(void *ctx, int level, const char *msg, const char *fields);

#endif
