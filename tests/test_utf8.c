/* test_utf8: utf8_char_len, the one judge of UTF-8 for the answers and the log. */
#include <criterion/criterion.h>
#include <string.h>

#include "utf8.h"
#include "utf8_check.h"

Test(utf8, char_len_follows_rfc_3629)
{
    cr_assert_eq(utf8_char_len("a", 1), 1);
    cr_assert_eq(utf8_char_len("\xc3\xa9", 2), 2);
    cr_assert_eq(utf8_char_len("\xe2\x82\xac", 3), 3);
    cr_assert_eq(utf8_char_len("\xf0\x9f\x98\x80", 4), 4);
    cr_assert_eq(utf8_char_len("\xef\xbf\xbd", 3), 3);      /* U+FFFD */
    cr_assert_eq(utf8_char_len("\xf4\x8f\xbf\xbf", 4), 4);  /* U+10FFFF */
    cr_assert_eq(utf8_char_len("\xc3\xa9", 1), 0);          /* cut short */
    cr_assert_eq(utf8_char_len("", 0), 0);
    static const char *const bad[] = { "\x80", "\xbf", "\xc0\x80", "\xc1\xbf", "\xe0\x9f\xbf",
                                       "\xed\xa0\x80", "\xed\xbf\xbf", "\xf0\x8f\xbf\xbf",
                                       "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xff",
                                       "\xc3\x28", "\xe2\x82\x28" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        cr_assert_eq(utf8_char_len(bad[i], strlen(bad[i])), 0, "case %zu", i);
    cr_assert(utf8_check("\xc3\xa9", 2));
    cr_assert_not(utf8_check("\xc3", 1));
}
