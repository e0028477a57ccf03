/*
 * logfmt: quoting and escaping for logfmt values, shared by the logger and
 * every layer that builds "key=value" fields (the engine, the transport), so
 * a value from outside (SQLite's message, a path) can never split a line or
 * forge a key.
 */
#ifndef NODESTATE_LOGFMT_H
#define NODESTATE_LOGFMT_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Writes value into buf (size bytes) as a logfmt value: as is when it needs
 * no quotes, else in double quotes with '"', '\' and control characters
 * escaped, and every byte that is no part of a UTF-8 character as \xHH.
 * Truncates to fit, between characters. NULL writes "". Returns buf.
 */
const char *logfmt_quote(char *buf, size_t size, const char *value);
/*
 * The escape of one byte into esc (NUL-terminated); returns its length.
 * Control characters are always escaped; '"' and '\' only when quoted.
 */
size_t logfmt_escape(unsigned char c, bool quoted, char esc[7]);

#endif
