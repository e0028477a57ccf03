/* Unit tests of server/http/framing: which header sets delimit a body one way only. */
#include <criterion/criterion.h>
#include <string.h>

#include "framing.h"

#define F(n, v) { (n), sizeof(n) - 1, (v), sizeof(v) - 1 }

static framing_verdict check(const framing_header *h, size_t n)
{
    return framing_check(h, n);
}

Test(framing, no_framing_fields_is_ok)
{
    const framing_header h[] = { F("Host", "x"), F("Accept", "*/*") };

    cr_assert_eq(check(h, 2), FRAMING_OK);
    cr_assert_eq(check(NULL, 0), FRAMING_OK);
    cr_assert_str_eq(framing_detail(FRAMING_OK), "");
}

Test(framing, one_content_length_is_ok)
{
    const framing_header h[] = { F("Content-Length", "20") };
    const framing_header zero[] = { F("content-length", "0") };
    const framing_header max[] = { F("CONTENT-LENGTH", "18446744073709551615") };

    cr_assert_eq(check(h, 1), FRAMING_OK);
    cr_assert_eq(check(zero, 1), FRAMING_OK);
    cr_assert_eq(check(max, 1), FRAMING_OK);
}

Test(framing, repeated_equal_content_length_is_ok)
{
    const framing_header h[] = { F("Content-Length", "20"), F("content-length", "020") };

    cr_assert_eq(check(h, 2), FRAMING_OK);
}

Test(framing, different_content_lengths_conflict)
{
    const framing_header h[] = { F("Content-Length", "20"), F("Host", "x"),
                                 F("Content-Length", "25") };

    cr_assert_eq(check(h, 3), FRAMING_LENGTH_CONFLICT);
    cr_assert(strlen(framing_detail(FRAMING_LENGTH_CONFLICT)) > 0);
}

Test(framing, malformed_content_lengths)
{
    static const char *const bad[] = {
        "", " ", "abc", "2x", "-1", "+20", "20, 20", "2 0", "0x14", "1e3",
        "18446744073709551616", "99999999999999999999999", "20\r", "20 ", " 20",
        "\t20",
    };

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        framing_header h = { "Content-Length", 14, bad[i], strlen(bad[i]) };

        cr_assert_eq(check(&h, 1), FRAMING_LENGTH_MALFORMED, "\"%s\"", bad[i]);
    }
}

Test(framing, malformed_wins_over_a_valid_one)
{
    const framing_header h[] = { F("Content-Length", "20"), F("Content-Length", "x") };
    const framing_header te[] = { F("Content-Length", "x"),
                                  F("Transfer-Encoding", "chunked") };

    cr_assert_eq(check(h, 2), FRAMING_LENGTH_MALFORMED);
    cr_assert_eq(check(te, 2), FRAMING_LENGTH_MALFORMED);
}

Test(framing, content_length_with_transfer_encoding)
{
    const framing_header h[] = { F("Content-Length", "20"),
                                 F("Transfer-Encoding", "chunked") };
    const framing_header after[] = { F("transfer-encoding", "chunked"),
                                     F("Content-Length", "0") };

    cr_assert_eq(check(h, 2), FRAMING_LENGTH_AND_CODING);
    cr_assert_eq(check(after, 2), FRAMING_LENGTH_AND_CODING);
}

Test(framing, chunked_alone_is_ok)
{
    const framing_header h[] = { F("Transfer-Encoding", "chunked") };
    const framing_header upper[] = { F("TRANSFER-ENCODING", "Chunked") };

    cr_assert_eq(check(h, 1), FRAMING_OK);
    cr_assert_eq(check(upper, 1), FRAMING_OK);
}

Test(framing, other_codings_are_unsupported)
{
    static const char *const bad[] = { "", "gzip", "gzip, chunked", "chunked, chunked",
                                       "chunked;x=1", "identity", "chunkedx",
                                       "chunked ", " chunked" };

    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        framing_header h = { "Transfer-Encoding", 17, bad[i], strlen(bad[i]) };

        cr_assert_eq(check(&h, 1), FRAMING_CODING_UNSUPPORTED, "\"%s\"", bad[i]);
    }
}

