/*
 * raw_socket: plain TCP to a test's server, for the requests libcurl would
 * not send as written (trickled headers, ambiguous framing, raw bytes in a
 * path) and for holding connections open. Every read is bounded by a time;
 * the functions report and never assert (it_assert.h has asserting forms).
 */
#ifndef NODESTATE_RAW_SOCKET_H
#define NODESTATE_RAW_SOCKET_H

#include <stddef.h>

#include "server.h"

/*
 * A TCP connection to the server from source address src ("127.0.0.1" when
 * NULL). The descriptor, or -1 with errno set.
 */
int ns_raw_connect(const ns_server *s, const char *src);
/* Sends all of data. 0, or -1 when the peer is gone (EPIPE, ECONNRESET). */
int ns_raw_send(int fd, const char *data, size_t len);
int ns_raw_send_str(int fd, const char *text);
/*
 * Reads what arrives within ms into buf (NUL-terminated, *len grows; bytes
 * past cap are read and dropped). 1 when the peer closed (end of stream or
 * reset), 0 when it did not, -1 on another receive error (errno set).
 */
int ns_raw_read_for(int fd, char *buf, size_t cap, size_t *len, int ms);

#endif
