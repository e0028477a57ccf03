/* Unit tests of server/log: line shape, level filtering, quoting, whole lines. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

/* A logger writing into memory, and what it wrote so far. */
typedef struct sink {
    FILE *f;
    char *buf;
    size_t len;
    logger *l;
} sink;

static void sink_open(sink *s, int min_level)
{
    memset(s, 0, sizeof *s);
    s->f = open_memstream(&s->buf, &s->len);
    cr_assert_not_null(s->f);
    s->l = log_new(s->f, min_level);
    cr_assert_not_null(s->l);
}

/* What was written; log_write flushes every line, so buf is current. */
static const char *sink_text(sink *s)
{
    cr_assert_eq(fflush(s->f), 0);
    return s->buf != NULL ? s->buf : "";
}

static void sink_close(sink *s)
{
    log_free(s->l);
    fclose(s->f);
    free(s->buf);
}

static size_t count_lines(const char *text)
{
    size_t n = 0;
    for (; *text; text++)
        n += *text == '\n';
    return n;
}

static bool digits(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
    }
    return true;
}

/*
 * Checks "ts=YYYY-MM-DDTHH:MM:SS.mmmZ level=" at line and returns the
 * stamp's seconds since the epoch (read as UTC); the rest starts at *rest.
 */
static time_t parse_prefix(const char *line, const char **rest)
{
    const char *t = line + 3;
    struct tm tm;

    cr_assert(strncmp(line, "ts=", 3) == 0, "line \"%s\" lacks ts=", line);
    cr_assert(digits(t, 4) && t[4] == '-' && digits(t + 5, 2) && t[7] == '-' &&
                  digits(t + 8, 2) && t[10] == 'T' && digits(t + 11, 2) &&
                  t[13] == ':' && digits(t + 14, 2) && t[16] == ':' &&
                  digits(t + 17, 2) && t[19] == '.' && digits(t + 20, 3) &&
                  t[23] == 'Z',
              "bad timestamp in \"%s\"", line);
    cr_assert(strncmp(t + 24, " level=", 7) == 0, "\"%s\": level must follow ts", line);
    memset(&tm, 0, sizeof tm);
    tm.tm_year = atoi(t) - 1900;
    tm.tm_mon = atoi(t + 5) - 1;
    tm.tm_mday = atoi(t + 8);
    tm.tm_hour = atoi(t + 11);
    tm.tm_min = atoi(t + 14);
    tm.tm_sec = atoi(t + 17);
    *rest = t + 31;
    return timegm(&tm);
}

static time_t realtime_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec;
}

Test(log, line_shape)
{
    sink s;
    const char *rest;
    time_t before, after, stamp;

    /* A local zone far from UTC: the stamp must be UTC anyway. */
    cr_assert_eq(setenv("TZ", "America/Los_Angeles", 1), 0);
    tzset();
    sink_open(&s, NS_LOG_DEBUG);
    /*
     * The logger's clock (CLOCK_REALTIME), not time(): glibc's time() reads
     * the coarse clock, up to a tick behind, so a stamp taken just after a
     * second began could look later than "after".
     */
    before = realtime_s();
    log_write(s.l, NS_LOG_INFO, "listening", "addr=127.0.0.1:8080");
    after = realtime_s();

    const char *text = sink_text(&s);
    cr_assert_eq(count_lines(text), 1, "\"%s\"", text);
    stamp = parse_prefix(text, &rest);
    cr_assert_str_eq(rest, "info msg=listening addr=127.0.0.1:8080\n");
    cr_assert(stamp >= before && stamp <= after,
              "stamp %lld is not now (%lld..%lld): not UTC?", (long long)stamp,
              (long long)before, (long long)after);
    sink_close(&s);
}

Test(log, empty_or_null_fields_add_nothing)
{
    sink s;
    const char *rest;

    sink_open(&s, NS_LOG_DEBUG);
    log_write(s.l, NS_LOG_WARN, "a", "");
    log_write(s.l, NS_LOG_ERROR, "b", NULL);
    const char *text = sink_text(&s);
    cr_assert_eq(count_lines(text), 2);
    parse_prefix(text, &rest);
    cr_assert(strncmp(rest, "warn msg=a\n", 11) == 0, "\"%s\"", rest);
    parse_prefix(strchr(text, '\n') + 1, &rest);
    cr_assert_str_eq(rest, "error msg=b\n");
    sink_close(&s);
}