Test(framing, chunked_twice_is_unsupported)
{
    const framing_header h[] = { F("Transfer-Encoding", "chunked"),
                                 F("Transfer-Encoding", "chunked") };
    const framing_header three[] = { F("Transfer-Encoding", "chunked"),
                                     F("Transfer-Encoding", "chunked"),
                                     F("Transfer-Encoding", "chunked") };

    cr_assert_eq(check(h, 2), FRAMING_CODING_UNSUPPORTED);
    cr_assert_eq(check(three, 3), FRAMING_CODING_UNSUPPORTED);
}

Test(framing, names_must_match_whole)
{
    const framing_header h[] = { F("X-Content-Length", "abc"), F("Content-Lengt", "x"),
                                 F("X-Transfer-Encoding", "gzip") };

    cr_assert_eq(check(h, 3), FRAMING_OK);
}

/*
 * What MHD 0.9.75 makes of a blank before the colon ("Content-Length : 5"
 * is named "Content-Length ") and of a folded line ("Content-Length: 5"
 * then " 0" is named "Content-Length0"): neither is a Content-Length to it,
 * so the body would be read as the next request. Refused, as is any field
 * name that is not a token.
 */
Test(framing, names_that_are_not_tokens_or_run_on_are_refused)
{
    static const char *const bad[] = {
        "Content-Length ", "Content-Length\t", "Transfer-Encoding ", "Content-Length0",
        "content-length5", "Transfer-Encodingchunked", "Content-Length-X", "X Y", "X:Y",
        "XContent-Length: 5", "X\x7f", "X\xc3\xa9", "(X)", "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        framing_header h[] = { F("Host", "x"), { bad[i], strlen(bad[i]), "5", 1 } };
        cr_assert_eq(check(h, 2), FRAMING_FIELD_MALFORMED, "\"%s\"", bad[i]);
    }
    framing_header nul = { "X\0Y", 3, "5", 1 };
    cr_assert_eq(check(&nul, 1), FRAMING_FIELD_MALFORMED);
    /* A value holding a line's end: "X: y\rContent-Length: 5" is two fields to some parsers. */
    static const char *const values[] = { "y\rContent-Length: 5", "y\nz", "\r" };
    for (size_t i = 0; i < sizeof values / sizeof *values; i++) {
        framing_header h = { "X", 1, values[i], strlen(values[i]) };
        cr_assert_eq(check(&h, 1), FRAMING_FIELD_MALFORMED, "value %zu", i);
    }
    framing_header nul_value = { "X", 1, "a\0b", 3 };
    cr_assert_eq(check(&nul_value, 1), FRAMING_FIELD_MALFORMED);
    cr_assert(strlen(framing_detail(FRAMING_FIELD_MALFORMED)) > 0);
    /* Every token character is fine. */
    const framing_header ok[] = { F("A-z_0.9!#$%&'*+^`|~", "v") };
    cr_assert_eq(check(ok, 1), FRAMING_OK);
    /* A malformed length still comes first (MHD answers that one on its own). */
    const framing_header both[] = { F("X Y", "1"), F("Content-Length", "x") };
    cr_assert_eq(check(both, 2), FRAMING_LENGTH_MALFORMED);
}

Test(framing, values_are_length_bounded_not_nul_terminated)
{
    /* "20" followed by bytes the length excludes. */
    framing_header h = { "Content-Lengthxyz", 14, "20abc", 2 };
    framing_header nul = { "Content-Length", 14, "2\0" "0", 3 };

    cr_assert_eq(check(&h, 1), FRAMING_OK);
    cr_assert_eq(check(&nul, 1), FRAMING_LENGTH_MALFORMED);
}

Test(framing, null_name_or_value_is_harmless)
{
    framing_header h[] = { { NULL, 0, "x", 1 }, { "Content-Length", 14, NULL, 0 } };

    cr_assert_eq(check(h, 1), FRAMING_OK);
    cr_assert_eq(check(h + 1, 1), FRAMING_LENGTH_MALFORMED);
}

Test(framing, incremental_matches_check)
{
    framing_state st;

    framing_init(&st);
    cr_assert_eq(framing_verdict_of(&st), FRAMING_OK);
    framing_add(&st, "Content-Length", 14, "5", 1);
    cr_assert_eq(framing_verdict_of(&st), FRAMING_OK);
    framing_add(&st, "Content-Length", 14, "6", 1);
    cr_assert_eq(framing_verdict_of(&st), FRAMING_LENGTH_CONFLICT);
    for (int v = FRAMING_LENGTH_MALFORMED; v <= FRAMING_CODING_UNSUPPORTED; v++)
        cr_assert(strlen(framing_detail((framing_verdict)v)) > 0);
}
