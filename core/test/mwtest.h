/* A tiny unit-test harness for the C core: CHECK macros that report
 * file:line and keep going, and a summary that sets the exit status. */
#ifndef MW_TEST_H
#define MW_TEST_H

#include <stdio.h>
#include <string.h>

static int mwt_failed, mwt_checks;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        mwt_checks++;                                                                \
        if (!(cond)) {                                                               \
            mwt_failed++;                                                            \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                            \
    } while (0)

#define CHECK_EQ(a, b)                                                                     \
    do {                                                                                   \
        long long mwt_a = (long long)(a), mwt_b = (long long)(b);                          \
        mwt_checks++;                                                                      \
        if (mwt_a != mwt_b) {                                                              \
            mwt_failed++;                                                                  \
            fprintf(stderr, "%s:%d: CHECK_EQ failed: %s == %s (%lld != %lld)\n", __FILE__, \
                    __LINE__, #a, #b, mwt_a, mwt_b);                                       \
        }                                                                                  \
    } while (0)

#define CHECK_MEM(a, b, n)                                                                      \
    do {                                                                                        \
        mwt_checks++;                                                                           \
        if (memcmp((a), (b), (n)) != 0) {                                                       \
            mwt_failed++;                                                                       \
            fprintf(stderr, "%s:%d: CHECK_MEM failed: %s vs %s\n", __FILE__, __LINE__, #a, #b); \
        }                                                                                       \
    } while (0)

#define RUN(fn)                                                                      \
    do {                                                                             \
        int mwt_before = mwt_failed;                                                 \
        fn();                                                                        \
        fprintf(stderr, "%s %s\n", mwt_failed == mwt_before ? "ok  " : "FAIL", #fn); \
    } while (0)

static inline int mwt_summary(void)
{
    fprintf(stderr, "%d checks, %d failed\n", mwt_checks, mwt_failed);
    return mwt_failed ? 1 : 0;
}

#endif