Test(log, level_filtering)
{
    sink s;
    const char *rest;

    sink_open(&s, NS_LOG_WARN);
    log_write(s.l, NS_LOG_DEBUG, "d", "");
    log_write(s.l, NS_LOG_INFO, "i", "");
    log_write(s.l, NS_LOG_WARN, "w", "");
    log_write(s.l, NS_LOG_ERROR, "e", "");
    log_printf(s.l, NS_LOG_INFO, "ip", "n=%d", 1);
    log_printf(s.l, NS_LOG_ERROR, "ep", "n=%d", 2);

    const char *text = sink_text(&s);
    cr_assert_eq(count_lines(text), 3, "\"%s\"", text);
    parse_prefix(text, &rest);
    cr_assert(strncmp(rest, "warn msg=w\n", 11) == 0, "\"%s\"", rest);
    text = strchr(text, '\n') + 1;
    parse_prefix(text, &rest);
    cr_assert(strncmp(rest, "error msg=e\n", 12) == 0, "\"%s\"", rest);
    text = strchr(text, '\n') + 1;
    parse_prefix(text, &rest);
    cr_assert_str_eq(rest, "error msg=ep n=2\n");
    sink_close(&s);
}

/* The line log_write makes of msg, without ts and level. */
static void expect_msg(const char *msg, const char *want)
{
    sink s;
    const char *rest;

    sink_open(&s, NS_LOG_DEBUG);
    log_write(s.l, NS_LOG_INFO, msg, "k=v");
    const char *text = sink_text(&s);
    cr_assert_eq(count_lines(text), 1, "msg \"%s\" gave \"%s\"", msg, text);
    parse_prefix(text, &rest);
    cr_assert_str_eq(rest, want);
    sink_close(&s);
}

Test(log, msg_quoting)
{
    expect_msg("started", "info msg=started k=v\n");
    expect_msg("start-failed", "info msg=start-failed k=v\n");
    expect_msg("two words", "info msg=\"two words\" k=v\n");
    expect_msg("a=b", "info msg=\"a=b\" k=v\n");
    expect_msg("say \"hi\"", "info msg=\"say \\\"hi\\\"\" k=v\n");
    expect_msg("back\\slash", "info msg=back\\slash k=v\n");
    expect_msg("back\\ slash", "info msg=\"back\\\\ slash\" k=v\n");
    /* A newline would split the line: it is escaped, so it is quoted. */
    expect_msg("line1\nline2", "info msg=\"line1\\nline2\" k=v\n");
}

Test(log, control_characters_in_fields_stay_on_one_line)
{
    sink s;
    const char *rest;

    sink_open(&s, NS_LOG_DEBUG);
    log_write(s.l, NS_LOG_INFO, "m", "error=\"a\nb\"");
    const char *text = sink_text(&s);
    cr_assert_eq(count_lines(text), 1, "\"%s\"", text);
    parse_prefix(text, &rest);
    cr_assert_str_eq(rest, "info msg=m error=\"a\\nb\"\n");
    sink_close(&s);
}

