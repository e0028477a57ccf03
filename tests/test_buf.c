#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "buf.h"

/* Runs buf_json_string on s and returns the text (caller frees). */
static char *json_of(const char *s)
{
    buf b;
    buf_init(&b);
    buf_json_string(&b, s);
    char *out = buf_steal(&b, NULL);
    cr_assert_not_null(out);
    return out;
}

Test(buf, starts_empty_and_steals_empty_string)
{
    buf b;
    buf_init(&b);
    cr_assert_eq(b.len, 0);
    cr_assert_not(b.failed);
    size_t len = 99;
    char *s = buf_steal(&b, &len);
    cr_assert_not_null(s);
    cr_assert_eq(len, 0);
    cr_assert_str_eq(s, "");
    free(s);
    cr_assert_null(b.data);
    cr_assert_eq(b.len, 0);
}

Test(buf, append_puts_printf)
{
    buf b;
    buf_init(&b);
    buf_append(&b, "abcdef", 3);
    buf_puts(&b, "-x-");
    buf_printf(&b, "%d/%s", 42, "y");
    buf_append(&b, "ignored", 0);
    cr_assert_eq(b.len, strlen("abc-x-42/y"));
    cr_assert_str_eq(b.data, "abc-x-42/y");
    size_t len;
    char *s = buf_steal(&b, &len);
    cr_assert_str_eq(s, "abc-x-42/y");
    cr_assert_eq(len, 10);
    free(s);
    /* steal resets: the buffer is reusable */
    cr_assert_eq(b.len, 0);
    cr_assert_null(b.data);
    buf_puts(&b, "again");
    cr_assert_str_eq(b.data, "again");
    buf_free(&b);
    cr_assert_null(b.data);
}

Test(buf, grows_across_many_appends_and_large_printf)
{
    buf b;
    buf_init(&b);
    for (int i = 0; i < 10000; i++)
        buf_printf(&b, "%04d,", i % 10000);
    cr_assert_not(b.failed);
    cr_assert_eq(b.len, 50000);
    cr_assert(strncmp(b.data, "0000,0001,0002,", 15) == 0);
    cr_assert_str_eq(b.data + b.len - 10, "9998,9999,");
    cr_assert_eq(strlen(b.data), b.len);

    /* One printf far larger than any room the buffer has. */
    char *big = malloc(100001);
    cr_assert_not_null(big);
    memset(big, 'z', 100000);
    big[100000] = '\0';
    buf_printf(&b, "[%s]", big);
    cr_assert_eq(b.len, 50000 + 100002);
    cr_assert_eq(b.data[50000], '[');
    cr_assert_eq(b.data[50000 + 100001], ']');
    cr_assert_eq(b.data[b.len], '\0');
    free(big);
    buf_free(&b);
}

Test(buf, failed_buffer_ignores_appends_and_steals_null)
{
    buf b;
    buf_init(&b);
    buf_puts(&b, "partial");
    b.failed = true;   /* what an allocation failure leaves behind */
    buf_puts(&b, "more");
    buf_printf(&b, "%d", 1);
    buf_json_string(&b, "x");
    cr_assert_eq(b.len, 7);
    size_t len = 5;
    cr_assert_null(buf_steal(&b, &len));
    cr_assert_eq(len, 0);
    cr_assert_null(b.data);
    cr_assert_not(b.failed);
}

Test(buf, json_string_null_and_plain)
{
    char *s = json_of(NULL);
    cr_assert_str_eq(s, "null");
    free(s);
    s = json_of("");
    cr_assert_str_eq(s, "\"\"");
    free(s);
    s = json_of("hello world");
    cr_assert_str_eq(s, "\"hello world\"");
    free(s);
}

Test(buf, json_string_escapes_per_rfc8259)
{
    char *s = json_of("q\"b\\/\b\f\n\r\t");
    /* '/' needs no escape */
    cr_assert_str_eq(s, "\"q\\\"b\\\\/\\b\\f\\n\\r\\t\"");
    free(s);

    s = json_of("\x01\x1f\x7f" "a");
    cr_assert_str_eq(s, "\"\\u0001\\u001f\x7f" "a\"");
    free(s);

    /* every control character is escaped, nothing else below 0x80 is */
    for (int c = 1; c < 0x20; c++) {
        char in[2] = { (char)c, '\0' };
        s = json_of(in);
        cr_assert_eq(s[1], '\\', "control 0x%02x not escaped", c);
        free(s);
    }
}

Test(buf, json_string_passes_utf8_through)
{
    const char *in = "caf\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x98\x80";
    char *s = json_of(in);
    size_t n = strlen(in);
    cr_assert_eq(strlen(s), n + 2);
    cr_assert(memcmp(s + 1, in, n) == 0);
    free(s);
}

Test(buf, json_string_replaces_invalid_utf8)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        { "a\xff" "b", "\"a\\ufffdb\"" },
        { "caf\xc3", "\"caf\\ufffd\"" },              /* cut inside a character */
        { "\xc3\xa9\xa9", "\"\xc3\xa9\\ufffd\"" },    /* a stray continuation byte */
        { "\xc0\xaf", "\"\\ufffd\\ufffd\"" },           /* overlong '/' */
        { "\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\"" }, /* a surrogate */
        { "\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\"" }, /* past U+10FFFF */
        { "\xe2\x82\xac\"", "\"\xe2\x82\xac\\\"\"" },  /* valid, then an escape */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *s = json_of(cases[i].in);
        cr_assert_str_eq(s, cases[i].out, "case %zu", i);
        free(s);
    }
}

Test(buf, json_string_appends_after_existing_content)
{
    buf b;
    buf_init(&b);
    buf_puts(&b, "{\"k\":");
    buf_json_string(&b, "a\"b");
    buf_puts(&b, "}");
    cr_assert_str_eq(b.data, "{\"k\":\"a\\\"b\"}");
    buf_free(&b);
}

/*
 * Found by fuzzing (tests/fuzz/corpus/router/crash-405-method-not-utf8): a
 * 405 echoes the client's method, which may hold bytes that are not UTF-8,
 * and the body was then not JSON. Every byte outside well-formed UTF-8 now
 * becomes U+FFFD; well-formed sequences around it are kept.
 */
Test(buf, json_string_replaces_bytes_that_are_not_utf8)
{
    static const struct {
        const char *in;
        const char *out;
    } cases[] = {
        { "DE42?wait\xc3LETE", "\"DE42?wait\\ufffdLETE\"" },      /* lead byte, no continuation */
        { "a\x80z", "\"a\\ufffdz\"" },                              /* lone continuation */
        { "\xc0\xaf", "\"\\ufffd\\ufffd\"" },                       /* overlong '/' */
        { "\xe0\x80\xaf", "\"\\ufffd\\ufffd\\ufffd\"" },            /* overlong, 3 bytes */
        { "\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\"" },            /* a surrogate */
        { "\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\"" }, /* above U+10FFFF */
        { "\xff\xfe", "\"\\ufffd\\ufffd\"" },
        { "\xe6\x97", "\"\\ufffd\\ufffd\"" },                       /* cut at the end */
        { "\xe6\x97\xa5\xe6", "\"\xe6\x97\xa5\\ufffd\"" },          /* whole, then cut */
        { "\xf4\x8f\xbf\xbf\xed\x9f\xbf", "\"\xf4\x8f\xbf\xbf\xed\x9f\xbf\"" }, /* U+10FFFF, U+D7FF */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *s = json_of(cases[i].in);
        cr_assert_str_eq(s, cases[i].out, "case %zu", i);
        free(s);
    }
}
