/*
 * raw_socket: TCP connect, send and bounded reads against a test's server on
 * 127.0.0.1, shared by the tests that speak HTTP by hand.
 */
#include "raw_socket.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bounded_wait.h"

int ns_raw_connect(const ns_server *s, const char *src)
{
    struct sockaddr_in to, from;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return -1;
    if (src != NULL) {
        memset(&from, 0, sizeof from);
        from.sin_family = AF_INET;
        if (inet_pton(AF_INET, src, &from.sin_addr) != 1) {
            errno = EINVAL;
            goto fail;
        }
        if (bind(fd, (struct sockaddr *)&from, sizeof from) == -1)
            goto fail;
    }
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons((uint16_t)ns_port(s));
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&to, sizeof to) == -1)
        goto fail;
    return fd;
fail:;
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

int ns_raw_send(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

int ns_raw_send_str(int fd, const char *text)
{
    return ns_raw_send(fd, text, strlen(text));
}

int ns_raw_read_for(int fd, char *buf, size_t cap, size_t *len, int ms)
{
    long long until = ns_mono_ms() + ms;
    /* One read per round at the least; the deadline bounds them. */
    for (;;) {
        long long left = until - ns_mono_ms();
        struct pollfd p = { .fd = fd, .events = POLLIN };
        char sink[4096];
        char *into = *len + 1 < cap ? buf + *len : sink;
        size_t room = *len + 1 < cap ? cap - 1 - *len : sizeof sink;
        if (left <= 0)
            return 0;
        int rc = poll(&p, 1, (int)left);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            return 0;
        ssize_t n = recv(fd, into, room, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0 || (n < 0 && errno == ECONNRESET))
            return 1;
        if (n < 0)
            return -1;
        if (into != sink) {
            *len += (size_t)n;
            buf[*len] = '\0';
        }
    }
}