Test(log, printf_formats_fields)
{
    sink s;
    const char *rest;
    char big[3000];

    sink_open(&s, NS_LOG_DEBUG);
    log_printf(s.l, NS_LOG_INFO, "listening", "addr=%s:%u", "::1", 80u);
    const char *text = sink_text(&s);
    parse_prefix(text, &rest);
    cr_assert_str_eq(rest, "info msg=listening addr=::1:80\n");
    sink_close(&s);

    /* Longer than any stack buffer: still whole. */
    memset(big, 'y', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    sink_open(&s, NS_LOG_DEBUG);
    log_printf(s.l, NS_LOG_INFO, "big", "v=%s end=1", big);
    text = sink_text(&s);
    cr_assert_eq(count_lines(text), 1);
    parse_prefix(text, &rest);
    cr_assert(strncmp(rest, "info msg=big v=yyy", 18) == 0);
    cr_assert_eq(strlen(rest), strlen("info msg=big v=") + strlen(big) +
                                   strlen(" end=1\n"));
    cr_assert_str_eq(rest + strlen(rest) - 7, " end=1\n");
    sink_close(&s);
}

Test(log, levels_parse_and_name)
{
    const char *names[] = {"debug", "info", "warn", "error"};
    const int levels[] = {NS_LOG_DEBUG, NS_LOG_INFO, NS_LOG_WARN, NS_LOG_ERROR};

    for (size_t i = 0; i < 4; i++) {
        cr_assert_eq(log_level_parse(names[i]), levels[i]);
        cr_assert_str_eq(log_level_name(levels[i]), names[i]);
    }
    cr_assert_eq(log_level_parse("verbose"), -1);
    cr_assert_eq(log_level_parse(""), -1);
    cr_assert_eq(log_level_parse(NULL), -1);
    cr_assert_not_null(log_level_name(99));
    cr_assert_not_null(log_level_name(-1));
}

Test(log, quote)
{
    char buf[64];

    cr_assert_str_eq(logfmt_quote(buf, sizeof buf, "plain"), "plain");
    cr_assert_str_eq(logfmt_quote(buf, sizeof buf, "a b"), "\"a b\"");
    cr_assert_str_eq(logfmt_quote(buf, sizeof buf, "x=\"y\"\\"), "\"x=\\\"y\\\"\\\\\"");
    cr_assert_str_eq(logfmt_quote(buf, sizeof buf, "tab\there"), "\"tab\\there\"");
    cr_assert_str_eq(logfmt_quote(buf, sizeof buf, NULL), "");
    /* Truncation keeps the closing quote and never splits an escape. */
    cr_assert_str_eq(logfmt_quote(buf, 8, "a b c d e f"), "\"a b c\"");
    cr_assert_str_eq(logfmt_quote(buf, 6, "ab\"cd e"), "\"ab\"");
    cr_assert_str_eq(logfmt_quote(buf, 4, "plain"), "pla");
    /* A line stays UTF-8: characters kept whole, other bytes escaped (and quoted). */
    cr_assert_str_eq(logfmt_quote(buf, sizeof buf, "caf\xc3\xa9"), "caf\xc3\xa9");
    cr_assert_str_eq(logfmt_quote(buf, sizeof buf, "/runs/a\xff\xc3"), "\"/runs/a\\xff\\xc3\"");
    cr_assert_str_eq(logfmt_quote(buf, sizeof buf, "\xed\xa0\x80"),
                     "\"\\xed\\xa0\\x80\"");
    cr_assert_str_eq(logfmt_quote(buf, 5, "ab\xe2\x82\xac"), "ab");
    cr_assert_str_eq(logfmt_quote(buf, 6, "ab\xe2\x82\xac"), "ab\xe2\x82\xac");
    cr_assert_str_eq(logfmt_quote(buf, 7, "a\xff b"), "\"a\"");
}

Test(log, null_logger_is_harmless)
{
    log_write(NULL, NS_LOG_ERROR, "x", "y=1");
    log_printf(NULL, NS_LOG_ERROR, "x", "y=%d", 1);
    log_free(NULL);
    cr_assert_null(log_new(NULL, NS_LOG_INFO));
}

#define WRITERS 4
#define LINES_EACH 500

static void *writer(void *arg)
{
    logger *l = arg;
    char field[600];

    /* Long enough that interleaved writes would show. */
    memset(field, 'z', sizeof field - 1);
    field[sizeof field - 1] = '\0';
    for (int i = 0; i < LINES_EACH; i++)
        log_printf(l, NS_LOG_INFO, "tick", "i=%d pad=%s", i, field);
    return NULL;
}

Test(log, concurrent_lines_stay_whole)
{
    sink s;
    pthread_t t[WRITERS];

    sink_open(&s, NS_LOG_DEBUG);
    for (int i = 0; i < WRITERS; i++)
        cr_assert_eq(pthread_create(&t[i], NULL, writer, s.l), 0);
    for (int i = 0; i < WRITERS; i++)
        cr_assert_eq(pthread_join(t[i], NULL), 0);

    const char *text = sink_text(&s);
    cr_assert_eq(count_lines(text), WRITERS * LINES_EACH);
    for (const char *line = text; *line; line = strchr(line, '\n') + 1) {
        const char *rest, *pad;
        parse_prefix(line, &rest);
        cr_assert(strncmp(rest, "info msg=tick i=", 16) == 0);
        pad = strstr(rest, " pad=");
        cr_assert_not_null(pad);
        cr_assert_eq(strspn(pad + 5, "z"), 599);
        cr_assert_eq(pad[5 + 599], '\n');
    }
    sink_close(&s);
}
