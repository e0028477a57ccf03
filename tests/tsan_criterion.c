/*
 * tsan_criterion: lets Criterion programs start under ThreadSanitizer. Linked
 * into every test program of a NODESTATE_SANITIZE=thread build, and only there.
 *
 * Criterion's sandbox (BoxFort) maps each of its shared arenas at an address
 * it draws with rand_r: 0x2000_0000_0000 + (r & 0x3fffff) * 16 MiB, refusing
 * an address that is already mapped and giving up after ten draws. TSan
 * reserves nearly all of 0x2000_0000_0000..0x5500_0000_0000 for its shadow
 * and meta memory, and accepts fixed mappings only in its application
 * ranges, so the draws almost always fail: "Could not initialize inheritable
 * arena", or a crash when a later arena fails (Criterion issue #274).
 *
 * BoxFort is the only caller of rand_r in these programs (nothing in the
 * service uses it), so this rand_r steers its draws into
 * 0x5660_0000_0000..0x5680_0000_0000: inside TSan's application range for
 * position-independent executables, above where the kernel puts them, and
 * 256 MiB apart so each arena has room to grow in place. Successive draws
 * move on, so a taken address is skipped as before.
 */
#include <stdlib.h>

/* (0x5660_0000_0000 - 0x2000_0000_0000) / 16 MiB: the first slot. */
#define TSAN_CRITERION_FIRST 0x366000u
/* Slots 256 MiB apart, 512 of them: up to 0x567f_f000_0000. */
#define TSAN_CRITERION_STEP 0x10u
#define TSAN_CRITERION_SLOTS 0x200u

int rand_r(unsigned *seed)
{
    unsigned n = (*seed)++;
    return (int)(TSAN_CRITERION_FIRST + (n % TSAN_CRITERION_SLOTS) * TSAN_CRITERION_STEP);
}
