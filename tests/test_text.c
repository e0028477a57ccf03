/*
 * Unit tests for text: text_safe keeps valid UTF-8, escapes control bytes
 * and invalid UTF-8 as \xHH, and cuts only at whole characters;
 * text_query_decode decodes %HH and '+' and refuses bad escapes and %00.
 */
#include <criterion/criterion.h>

#include <string.h>

#include "text.h"
#include "utf8_check.h"

static bool utf8_ok(const char *s)
{
    return utf8_check(s, strlen(s));
}

static const char *safe(const char *s, size_t len, size_t size)
{
    static char out[512];
    cr_assert_leq(size, sizeof out);
    size_t n = text_safe(out, size, s, len);
    cr_assert_eq(n, strlen(out));
    cr_assert_lt(n, size);
    cr_assert(utf8_ok(out), "not UTF-8: %s", out);
    return out;
}

Test(text, keeps_printable_ascii_and_valid_utf8)
{
    cr_assert_str_eq(safe("GET", 3, 64), "GET");
    cr_assert_str_eq(safe("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14, 64),
                     "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    cr_assert_str_eq(safe("", 0, 64), "");
}

Test(text, escapes_controls_and_invalid_bytes)
{
    cr_assert_str_eq(safe("G\xffT", 3, 64), "G\\xFFT");
    cr_assert_str_eq(safe("a\x01" "b\x7f", 4, 64), "a\\x01b\\x7F");
    cr_assert_str_eq(safe("a\0b", 3, 64), "a\\x00b");
    cr_assert_str_eq(safe("a\nb", 3, 64), "a\\x0Ab");
    /* A lead byte without its continuation, a lone continuation. */
    cr_assert_str_eq(safe("\xc3" "x", 2, 64), "\\xC3x");
    cr_assert_str_eq(safe("\x80", 1, 64), "\\x80");
    /* Overlong forms, a surrogate, and a code point beyond U+10FFFF. */
    cr_assert_str_eq(safe("\xc0\xaf", 2, 64), "\\xC0\\xAF");
    cr_assert_str_eq(safe("\xe0\x80\xaf", 3, 64), "\\xE0\\x80\\xAF");
    cr_assert_str_eq(safe("\xed\xa0\x80", 3, 64), "\\xED\\xA0\\x80");
    cr_assert_str_eq(safe("\xf4\x90\x80\x80", 4, 64), "\\xF4\\x90\\x80\\x80");
    /* A sequence cut short by the end of the input. */
    cr_assert_str_eq(safe("ab\xe2\x82", 4, 64), "ab\\xE2\\x82");
}

Test(text, cuts_at_whole_characters_and_marks_the_cut)
{
    /* "aé..." in 10 bytes: 'a' then é (2 bytes) would reach byte 7 of 9. */
    char many[64];
    many[0] = 'a';
    for (int i = 0; i < 20; i++)
        memcpy(many + 1 + 2 * i, "\xc3\xa9", 2);
    for (size_t size = 1; size < 20; size++) {
        const char *o = safe(many, 41, size);
        if (size > 4)
            cr_assert(strcmp(o + strlen(o) - 3, "...") == 0, "size %zu: %s", size, o);
    }
    cr_assert_str_eq(safe(many, 41, 9), "a\xc3\xa9\xc3\xa9...");
    cr_assert_str_eq(safe(many, 41, 10), "a\xc3\xa9\xc3\xa9...");
    cr_assert_str_eq(safe(many, 41, 11), "a\xc3\xa9\xc3\xa9\xc3\xa9...");
    /* An escape is never split either. */
    cr_assert_str_eq(safe("ab\xff\xff\xff", 5, 9), "ab...");
    cr_assert_str_eq(safe("ab\xff\xff\xff", 5, 10), "ab\\xFF...");
    /* Exactly fitting text is not marked. */
    cr_assert_str_eq(safe("abcd", 4, 5), "abcd");
    cr_assert_str_eq(safe("abcde", 5, 5), "a...");
    cr_assert_str_eq(safe("abcde", 5, 3), "ab");
    char out[1] = { 'x' };
    cr_assert_eq(text_safe(out, 1, "abc", 3), 0);
    cr_assert_eq(out[0], '\0');
}

Test(text, a_second_pass_changes_nothing)
{
    char once[128], twice[128];
    const char in[] = "x\xff\x01\xc3\xa9\xe2\x82 \\x41";
    text_safe(once, sizeof once, in, sizeof in - 1);
    text_safe(twice, sizeof twice, once, strlen(once));
    cr_assert_str_eq(once, twice);
}

static text_decode_result decode(const char *s, char *out, size_t size)
{
    size_t n = 99;
    text_decode_result r = text_query_decode(out, size, s, &n);
    if (r == TEXT_DECODED)
        cr_assert_eq(n, strlen(out));
    else
        cr_assert_str_eq(out, "");
    return r;
}

Test(text, query_decode_percent_and_plus)
{
    char out[64];
    cr_assert_eq(decode("running,failed", out, sizeof out), TEXT_DECODED);
    cr_assert_str_eq(out, "running,failed");
    cr_assert_eq(decode("running%2Cfailed", out, sizeof out), TEXT_DECODED);
    cr_assert_str_eq(out, "running,failed");
    cr_assert_eq(decode("%74%72%75%65", out, sizeof out), TEXT_DECODED);
    cr_assert_str_eq(out, "true");
    cr_assert_eq(decode("a%7eb%7Ec", out, sizeof out), TEXT_DECODED);
    cr_assert_str_eq(out, "a~b~c");
    cr_assert_eq(decode("a+b%2Bc", out, sizeof out), TEXT_DECODED);
    cr_assert_str_eq(out, "a b+c");
    cr_assert_eq(decode("%25", out, sizeof out), TEXT_DECODED);
    cr_assert_str_eq(out, "%");
    cr_assert_eq(decode("", out, sizeof out), TEXT_DECODED);
    cr_assert_str_eq(out, "");
    cr_assert_eq(decode("%C3%A9", out, sizeof out), TEXT_DECODED);
    cr_assert_str_eq(out, "\xc3\xa9");
}

Test(text, query_decode_refuses_bad_escapes_nul_and_overflow)
{
    char out[8];
    static const char *const bad[] = { "%", "%4", "a%zz", "%g0", "%00", "a%00b", "1%" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cr_assert_eq(decode(bad[i], out, sizeof out), TEXT_BAD_ESCAPE, "%s", bad[i]);
    cr_assert_eq(decode("1234567", out, sizeof out), TEXT_DECODED);
    cr_assert_eq(decode("12345678", out, sizeof out), TEXT_TOO_LONG);
    /* Escapes count decoded: 8 escapes are 8 bytes, too many for 7. */
    cr_assert_eq(decode("%31%32%33%34%35%36%37", out, sizeof out), TEXT_DECODED);
    cr_assert_str_eq(out, "1234567");
    cr_assert_eq(decode("%31%32%33%34%35%36%37%38", out, sizeof out), TEXT_TOO_LONG);
}
